"""Agent policies: Hugging Face causal LMs, batched sampling, and token log-probs of sampled responses.

Layouts (`finetune`):
- `lora` (default): ONE frozen base model and one LoRA adapter per agent (PEFT multi-adapter); the
  reference policy for KL is the base with adapters disabled.
- `full`: one full copy of the model per agent, all weights trained (the paper's setting).
- a different model per agent: pass one name per agent (`models=[a, b]`); each gets its own model and
  tokenizer (with `lora`, its own base with one adapter).

Sampling decodes all agents in as few loops as possible: agents whose models the stacked decoder serves
(`baselines/lm/fastdecode.py`: Qwen2 architecture, same shapes, small enough to copy) share ONE loop, each row
with its own agent's weights (full) or merged adapter (LoRA); agents sharing one larger LoRA base share one
loop through the module with a different adapter per row (`adapter_names`); anything else gets a loop of
its own. Prompts are left-padded; pad defaults to EOS when a tokenizer has none; generation uses the KV
cache; an optional chat template wraps each prompt as one user message. The log-prob forward gives the
model the same position ids as generation did (cumulative attention mask), so training scores exactly what
was sampled; while an agent's weights are unchanged since sampling, its prompt's forward is reused.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.fastdecode import StackedDecoder, _base_of, prompt_pass
from baselines.objectives import completion_mask, completion_token_logprobs

Finetune = Literal["lora", "full"]


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 96
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


@dataclass
class PromptState:
    """A shared prompt's forward from sampling: its last logits and KV cache, tagged with the version counters
    of the agent's trainable tensors at the time. While those are unchanged, the update reuses it as the
    forward of its prompt pass (`score`) instead of running the prompt again."""

    logits: torch.Tensor  # (1, 1, V)
    kv: list[torch.Tensor]  # keys and values of every layer, alternating, each (1, H_kv, P, D)
    versions: tuple[int, ...]


@dataclass
class Completions:
    """G sampled responses of one agent (rows), with everything needed to score them again."""

    sequences: torch.Tensor  # (B, P + T) prompt (left-padded) + completion
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    mask: torch.Tensor  # (B, T) True on generated tokens up to and including the first EOS
    texts: list[str]
    sample_logprobs: torch.Tensor | None = None  # (B, T) log-prob of each token when it was sampled
    shared_prompt: bool = False  # every row answers the same prompt (scored with one prompt forward)
    prompt_state: PromptState | None = None  # the sampling prefill of the shared prompt, when reusable

    @property
    def prompt_width(self) -> int:
        return self.prompt_mask.shape[1]

    def rows(self, start: int, stop: int) -> Completions:
        """Rows start:stop answering ONE prompt (shared prompt), without the prompt columns that are padding
        in all of them and the completion columns after all of them ended."""
        attn, mask = self.prompt_mask[start:stop], self.mask[start:stop]
        cut = int(attn.argmax(dim=1).min()) if bool(attn.any(dim=1).all()) else 0
        width = _used_width(mask)
        end = self.prompt_width + width
        lps = None if self.sample_logprobs is None else self.sample_logprobs[start:stop, :width]
        return Completions(
            self.sequences[start:stop, cut:end], attn[:, cut:], mask[:, :width], self.texts[start:stop], lps, True
        )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def eos_ids_of(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation EOS id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
    if not ids:
        raise ValueError("no EOS token id: set one on the tokenizer or the model's generation config")
    return sorted(ids)


class _Member:
    """One agent's slot: the module it runs through, its adapter (LoRA) and tokenizer."""

    def __init__(self, module, tokenizer, adapter: str | None, eos_ids: list[int]):
        self.module, self.tokenizer, self.adapter, self.eos_ids = module, tokenizer, adapter, eos_ids
        self.reference = None  # frozen copy for KL in full fine-tuning
        self.params: list[torch.nn.Parameter] | None = None  # the trainable tensors, found on first use


class Policies:
    """The n agents' policies. `models`: None (embedded default), one name/path for all agents, or one per
    agent."""

    def __init__(
        self,
        agents: Sequence[str],
        models: str | Sequence[str] | None = None,
        finetune: Finetune = "lora",
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_target: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        chat_template: bool = False,
        need_reference: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        from transformers import AutoModelForCausalLM

        self.agents = list(agents)
        names = [str(EMBEDDED_DIR)] * len(self.agents) if models is None else models
        names = [names] * len(self.agents) if isinstance(names, str) else list(names)
        if len(names) != len(self.agents):
            raise ValueError(f"models: got {len(names)} names for {len(self.agents)} agents {self.agents}")
        self.finetune, self.chat_template, self.device = finetune, chat_template, device
        self.members: dict[str, _Member] = {}
        loaded: dict[str, tuple] = {}
        for agent, name in zip(self.agents, names, strict=False):
            shared = finetune == "lora" and name in loaded
            if shared:
                module, tok = loaded[name]
            else:
                tok = load_tokenizer(name)
                module = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
                module.to(device)  # type: ignore[arg-type]  # transformers' decorator mis-types `to`
                if module.config.pad_token_id is None:
                    module.config.pad_token_id = tok.pad_token_id
            eos = eos_ids_of(module, tok)
            if finetune == "lora":
                module = self._add_adapter(module, agent, shared, lora_r, lora_alpha, lora_target)
                loaded[name] = (module, tok)
            elif finetune == "full":
                module.requires_grad_(True)
            else:
                raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
            self.members[agent] = _Member(module, tok, agent if finetune == "lora" else None, eos)
            if finetune == "full" and need_reference:
                self.members[agent].reference = copy.deepcopy(module).requires_grad_(False).eval()
        for m in self.members.values():
            m.module.eval()  # no dropout: sampling and scoring see the same function

    @staticmethod
    def _add_adapter(module, agent: str, shared: bool, r: int, alpha: int, target: Sequence[str]):
        from peft import LoraConfig, get_peft_model

        if not agent.isidentifier():
            raise ValueError(f"agent name {agent!r} must be a Python identifier to name its LoRA adapter")
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target), task_type="CAUSAL_LM")
        if shared:
            module.add_adapter(agent, cfg)
            return module
        module.requires_grad_(False)
        return get_peft_model(module, cfg, adapter_name=agent)

    # ------------------------------------------------------------------ parameters and state
    def parameters(self, agent: str) -> list[torch.nn.Parameter]:
        """The trainable parameters of one agent (its LoRA matrices, or its whole model)."""
        m = self.members[agent]
        if m.params is None:  # found once: walking a PEFT model's modules costs milliseconds
            if m.adapter is None:
                m.params = list(m.module.parameters())
            else:
                m.params = [p for n, p in m.module.named_parameters() if f".{m.adapter}." in n and "lora_" in n]
        return list(m.params)

    def state_dict(self, agent: str) -> dict[str, torch.Tensor]:
        m = self.members[agent]
        if m.adapter is None:
            return {k: v.detach().clone() for k, v in m.module.state_dict().items()}
        return {n: p.detach().clone() for n, p in m.module.named_parameters() if f".{m.adapter}." in n and "lora_" in n}

    def load_state_dict(self, agent: str, state: dict[str, torch.Tensor]) -> None:
        m = self.members[agent]
        if m.adapter is None:
            m.module.load_state_dict(state)
            return
        params = dict(m.module.named_parameters())
        with torch.no_grad():
            for n, value in state.items():
                params[n].copy_(value)

    def save_final(self, agent: str, directory: Path) -> None:
        """Write a PEFT adapter directory (LoRA) or a full model + tokenizer (full) for one agent."""
        m = self.members[agent]
        directory.mkdir(parents=True, exist_ok=True)
        if m.adapter is None:
            m.module.save_pretrained(directory)
        else:  # PEFT writes a non-default adapter into <parent>/<adapter name>/
            if directory.name != m.adapter:
                raise ValueError(f"LoRA adapter directory must be named after the agent {m.adapter!r}")
            m.module.save_pretrained(directory.parent, selected_adapters=[m.adapter])
            if not (directory / "adapter_config.json").exists():
                raise RuntimeError(f"PEFT did not write {directory / 'adapter_config.json'}")
        m.tokenizer.save_pretrained(directory)

    def _versions(self, agent: str) -> tuple[int, ...]:
        """The version counters of the agent's trainable tensors (every in-place update bumps them)."""
        return tuple(p._version for p in self.parameters(agent))

    # ------------------------------------------------------------------ sampling
    def _format(self, agent: str, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        tok = self.members[agent].tokenizer
        return tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _encode(self, agent: str, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.members[agent].tokenizer
        batch = tok(
            [self._format(agent, p) for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not self.chat_template,
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)  # (B, P)

    @torch.no_grad()
    def generate(
        self, prompts: dict[str, list[str]], sampling: SamplingConfig, repeats: int = 1
    ) -> dict[str, Completions]:
        """Sample `repeats` responses to each prompt of each agent (rows prompt-major: p0 x repeats, p1 x
        repeats, ...). Agents are decoded together in as few loops as possible (`_decode_groups`): one loop
        for all agents whose models have one architecture (each row with its agent's weights or adapter). Each
        distinct prompt is prefilled once and its KV cache repeated, so G samples cost one prompt forward."""
        out: dict[str, Completions] = {}
        for agents in self._decode_groups(prompts):
            out.update(self._generate_group(agents, prompts, sampling, repeats))
        return out

    def _decode_groups(self, prompts: dict[str, list[str]]) -> list[list[str]]:
        """Agents that share one decoding loop: same EOS and pad ids, and either one model object (a LoRA
        base, decoded through the module with an adapter per row) or models the stacked decoder serves
        together with the same number of prompts each."""
        groups: list[list[str]] = []
        for agent in prompts:
            for group in groups:
                members = [self.members[a] for a in (*group, agent)]
                special = {(tuple(m.eos_ids), m.tokenizer.pad_token_id) for m in members}
                shared = all(m.module is members[0].module for m in members)
                stacked = len({len(prompts[a]) for a in (*group, agent)}) == 1 and StackedDecoder.can_stack(
                    [m.module for m in members]
                )
                if len(special) == 1 and (shared or stacked):
                    group.append(agent)
                    break
            else:
                groups.append([agent])
        return groups

    def _generate_group(self, agents: list[str], prompts: dict[str, list[str]], sampling: SamplingConfig, repeats: int):
        members = [self.members[a] for a in agents]
        encoded = [self._encode(a, prompts[a]) for a in agents]  # each agent's own tokenizer and padding
        versions = [self._versions(a) for a in agents]
        sampled = sample(
            [m.module for m in members],
            [m.adapter for m in members],
            encoded,
            repeats,
            sampling,
            members[0].eos_ids,
            members[0].tokenizer.pad_token_id,
        )
        result = {}
        for agent, (ids, attn), (seqs, logps, prefill), version in zip(agents, encoded, sampled, versions, strict=True):
            mask = completion_mask(seqs[:, ids.shape[1] :], self.members[agent].eos_ids)  # (R*G, T)
            texts = self._decode(agent, seqs[:, ids.shape[1] :], mask)
            attn = attn.repeat_interleave(repeats, dim=0)
            state = PromptState(prefill[0], prefill[1], version) if prefill is not None else None
            result[agent] = Completions(seqs, attn, mask, texts, logps, len(prompts[agent]) == 1, state)
        return result

    def _decode(self, agent: str, completion: torch.Tensor, mask: torch.Tensor) -> list[str]:
        tok = self.members[agent].tokenizer
        return [
            tok.decode(row[m].tolist(), skip_special_tokens=True).strip()
            for row, m in zip(completion, mask, strict=False)
        ]

    # ------------------------------------------------------------------ scoring
    def token_logprobs(self, agent: str, c: Completions, reference: bool = False) -> torch.Tensor:  # (B, T)
        """log pi(token) of each completion token under the agent's policy (with grad), or under its
        reference policy (no grad): the base with adapters disabled (LoRA) or the initial copy (full)."""
        m = self.members[agent]
        if not reference:
            if m.adapter is not None:
                m.module.set_adapter(m.adapter)
            state = c.prompt_state
            reuse = (state, self.parameters(agent)) if state and state.versions == self._versions(agent) else None
            return score(m.module, c, reuse, m.adapter)
        with torch.no_grad():
            if m.adapter is not None:
                with m.module.disable_adapter():
                    return score(m.module, c)
            if m.reference is None:
                raise RuntimeError("no reference policy: construct Policies with need_reference=True")
            return score(m.reference, c)


def _positions(attn: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L), as generation numbers positions
    return (attn.cumsum(dim=1) - 1).clamp(min=0)


def _pick(logits: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:  # (B, V) -> (B,), (B,)
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


class _ReservedLayer:
    """Replaces the concatenation of a `DynamicLayer` (a full copy of the cache at every decoded token) by
    writes into a buffer reserved once; keys/values handed to attention are views of its filled part, with
    the same values as the concatenated tensors."""

    @staticmethod
    def reserve(layer: Any, extra: int) -> None:
        from transformers.cache_utils import DynamicLayer

        if type(layer) is not DynamicLayer or not layer.is_initialized:
            return  # anything else keeps its own update
        for name in ("keys", "values"):
            cached: torch.Tensor = layer.__dict__[name]
            B, H, L, D = cached.shape
            buf = cached.new_empty(B, H, L + extra, D)
            buf[:, :, :L] = cached
            layer.__dict__[name] = buf[:, :, :L]
            layer.__dict__[f"_{name}_buf"] = buf
        layer.__dict__["_filled"] = L
        layer.__dict__["update"] = _ReservedLayer.update.__get__(layer)  # this instance only

    @staticmethod
    def update(layer: Any, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, stop = layer._filled, layer._filled + key_states.shape[-2]
        if stop > layer._keys_buf.shape[2]:  # beyond the reservation: grow as DynamicLayer does
            layer._keys_buf = torch.cat([layer.keys, key_states], dim=-2)
            layer._values_buf = torch.cat([layer.values, value_states], dim=-2)
        else:
            layer._keys_buf[:, :, start:stop] = key_states
            layer._values_buf[:, :, start:stop] = value_states
        layer._filled = stop
        layer.keys, layer.values = layer._keys_buf[:, :, :stop], layer._values_buf[:, :, :stop]
        return layer.keys, layer.values


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
        tok, lp = _pick(logits, sampling)
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
        width = _used_width(completion_mask(new[rows], eos_ids))
        seqs = torch.cat([ids.repeat_interleave(repeats, dim=0), new[rows, :width]], dim=1)
        out.append((seqs, lps[rows, :width], prefill))
        start = rows.stop
    return out


def _used_width(mask: torch.Tensor) -> int:
    """Columns of a (B, T) completion mask up to the last one any row uses (all of them if none is used)."""
    used = mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else mask.shape[1]


def _flat_kv(cache) -> list[torch.Tensor]:
    """[k_0, v_0, k_1, v_1, ...] of a transformers cache."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _prefill(module, ids, attn, adapter_names: list | None):
    """The prompts' forward with the KV cache (each row with its LoRA adapter when names are given)."""
    kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
    return module(
        input_ids=ids, attention_mask=attn, position_ids=_positions(attn), use_cache=True, logits_to_keep=1, **kw
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
    out = _prefill(module, ids, attn, None if adapter is None else [adapter] * len(ids))
    return (out.logits, *_flat_kv(out.past_key_values))


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
    out = _prefill(module, ids, attn, names if names[0] is not None else None)
    cache = out.past_key_values
    cache.batch_repeat_interleave(repeats)
    for layer in getattr(cache, "layers", []):
        _ReservedLayer.reserve(layer, budget)
    attn = attn.repeat_interleave(repeats, dim=0)
    full_attn = torch.cat([attn, attn.new_ones(attn.shape[0], budget)], dim=1)  # (B, P+T)
    kw = {"adapter_names": [n for n in names for _ in range(repeats)]} if names[0] is not None else {}

    def step(tok: torch.Tensor, pos: torch.Tensor, t: int) -> torch.Tensor:
        mask = full_attn[:, : width + t + 1]
        out = module(
            input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, **kw
        )
        return out.logits[:, -1]

    return out.logits[:, -1].repeat_interleave(repeats, dim=0), step


class _ReusedForward(torch.autograd.Function):
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
        used = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
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
        out = _prefill(module, ids, torch.ones_like(ids), None)
        return (out.logits, *_flat_kv(out.past_key_values))

    layer_types = getattr(_base_of(module).config, "layer_types", None) or []
    if not torch.is_grad_enabled() or not layer_types or any(t != "full_attention" for t in layer_types):
        if lean:
            logits, *kv = run(ids)
        else:
            out = _prefill(module, ids, torch.ones_like(ids), None)
            return out.logits, out.past_key_values
    elif reuse is not None:
        state, params = reuse
        logits, *kv = _ReusedForward.apply(run, ids, [state.logits, *state.kv], *params)
    else:
        logits, *kv = checkpoint(run, ids, use_reentrant=False)
    return logits, DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2], strict=True)))


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
        rest = module(
            input_ids=c.sequences[:, P:], attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=False
        )
        logits = torch.cat([prompt_logits[:, -1:].expand(B, 1, -1), rest.logits[:, :-1]], dim=1)  # (B, T, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, c.sequences[:, P:, None]).squeeze(-1)
    attn = torch.cat([c.prompt_mask, c.mask.long()], dim=1)  # (B, P+T)
    logits = module(
        input_ids=c.sequences, attention_mask=attn, position_ids=_positions(attn), logits_to_keep=T + 1
    ).logits
    return completion_token_logprobs(logits, c.sequences, P)
