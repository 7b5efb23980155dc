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
