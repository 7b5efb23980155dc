"""The lean decoding step gives bit-identical logits to the Hugging Face module it replaces."""

import torch

from baselines.fastdecode import LeanDecoder
from baselines.policies import Policies


def test_lean_decoder_logits_equal_module_logits():
    torch.manual_seed(0)
    module = Policies(["a"], finetune="full").members["a"].module
    assert LeanDecoder.supports(module)
    ids = torch.randint(5, 1900, (1, 40))
    with torch.no_grad():
        ref = module(input_ids=ids, use_cache=True)
        lean_prefill = module(input_ids=ids, use_cache=True)
        ref.past_key_values.batch_repeat_interleave(3)
        lean_prefill.past_key_values.batch_repeat_interleave(3)
        lean = LeanDecoder(module, lean_prefill.past_key_values, extra=8)
        pos = torch.full((3, 1), 40)
        for t in range(8):
            tok = torch.randint(5, 1900, (3,))
            out = module(input_ids=tok[:, None], position_ids=pos, past_key_values=ref.past_key_values, use_cache=True)
            assert torch.equal(lean.step(tok, pos), out.logits[:, -1]), f"token {t}"
            pos = pos + 1


def _decode_both(module, ids, attn, steps, **kw):
    """Logits of `steps` random tokens decoded through the module and through the lean decoder."""
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = module(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **kw)
        lean_prefill = module(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **kw)
        names = kw.get("adapter_names")
        lean = LeanDecoder(module, lean_prefill.past_key_values, steps, names, None if attn.all() else attn)
        pos, full = pos[:, -1:] + 1, attn
        for _ in range(steps):
            tok = torch.randint(5, 1900, (ids.shape[0],))
            full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
            out = module(
                input_ids=tok[:, None],
                attention_mask=full,
                position_ids=pos,
                past_key_values=ref.past_key_values,
                use_cache=True,
                **kw,
            )
            yield lean.step(tok, pos), out.logits[:, -1]
            pos = pos + 1


def test_lean_decoder_with_left_padding_is_bit_identical():
    torch.manual_seed(0)
    module = Policies(["a"], finetune="full").members["a"].module
    ids = torch.randint(5, 1900, (2, 30))
    attn = torch.ones_like(ids)
    attn[1, :11] = 0
    for lean, ref in _decode_both(module, ids, attn, 6):
        assert torch.equal(lean, ref)


def test_lean_decoder_gives_each_row_its_lora_adapter():
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, "lora", lora_r=4)
    module = policies.members["first"].module
    assert LeanDecoder.supports(module)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids = torch.randint(5, 1900, (3, 25))
    attn = torch.ones_like(ids)
    attn[2, :7] = 0
    names = ["first", "second", "first"]
    for lean, ref in _decode_both(module, ids, attn, 6, adapter_names=names):
        assert torch.allclose(lean, ref, atol=1e-5)
