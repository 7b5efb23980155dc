"""The stacked decoder gives every row its own agent's logits (the module's, up to float rounding), and the
inverse-CDF sampler draws from the right distribution."""

import pytest
import torch

import baselines.lm.fastdecode as fastdecode
import baselines.lm.policies as pol_mod
import baselines.lm.sampling as sampling_mod
import baselines.lm.scoring as scoring_mod
from baselines.lm.completions import positions
from baselines.lm.fastdecode import StackedDecoder, prompt_pass
from baselines.lm.policies import Completions, Policies, SamplingConfig
from baselines.lm.sampling import pick_token, prefill


def _module_logits(module, ids, attn, tokens, adapter=None):
    """Reference: the module's logits for `tokens` (steps, B) decoded after the prompts, one row at a time."""
    names = None if adapter is None else [adapter] * ids.shape[0]
    kw = {} if names is None else {"adapter_names": names}
    with torch.no_grad():
        out = prefill(module, ids, attn, names)
        cache, pos, full = out.cache, positions(attn)[:, -1:] + 1, attn
        logits = [out.logits[:, -1]]
        for tok in tokens[:-1]:
            full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
            out = module(
                input_ids=tok[:, None],
                attention_mask=full,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                **kw,
            )
            logits.append(out.logits[:, -1])
            pos = pos + 1
    return torch.stack(logits)  # (steps, B, V)


def _stacked_logits(modules, adapters, encoded, tokens):
    with torch.no_grad():
        caches, first = [], []
        for module, adapter, (ids, attn) in zip(modules, adapters, encoded, strict=True):
            out = prefill(module, ids, attn, None if adapter is None else [adapter] * len(ids))
            caches.append([t for layer in out.cache.layers for t in (layer.keys, layer.values)])
            first.append(out.logits[:, -1])
        decoder = StackedDecoder(modules, adapters, caches, [a for _, a in encoded], 1, extra=tokens[0].shape[0])
        pos = torch.cat([a.sum(dim=1, keepdim=True) for _, a in encoded])
        logits = [torch.cat(first)]
        for tok in torch.cat(tokens, dim=1)[:-1]:
            logits.append(decoder.step(tok, pos))
            pos = pos + 1
    return torch.stack(logits)  # (steps, A*R, V)


def _prompts(lengths, pad_rows):
    ids = torch.randint(5, 1900, (len(pad_rows), max(lengths)))
    attn = torch.ones_like(ids)
    for row, pad in enumerate(pad_rows):
        attn[row, :pad] = 0
    return ids, attn


def test_two_full_models_decode_in_one_loop_with_their_own_weights():
    torch.manual_seed(0)
    policies = Policies(["first", "second"], finetune="full")
    modules = [policies.members[a].module for a in ("first", "second")]
    with torch.no_grad():  # make the second agent's weights really differ
        for p in modules[1].parameters():
            p.add_(torch.randn_like(p) * 0.02)
    assert StackedDecoder.can_stack(modules)
    encoded = [_prompts([30], [0, 9]), _prompts([41], [3, 0])]  # different widths, left padding in both
    steps = 7
    tokens = [torch.randint(5, 1900, (steps, 2)) for _ in encoded]
    stacked = _stacked_logits(modules, [None, None], encoded, tokens)
    for a, (module, (ids, attn), tok) in enumerate(zip(modules, encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok)
        assert torch.allclose(stacked[:, 2 * a : 2 * a + 2], ref, atol=1e-4), f"agent {a}"
    assert not torch.allclose(stacked[:, :2], stacked[:, 2:], atol=1e-2), "the agents' logits differ"


def test_lora_adapters_are_merged_per_agent():
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, "lora", lora_r=4)
    module = policies.members["first"].module
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    encoded = [_prompts([25], [0, 7]), _prompts([18], [0, 0])]
    tokens = [torch.randint(5, 1900, (6, 2)) for _ in encoded]
    stacked = _stacked_logits([module, module], ["first", "second"], encoded, tokens)
    for a, (name, (ids, attn), tok) in enumerate(zip(["first", "second"], encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok, adapter=name)
        assert torch.allclose(stacked[:, 2 * a : 2 * a + 2], ref, atol=1e-4), name


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_prompt_pass_equals_the_module_forward(finetune):
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, finetune, lora_r=4)
    m = policies.members["second"]
    with torch.no_grad():
        for n, p in m.module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        ids = torch.randint(5, 1900, (2, 37))
        ref = prefill(m.module, ids, torch.ones_like(ids), None if m.adapter is None else [m.adapter] * 2)
        logits, *kv = prompt_pass(m.module, ids, m.adapter)
    assert torch.allclose(logits, ref.logits, atol=1e-5)
    module_kv = [t for layer in ref.cache.layers for t in (layer.keys, layer.values)]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(kv, module_kv, strict=True))


def test_models_that_cannot_stack_decode_through_the_module(monkeypatch):
    torch.manual_seed(0)
    policies = Policies(["first", "second"], finetune="full")
    monkeypatch.setattr(fastdecode, "STACK_BYTES_LIMIT", 1000)
    assert not StackedDecoder.can_stack([policies.members[a].module for a in ("first", "second")])
    calls = []
    original = pol_mod.sample
    monkeypatch.setattr(pol_mod, "sample", lambda *a, **k: calls.append(1) or original(*a, **k))
    policies.generate({"first": ["Hello."], "second": ["A longer prompt here."]}, SamplingConfig(8), repeats=2)
    assert len(calls) == 2, "separate full models: one module loop each"


def test_a_lora_base_too_large_to_stack_decodes_through_the_module_in_one_loop(monkeypatch):
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, "lora", lora_r=4)
    with torch.no_grad():
        for n, p in policies.members["first"].module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    monkeypatch.setattr(fastdecode, "STACK_BYTES_LIMIT", 1000)
    calls = []
    original = sampling_mod._module_decoding
    monkeypatch.setattr(sampling_mod, "_module_decoding", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = policies.generate({"first": ["Hello."], "second": ["A longer prompt here."]}, SamplingConfig(8), repeats=2)
    assert len(calls) == 1, "agents sharing one LoRA base: one module loop, an adapter per row"
    for c in out.values():
        assert c.prompt_mask.all(), "each agent's rows keep only their own prompt width"


def test_stacked_generation_is_one_loop_for_two_full_models(monkeypatch):
    policies = Policies(["first", "second"], finetune="full")
    calls = []
    original = pol_mod.sample
    monkeypatch.setattr(pol_mod, "sample", lambda *a, **k: calls.append(1) or original(*a, **k))
    prompts = {"first": ["Hello.", "Second prompt, longer."], "second": ["Short.", "Another."]}
    torch.manual_seed(0)
    out = policies.generate(prompts, SamplingConfig(10), repeats=2)
    assert len(calls) == 1
    for c in out.values():
        assert c.sequences.shape[0] == 4 and len(c.texts) == 4


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(temperature=0.5, top_k=3)])
def test_inverse_cdf_sampler_matches_the_distribution(sampling):
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]))[None].repeat(20000, 1)
    tok, lp = pick_token(logits, sampling)
    probs = torch.softmax(logits[0] / sampling.temperature, -1)
    if sampling.top_k:
        probs[sampling.top_k :] = 0
        probs /= probs.sum()
    freq = torch.bincount(tok, minlength=5).double() / len(tok)
    assert torch.allclose(freq, probs.double(), atol=0.012), (freq, probs)
    assert bool((probs[tok] > 0).all()), "never a token of zero probability"
    assert torch.allclose(lp, probs.log()[tok], atol=1e-5)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_update_reuses_the_sampling_prefill_only_while_weights_are_unchanged(finetune):
    """The prompt's forward from sampling stands in for the update's prompt pass: same log-probs and
    gradients as running the prompt again; after an optimiser step it is no longer used."""
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, finetune, lora_r=4)
    if finetune == "lora":
        with torch.no_grad():
            for n, p in policies.members["first"].module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    out = policies.generate({"first": ["Write about cats."], "second": ["And dogs, please."]}, SamplingConfig(10), 3)
    c = out["first"]
    assert c.prompt_state is not None and c.shared_prompt
    params = policies.parameters("first")

    def logprobs_and_grads(completions):
        for p in params:
            p.grad = None
        lp = policies.token_logprobs("first", completions)
        (lp * completions.mask).sum().backward()
        return lp.detach(), [p.grad.clone() if p.grad is not None else None for p in params]

    fresh = Completions(c.sequences, c.prompt_mask, c.mask, c.texts, c.sample_logprobs, True, None)
    lp_reused, g_reused = logprobs_and_grads(c)
    lp_fresh, g_fresh = logprobs_and_grads(fresh)
    assert torch.equal(lp_reused, lp_fresh)
    assert all(
        (a is None and b is None) or torch.allclose(a, b, atol=1e-6) for a, b in zip(g_reused, g_fresh, strict=True)
    )
    assert sum(g.abs().sum() for g in g_reused if g is not None) > 0
    torch.optim.SGD(params, lr=0.1).step()
    calls = []
    original = scoring_mod.ReusedForward.apply
    scoring_mod.ReusedForward.apply = lambda *a: calls.append(1) or original(*a)
    try:
        policies.token_logprobs("first", c)
    finally:
        scoring_mod.ReusedForward.apply = original
    assert not calls, "stale prefill must not be reused after the weights changed"


def test_decoder_refuses_what_it_cannot_serve():
    module = Policies(["a"], finetune="full").members["a"].module
    assert StackedDecoder.supports(module)
    o_proj = module.model.layers[0].self_attn.o_proj
    o_proj.bias = torch.nn.Parameter(torch.zeros(o_proj.out_features))
    assert not StackedDecoder.supports(module), "a bias where Qwen2 has none"
    o_proj.bias = None
    other = Policies(["b"], finetune="full").members["b"].module
    assert StackedDecoder.can_stack([module, other])
    other.model.layers[0].self_attn.q_proj.bias = None
    assert not StackedDecoder.can_stack([module, other]), "q/k/v biases must match to be stacked"
    module.train()
    assert not StackedDecoder.supports(module), "training mode (dropout)"


PAD_PROMPT = "A longer prompt <|endoftext|> that contains the pad id in its middle."
LAYOUTS = {  # name: (finetune, stack limit or None, prompts)
    "full-stacked": ("full", None, {"first": ["Hello.", "Second prompt, longer."], "second": ["Short.", "Another."]}),
    "lora-stacked": ("lora", None, {"first": ["Hello."], "second": ["A longer prompt here."]}),
    "full-module": ("full", 1000, {"first": ["Hello."], "second": ["A longer prompt here."]}),
    "lora-module": ("lora", 1000, {"first": ["Hello."], "second": ["A longer prompt here."]}),
    "lora-pad-id-shared": ("lora", None, {"first": [PAD_PROMPT], "second": ["Short."]}),
    "lora-pad-id-padded": ("lora", None, {"first": [PAD_PROMPT, "Short."], "second": ["Short."]}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sampled_logprobs_equal_scored_logprobs(layout, monkeypatch):
    """Training scores exactly what was sampled, on every decoding path: the stacked loop (full, LoRA), the
    module loop (models too large to stack), left padding, a prompt containing the pad/EOS id, and the
    shared-prompt fast path of scoring (which must equal the plain full forward)."""
    finetune, limit, prompts = LAYOUTS[layout]
    if limit is not None:
        monkeypatch.setattr(fastdecode, "STACK_BYTES_LIMIT", limit)
    torch.manual_seed(0)
    policies = Policies(["first", "second"], None, finetune, lora_r=4)
    with torch.no_grad():
        for member in policies.members.values():
            for n, p in member.module.named_parameters():
                if "lora_B" in n or finetune == "full":
                    p.add_(torch.randn_like(p) * 0.02)  # every agent's weights (adapter) distinct and non-zero
    out = policies.generate(prompts, SamplingConfig(12), repeats=3)
    if "pad-id" in layout:  # the pad/EOS id really is a prompt token, not padding
        c, pad = out["first"], policies.members["first"].tokenizer.pad_token_id
        assert bool((c.sequences[:, : c.prompt_width][c.prompt_mask.bool()] == pad).any())
    for agent, c in out.items():
        scored = policies.token_logprobs(agent, c)  # (B, T)
        assert torch.allclose(scored[c.mask], c.sample_logprobs[c.mask], atol=1e-4), agent
        if c.shared_prompt:
            plain = Completions(c.sequences, c.prompt_mask, c.mask, c.texts, None, False)
            assert torch.allclose(policies.token_logprobs(agent, plain)[c.mask], scored[c.mask], atol=1e-4)
