"""KV-cached sampling of a group of agents in one decoding loop (stacked decoder or the Hugging Face module).

Each distinct prompt is prefilled once and its keys/values read by its G rows; the next token is drawn by
inverting each row's cumulative distribution at one uniform draw (:func:`pick_token`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from baselines.lm.completions import SamplingConfig, positions, used_width
from baselines.lm.fastdecode import StackedDecoder, prompt_pass
from baselines.lm.kvcache import ReservedLayer
from baselines.objectives import completion_mask

__all__ = ["Encoded", "flat_kv", "pick_token", "prefill", "sample"]


def pick_token(
    logits: torch.Tensor, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor]:  # (B, V) -> (B,), (B,)
    """Sample (or argmax) the next token; also return its log-prob under the sampling distribution.
    Sampling inverts each row's cumulative distribution (float64) at one uniform draw: one random number
    per row instead of one per vocabulary entry."""
    if sampling.temperature == 0:
        tok = logits.argmax(dim=-1)
        return tok, torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None]).squeeze(-1)
    logits = logits.float()
    if sampling.temperature != 1.0:  # dividing by 1 changes nothing
        logits = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_logits, -1) >= sampling.top_p  # keeps the top token always
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    logp = torch.log_softmax(logits, -1)  # (B, V)
    cdf = logp.exp().cumsum(-1, dtype=torch.float64)  # (B, V)
    u = torch.rand(logits.shape[0], 1, dtype=torch.float64, device=logits.device) * cdf[:, -1:]  # in [0, total)
    # the first index whose cumulative mass exceeds u: a token of non-zero probability
    tok = torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1).squeeze(-1)  # (B,)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


Encoded = tuple[torch.Tensor, torch.Tensor]  # (ids (R, P), attention mask (R, P)), left-padded


def sample(
    modules: Sequence,
    adapters: Sequence[str | None],
    encoded: Sequence[Encoded],
    repeats: int,
    sampling: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
) -> list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]] | None]]:
    """KV-cached sampling for a group of agents in one decoding loop: each agent's model (`modules`, the same
    object for agents sharing a LoRA base), adapter and encoded prompts. Each distinct prompt is prefilled
    once and its cache repeated `repeats` times; decoding runs until every row has emitted an EOS or the
    budget is spent, and rows are padded with `pad_id` after their EOS. Returns per agent its sequences
    (R*G, P_a+T), the sampling log-prob of every generated token (R*G, T) and, when the agent has one
    unpadded prompt prefilled on its own, that prefill (last logits, KV of every layer). Runs in inference
    mode (the results are copied out as ordinary tensors)."""
    with torch.inference_mode():
        out = _sample(modules, adapters, encoded, repeats, sampling, eos_ids, pad_id)
    return [
        (seqs.clone(), logps.clone(), None if pre is None else (pre[0].clone(), [t.clone() for t in pre[1]]))
        for seqs, logps, pre in out
    ]


def _sample(modules, adapters, encoded, repeats, sampling, eos_ids, pad_id):
    """The decoding loop of `sample` (stacked decoder or module), in inference mode."""
    prefills: list = [None] * len(encoded)
    if len({len(ids) for ids, _ in encoded}) == 1 and StackedDecoder.can_stack(modules):
        logits, step, prefills = _stacked_decoding(modules, adapters, encoded, repeats, sampling.max_new_tokens)
    else:
        logits, step = _module_decoding(modules, adapters, encoded, repeats, sampling.max_new_tokens, pad_id)
    # (B, 1) the position of the first new token, as scoring numbers it: the row's count of prompt tokens
    pos = torch.cat([a.sum(dim=1, keepdim=True) for _, a in encoded]).repeat_interleave(repeats, dim=0).long()
    eos = torch.tensor(eos_ids, device=pos.device)
    finished = torch.zeros(pos.shape[0], dtype=torch.bool, device=pos.device)
    tokens, logps = [], []
    for t in range(sampling.max_new_tokens):
        tok, lp = pick_token(logits, sampling)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(torch.where(finished, torch.zeros_like(lp), lp))
        finished |= torch.isin(tok, eos)
        if bool(finished.all()) or t == sampling.max_new_tokens - 1:
            break
        logits = step(tok, pos, t)
        pos = pos + 1
    return _per_agent(encoded, prefills, torch.stack(tokens, dim=1), torch.stack(logps, dim=1), repeats, eos_ids)


def _per_agent(encoded, prefills, new: torch.Tensor, lps: torch.Tensor, repeats: int, eos_ids: list[int]):
    """Split the loop's (B, T) tokens and log-probs by agent: (sequences, log-probs, prefill) per agent, each
    cut to the agent's own length (the columns after all its rows ended, while others went on, are pads)."""
    out, start = [], 0
    for (ids, _), prefill in zip(encoded, prefills, strict=True):
        rows = slice(start, start + ids.shape[0] * repeats)
        width = used_width(completion_mask(new[rows], eos_ids))
        seqs = torch.cat([ids.repeat_interleave(repeats, dim=0), new[rows, :width]], dim=1)
        out.append((seqs, lps[rows, :width], prefill))
        start = rows.stop
    return out


def flat_kv(cache) -> list[torch.Tensor]:
    """[k_0, v_0, k_1, v_1, ...] of a transformers cache."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def prefill(module, ids, attn, adapter_names: list | None):
    """The prompts' forward with the KV cache (each row with its LoRA adapter when names are given)."""
    kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
    return module(
        input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True, logits_to_keep=1, **kw
    )


def _stacked_decoding(modules, adapters, encoded, repeats, budget):
    """First logits (B, V), the step function of the stacked decoder, and each agent's prefill (last logits,
    KV) when it is one unpadded prompt (the update reuses it); every agent is prefilled on its own."""
    caches, attns, first, prefills = [], [], [], []
    for module, adapter, (ids, attn) in zip(modules, adapters, encoded, strict=True):
        single = ids.shape[0] == 1 and bool(attn.all())
        logits, *kv = _prefill_kv(module, ids, attn, adapter, single)
        prefills.append((logits, kv) if single else None)
        caches.append(kv)
        attns.append(attn)
        first.append(logits[:, -1].repeat_interleave(repeats, dim=0))
    decoder = StackedDecoder(modules, adapters, caches, attns, repeats, budget)
    return torch.cat(first), lambda tok, pos, t: decoder.step(tok, pos), prefills


def _prefill_kv(module, ids, attn, adapter: str | None, unpadded: bool) -> tuple[torch.Tensor, ...]:
    """(last logits (R, 1, V), k_0, v_0, k_1, ...): the lean prompt pass for unpadded prompts, else the
    module's forward (each row with `adapter`)."""
    if unpadded:
        return prompt_pass(module, ids, adapter)
    out = prefill(module, ids, attn, None if adapter is None else [adapter] * len(ids))
    return (out.logits, *flat_kv(out.cache))


def _module_decoding(modules, adapters, encoded, repeats, budget, pad_id):
    """First logits (B, V) and a step through the Hugging Face module (one model object for the group): the
    agents' prompts left-padded to one width, each row with its agent's adapter (if any)."""
    module = modules[0]
    if any(m is not module for m in modules):
        raise ValueError("agents decoded through the module must share one model object")
    width = max(ids.shape[1] for ids, _ in encoded)
    ids = torch.cat([torch.nn.functional.pad(i, (width - i.shape[1], 0), value=pad_id) for i, _ in encoded])
    attn = torch.cat([torch.nn.functional.pad(a, (width - a.shape[1], 0)) for _, a in encoded])
    names = [n for n, (i, _) in zip(adapters, encoded, strict=True) for _ in range(len(i))]
    out = prefill(module, ids, attn, names if names[0] is not None else None)
    cache = out.cache
    cache.batch_repeat_interleave(repeats)
    for layer in getattr(cache, "layers", []):
        ReservedLayer.reserve(layer, budget)
    attn = attn.repeat_interleave(repeats, dim=0)
    full_attn = torch.cat([attn, attn.new_ones(attn.shape[0], budget)], dim=1)  # (B, P+T)
    kw = {"adapter_names": [n for n in names for _ in range(repeats)]} if names[0] is not None else {}

    def step(tok: torch.Tensor, pos: torch.Tensor, t: int) -> torch.Tensor:
        mask = full_attn[:, : width + t + 1]
        out = module(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, **kw)
        return out.logits[:, -1]

    return out.logits[:, -1].repeat_interleave(repeats, dim=0), step
