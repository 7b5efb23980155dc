"""Token log-probs of sampled responses under an agent's policy, with grad (the update's forward).

While the agent's weights are unchanged since sampling, the prompt's forward is taken from sampling's
prefill and recomputed only inside backward (:class:`ReusedForward`)."""

from __future__ import annotations

import torch

from baselines.lm.completions import Completions, positions
from baselines.lm.fastdecode import StackedDecoder, _base_of, prompt_pass
from baselines.lm.sampling import flat_kv, prefill
from baselines.objectives import completion_token_logprobs

__all__ = ["ReusedForward", "last_hidden_states", "score"]


class ReusedForward(torch.autograd.Function):
    """Outputs precomputed values of `run(ids)` (the sampling prefill) and, in the backward pass, recomputes
    `run(ids)` with grad to pass the gradient on to `params`: activation checkpointing whose first forward
    was already done by sampling."""

    @staticmethod
    def forward(ctx, run, ids, values, *params):
        ctx.run, ctx.ids, ctx.params = run, ids, params
        return tuple(v.clone() for v in values)

    @staticmethod
    def backward(ctx, *grads):
        with torch.enable_grad():
            outputs = ctx.run(ctx.ids)
        # outputs the trainable tensors do not reach (e.g. the keys when LoRA adapts only v_proj) carry no grad
        used = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad]
        param_grads = torch.autograd.grad([o for o, _ in used], ctx.params, [g for _, g in used], allow_unused=True)
        return (None, None, None, *param_grads)


def _prompt_forward(module, ids: torch.Tensor, adapter: str | None, reuse: tuple | None):
    """The prompt's last logits and its KV cache, computed as sampling's prefill is: the lean prompt pass
    where the stacked decoder applies (with the agent's `adapter` explicitly), else the module's forward
    through its active adapter. With grad, the prompt's activations are not kept for the backward pass but
    recomputed there (activation checkpointing: the same values and gradients, less peak memory); `reuse` =
    (PromptState, the agent's trainable tensors) takes the forward values from sampling's prefill instead of
    running the prompt again."""
    from torch.utils.checkpoint import checkpoint
    from transformers.cache_utils import DynamicCache

    lean = StackedDecoder.supports(module)

    def run(ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if lean:
            return prompt_pass(module, ids, adapter)
        # PEFT's per-row `adapter_names` hooks stay behind when checkpointing stops a recomputation early
        out = prefill(module, ids, torch.ones_like(ids), None)
        return (out.logits, *flat_kv(out.cache))

    if not torch.is_grad_enabled() or not _full_attention(_base_of(module).config):
        if lean:
            logits, *kv = run(ids)
        else:
            out = prefill(module, ids, torch.ones_like(ids), None)
            return out.logits, out.cache
    elif reuse is not None:
        state, params = reuse
        logits, *kv = ReusedForward.apply(run, ids, [state.logits, *state.kv], *params)
    else:
        logits, *kv = checkpoint(run, ids, use_reentrant=False)
    return logits, DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2], strict=True)))


def _full_attention(config) -> bool:
    """Whether every layer attends to the whole prefix (the KV cache the recomputation returns is then the
    plain per-layer keys and values): ``layer_types`` when the config lists them (Qwen2/3), else no sliding
    window (Llama, Mistral without one)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is None


def score(module, c: Completions, reuse: tuple | None = None, adapter: str | None = None) -> torch.Tensor:  # (B, T)
    """Token log-probs of the completions under `module` (with LoRA: its active adapter, `adapter`). When every row answers the same prompt, the prompt is run once (or its sampling prefill
    reused, see `_prompt_forward`) and its KV cache shared by the rows (same result as the full forward)."""
    P, T = c.prompt_width, c.sequences.shape[1] - c.prompt_width
    if c.shared_prompt and bool(c.prompt_mask.all()):
        B = c.sequences.shape[0]
        prompt_logits, cache = _prompt_forward(module, c.sequences[:1, :P], adapter, reuse)
        cache.batch_repeat_interleave(B)
        attn = torch.cat([c.prompt_mask, c.mask.long()], dim=1)  # (B, P+T)
        pos = torch.arange(P, P + T, device=attn.device).expand(B, T)
        rest = module(input_ids=c.sequences[:, P:], attention_mask=attn, position_ids=pos, cache=cache, use_cache=False)
        logits = torch.cat([prompt_logits[:, -1:].expand(B, 1, -1), rest.logits[:, :-1]], dim=1)  # (B, T, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, c.sequences[:, P:, None]).squeeze(-1)
    attn = torch.cat([c.prompt_mask, c.mask.long()], dim=1)  # (B, P+T)
    logits = module(
        input_ids=c.sequences, attention_mask=attn, position_ids=positions(attn), logits_to_keep=T + 1
    ).logits
    return completion_token_logprobs(logits, c.sequences, P)


def last_hidden_states(module, c: Completions) -> tuple[torch.Tensor, torch.Tensor]:  # (B, H), (B, H)
    """The last layer's hidden state at each row's last prompt token and at its last generated token (its EOS,
    or the last token of the budget), from one forward of the whole sequences (with the active adapter)."""
    P = c.prompt_width
    attn = torch.cat([c.prompt_mask, c.mask.long()], dim=1)  # (B, P+T)
    out = module(input_ids=c.sequences, attention_mask=attn, position_ids=positions(attn), output_hidden_states=True)
    hidden = out.hidden_states[-1]  # (B, P+T, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = P - 1 + c.mask.long().sum(dim=1).clamp(min=1)  # (B,) index of the last generated token
    return hidden[:, P - 1], hidden[rows, last]
