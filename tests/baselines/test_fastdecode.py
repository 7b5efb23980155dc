"""The stacked decoder gives every row its own agent's logits (the module's, up to float rounding), for every
architecture it accepts (tiny random Qwen2, Qwen3, Llama and Mistral models, full and LoRA), samples the
module path's tokens and log-probs, refuses what it would not decode exactly, and the inverse-CDF sampler
draws from the right distribution."""

from typing import Any

import pytest
import torch

import baselines.lm.fastdecode as fastdecode
import baselines.lm.policies as pol_mod
import baselines.lm.sampling as sampling_mod
import baselines.lm.scoring as scoring_mod
from baselines.lm.completions import positions
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.fastdecode import StackedDecoder, prompt_pass
from baselines.lm.loading import load_tokenizer
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


@pytest.mark.parametrize("arch", ["embedded", "llama"])
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_update_reuses_the_sampling_prefill_only_while_weights_are_unchanged(finetune, arch, tmp_path):
    """The prompt's forward from sampling stands in for the update's prompt pass: same log-probs and
    gradients as running the prompt again; after an optimiser step it is no longer used. Llama configs
    list no layer types: their full attention is read from the missing sliding window."""
    torch.manual_seed(0)
    model = None
    if arch == "llama":
        tokenizer = load_tokenizer(str(EMBEDDED_DIR))
        _tiny("llama", 0, vocab_size=len(tokenizer)).save_pretrained(tmp_path / "llama")
        tokenizer.save_pretrained(tmp_path / "llama")
        model = str(tmp_path / "llama")
    policies = Policies(["first", "second"], model, finetune, lora_r=4)
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
    fresh_out = policies.generate({"first": ["Write about cats."], "second": ["And dogs."]}, SamplingConfig(4), 2)
    original = scoring_mod.ReusedForward.apply
    scoring_mod.ReusedForward.apply = lambda *a: calls.append(1) or original(*a)
    try:
        policies.token_logprobs("first", fresh_out["first"])
    finally:
        scoring_mod.ReusedForward.apply = original
    assert calls, "a fresh prefill is reused"


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


# ---------------------------------------------------------------- every architecture the decoder accepts
TINY: dict[str, tuple[str, str, dict[str, Any]]] = {  # name: (config class, model class, config overrides)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v biases
    "qwen3-head-dim-24": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24}),  # q/k norm, H*D != hidden
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral-no-window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
}


def _tiny(arch: str, seed: int, **overrides):
    """A random model of the architecture, eval mode: 2 layers, GQA (4 query / 2 KV heads), every weight
    (biases and norms included) drawn away from its initial value so that each of them matters."""
    import transformers

    config_cls, model_cls, arch_overrides = TINY[arch]
    kw = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "initializer_range": 0.1,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "tie_word_embeddings": False,
        **arch_overrides,
        **overrides,
    }
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _two_adapters(model):
    """One base, LoRA adapters "first" and "second" on every projection, their B matrices non-zero."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
    module = get_peft_model(model, cfg, adapter_name="first")
    module.add_adapter("second", cfg)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return module.eval()


def _tiny_prompts(lengths, pad_rows):
    ids, attn = _prompts(lengths, pad_rows)
    return ids % 256, attn


@pytest.mark.parametrize("arch", sorted(TINY))
def test_full_models_of_every_architecture_decode_with_their_own_weights(arch):
    modules = [_tiny(arch, 0), _tiny(arch, 1)]
    assert StackedDecoder.can_stack(modules)
    encoded = [_tiny_prompts([13], [0, 5]), _tiny_prompts([9], [2, 0])]  # different widths, left padding
    tokens = [torch.randint(5, 256, (6, 2)) for _ in encoded]
    stacked = _stacked_logits(modules, [None, None], encoded, tokens)
    for a, (module, (ids, attn), tok) in enumerate(zip(modules, encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok)
        assert torch.allclose(stacked[:, 2 * a : 2 * a + 2], ref, atol=1e-4), f"agent {a}"
    assert not torch.allclose(stacked[:, :2], stacked[:, 2:], atol=1e-2), "the agents' logits differ"


@pytest.mark.parametrize("arch", sorted(TINY))
def test_lora_adapters_of_every_architecture_are_merged_per_agent(arch):
    module = _two_adapters(_tiny(arch, 0))
    assert StackedDecoder.can_stack([module, module])
    encoded = [_tiny_prompts([11], [0, 4]), _tiny_prompts([8], [0, 0])]
    tokens = [torch.randint(5, 256, (5, 2)) for _ in encoded]
    stacked = _stacked_logits([module, module], ["first", "second"], encoded, tokens)
    for a, (name, (ids, attn), tok) in enumerate(zip(["first", "second"], encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok, adapter=name)
        assert torch.allclose(stacked[:, 2 * a : 2 * a + 2], ref, atol=1e-4), name


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("arch", sorted(TINY))
def test_prompt_pass_of_every_architecture_equals_the_module_forward(arch, finetune):
    module = _tiny(arch, 0) if finetune == "full" else _two_adapters(_tiny(arch, 0))
    adapter = None if finetune == "full" else "second"
    if adapter is not None:
        module.set_adapter(adapter)
    ids = torch.randint(5, 256, (2, 12))
    with torch.no_grad():
        ref = prefill(module, ids, torch.ones_like(ids), None)
        logits, *kv = prompt_pass(module, ids, adapter)
    assert torch.allclose(logits, ref.logits, atol=1e-5)
    module_kv = [t for layer in ref.cache.layers for t in (layer.keys, layer.values)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(kv, module_kv, strict=True))


def _sample_both_ways(monkeypatch, modules, adapters, encoded, sampling, shared: bool):
    """`sample` through the stacked decoder, then through the module (one loop for a shared LoRA base, one
    per agent for separate models), from the same seed: per agent (sequences, log-probs) of each path."""
    assert StackedDecoder.can_stack(modules)
    torch.manual_seed(7)
    stacked = sampling_mod.sample(modules, adapters, encoded, 2, sampling, eos_ids=[1], pad_id=0)
    monkeypatch.setattr(fastdecode, "STACK_BYTES_LIMIT", 0)
    assert not StackedDecoder.can_stack(modules)
    torch.manual_seed(7)
    if shared:
        module = sampling_mod.sample(modules, adapters, encoded, 2, sampling, eos_ids=[1], pad_id=0)
    else:
        module = [
            sampling_mod.sample([m], [a], [e], 2, sampling, eos_ids=[1], pad_id=0)[0]
            for m, a, e in zip(modules, adapters, encoded, strict=True)
        ]
    return [s[:2] for s in stacked], [m[:2] for m in module]


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_accepted_architecture_samples_the_module_paths_tokens_and_logprobs(arch, monkeypatch):
    """Whatever `can_stack` accepts samples exactly what the transformers module path samples: the same
    tokens and log-probs, for two full models (greedy: their module loops are separate, so draws differ)
    and for two LoRA adapters on one base (drawn: both paths consume the same uniform draws)."""
    encoded = [_tiny_prompts([10], [0, 3]), _tiny_prompts([7], [0, 2])]
    full = [_tiny(arch, 0), _tiny(arch, 1)]
    lora = _two_adapters(_tiny(arch, 2))
    cases = [
        (full, [None, None], SamplingConfig(16, temperature=0.0), False),
        ([lora, lora], ["first", "second"], SamplingConfig(16, temperature=1.0), True),
    ]
    for modules, adapters, sampling, shared in cases:
        with monkeypatch.context() as patch:
            stacked, module = _sample_both_ways(patch, modules, adapters, encoded, sampling, shared)
        for a, ((seq_s, lp_s), (seq_m, lp_m)) in enumerate(zip(stacked, module, strict=True)):
            assert torch.equal(seq_s, seq_m), f"agent {a} ({'lora' if shared else 'full'}) tokens"
            assert torch.allclose(lp_s, lp_m, atol=1e-4), f"agent {a} ({'lora' if shared else 'full'}) log-probs"


REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {  # name: (architecture, config overrides, why refused)
    "llama-rope-llama3": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 100000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
        "rescaled rotary frequencies",
    ),
    "llama-rope-linear": (
        "llama",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 100000.0, "factor": 2.0}},
        "rescaled positions",
    ),
    "llama-attention-bias": ("llama", {"attention_bias": True}, "Llama's attention bias includes o_proj"),
    "llama-mlp-bias": ("llama", {"mlp_bias": True}, "MLP biases"),
    "llama-eager": ("llama", {"attn_implementation": "eager"}, "not SDPA"),
    "llama-gelu": ("llama", {"hidden_act": "gelu"}, "not a SiLU-gated MLP"),
    "mistral-window": ("mistral-no-window", {"sliding_window": 4096}, "Mistral's sliding window"),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "max_window_layers": 1}, "a sliding-window layer"),
    "qwen3-window": ("qwen3-head-dim-24", {"use_sliding_window": True, "max_window_layers": 1}, "a windowed layer"),
    "qwen3-attention-bias": ("qwen3-head-dim-24", {"attention_bias": True}, "o_proj bias"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_decoder_refuses_what_it_would_not_decode_exactly(case):
    arch, overrides, why = REFUSED[case]
    assert StackedDecoder.supports(_tiny(arch, 0)), "the unchanged architecture is accepted"
    assert not StackedDecoder.supports(_tiny(arch, 0, **overrides)), why


def test_other_architectures_and_mixed_architectures_are_refused():
    import transformers

    gemma = transformers.GemmaForCausalLM(
        transformers.GemmaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4
        )
    ).eval()
    assert not StackedDecoder.supports(gemma), "Gemma scales its embeddings and norms (1 + w)"
    assert StackedDecoder.can_stack([_tiny("llama", 0), _tiny("llama-tied", 1)]), "tied or not: same shapes"
    llama, mistral = _tiny("llama", 0), _tiny("mistral-no-window", 1)
    assert StackedDecoder.supports(llama) and StackedDecoder.supports(mistral)
    assert not StackedDecoder.can_stack([llama, mistral]), "one architecture per stack"
    qwen3 = _tiny("qwen3-head-dim-24", 0)
    qwen3.model.layers[1].self_attn.k_norm = torch.nn.Identity()
    assert not StackedDecoder.supports(qwen3), "a Qwen3 layer without its k norm"


def test_a_bf16_base_with_float32_lora_adapters_decodes_and_prefills_like_the_module():
    """PEFT keeps adapters in float32 on a bf16 base: the merge and the prompt pass must cast, as its forward does."""
    module = _two_adapters(_tiny("llama", 0).to(torch.bfloat16))
    for name, param in module.named_parameters():  # what recent PEFT does itself (older releases keep bf16)
        if "lora_" in name:
            param.data = param.data.float()
    encoded = [_tiny_prompts([11], [0, 4]), _tiny_prompts([8], [0, 0])]
    tokens = [torch.randint(5, 256, (4, 2)) for _ in encoded]
    stacked = _stacked_logits([module, module], ["first", "second"], encoded, tokens)
    for a, (name, (ids, attn), tok) in enumerate(zip(["first", "second"], encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok, adapter=name)
        torch.testing.assert_close(stacked[:, 2 * a : 2 * a + 2].float(), ref.float(), atol=0.1, rtol=0.05, msg=name)
    ids, _ = encoded[1]
    module.set_adapter("first")
    with torch.no_grad():
        ref = module(input_ids=ids).logits[:, -1:]
        got = prompt_pass(module, ids, "first")[0]
    torch.testing.assert_close(got.float(), ref.float(), atol=0.1, rtol=0.05)
