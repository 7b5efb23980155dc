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
cache. With ``chat_template`` every agent whose tokenizer has a chat template is prompted with the env's
chat messages (:class:`ChatPrompt`: system = its role, user = the task, then earlier turns) and stops at
the template's end-of-turn token as well as at EOS; the completion mask covers the generated tokens
through that token. LoRA targets default to the architecture's (:func:`lora_targets_for`). The log-prob forward gives the
model the same position ids as generation did (cumulative attention mask), so training scores exactly what
was sampled; while an agent's weights are unchanged since sampling, its prompt's forward is reused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from baselines.lm.completions import ChatPrompt, Completions, Prompt, PromptState, SamplingConfig, answer_start
from baselines.lm.fastdecode import StackedDecoder
from baselines.lm.loading import end_of_turn_ids, eos_ids_of, load_tokenizer, lora_targets_for, resolve_model
from baselines.lm.sampling import sample
from baselines.lm.scoring import last_hidden_states, score
from baselines.objectives import completion_mask

__all__ = ["ChatPrompt", "Completions", "Finetune", "Policies", "Prompt", "PromptState", "SamplingConfig"]

Finetune = Literal["lora", "full"]


class _Member:
    """One agent's slot: the module it runs through, its adapter (LoRA) and tokenizer."""

    def __init__(self, module, tokenizer, adapter: str | None, eos_ids: list[int], chat: bool):
        self.module, self.tokenizer, self.adapter, self.eos_ids = module, tokenizer, adapter, eos_ids
        self.chat = chat  # prompted through the tokenizer's chat template
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
        lora_target: Sequence[str] | None = None,
        chat_template: bool = False,
        need_reference: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        from transformers import AutoModelForCausalLM

        self.agents = list(agents)
        names = [models] * len(self.agents) if models is None or isinstance(models, str) else list(models)
        names = [resolve_model(name) for name in names]
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
            chat = chat_template and tok.chat_template is not None
            eos = sorted(set(eos_ids_of(module, tok)) | set(end_of_turn_ids(tok) if chat else ()))
            if finetune == "lora":
                target = list(lora_target) if lora_target else lora_targets_for(module)
                module = self._add_adapter(module, agent, shared, lora_r, lora_alpha, target)
                loaded[name] = (module, tok)
            elif finetune == "full":
                module.requires_grad_(True)
            else:
                raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
            self.members[agent] = _Member(module, tok, agent if finetune == "lora" else None, eos, chat)
            if finetune == "full" and need_reference:
                self.members[agent].reference = copy.deepcopy(module).requires_grad_(False).eval()
        if chat_template and not any(m.chat for m in self.members.values()):
            raise ValueError(f"chat_template is on but no agent's tokenizer has a chat template ({names})")
        for m in self.members.values():
            m.module.eval()  # no dropout: sampling and scoring see the same function

    @staticmethod
    def _add_adapter(module, agent: str, shared: bool, r: int, alpha: int, target: Sequence[str]):
        from peft import LoraConfig, get_peft_model

        if not agent.isidentifier():
            raise ValueError(f"agent name {agent!r} must be a Python identifier to name its LoRA adapter")
        if not shared:  # a shared base was checked with its first adapter (PEFT has wrapped its layers since)
            _check_targets(module, target)
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target), task_type="CAUSAL_LM")
        if shared:
            module.add_adapter(agent, cfg)
            return module
        module.requires_grad_(False)
        return get_peft_model(module, cfg, adapter_name=agent)

    def uses_chat_template(self, agent: str) -> bool:
        """Whether ``agent`` is prompted through its tokenizer's chat template."""
        return self.members[agent].chat

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
    def _format(self, agent: str, prompt: Prompt) -> str:
        """The text the agent's tokenizer encodes: the env's prompt text, or its chat messages through the
        chat template, ending with the template's opening of the assistant's turn."""
        member = self.members[agent]
        start = answer_start(prompt)
        if not member.chat:
            text = prompt.text if isinstance(prompt, ChatPrompt) else prompt
            return f"{text}\n{start}" if start else text
        chat = prompt if isinstance(prompt, ChatPrompt) else ChatPrompt.from_text(prompt)
        messages = [dict(m) for m in chat.messages]
        return member.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + start

    def _encode(self, agent: str, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        member = self.members[agent]
        batch = member.tokenizer(
            [self._format(agent, p) for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not member.chat,  # a chat template writes its own special tokens
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)  # (B, P)

    @torch.no_grad()
    def generate(
        self, prompts: Mapping[str, Sequence[Prompt]], sampling: SamplingConfig, repeats: int = 1
    ) -> dict[str, Completions]:
        """Sample `repeats` responses to each prompt of each agent (rows prompt-major: p0 x repeats, p1 x
        repeats, ...). Agents are decoded together in as few loops as possible (`_decode_groups`): one loop
        for all agents whose models have one architecture (each row with its agent's weights or adapter). Each
        distinct prompt is prefilled once and its KV cache repeated, so G samples cost one prompt forward."""
        out: dict[str, Completions] = {}
        for agents in self._decode_groups(prompts):
            out.update(self._generate_group(agents, prompts, sampling, repeats))
        return out

    def _decode_groups(self, prompts: Mapping[str, Sequence[Prompt]]) -> list[list[str]]:
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

    def _generate_group(
        self, agents: list[str], prompts: Mapping[str, Sequence[Prompt]], sampling: SamplingConfig, repeats: int
    ):
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
            texts = self.answers(agent, prompts[agent], repeats, seqs[:, ids.shape[1] :], mask)
            attn = attn.repeat_interleave(repeats, dim=0)
            state = PromptState(prefill[0], prefill[1], version) if prefill is not None else None
            result[agent] = Completions(seqs, attn, mask, texts, logps, len(prompts[agent]) == 1, state)
        return result

    def answers(
        self, agent: str, prompts: Sequence[Prompt], repeats: int, completion: torch.Tensor, mask: torch.Tensor
    ) -> list[str]:
        """The agent's answers (rows prompt-major, ``repeats`` per prompt): each prompt's answer start + the
        decoded completion through its end token (special tokens dropped, surrounding space stripped)."""
        tok = self.members[agent].tokenizer
        starts = [answer_start(p) for p in prompts for _ in range(repeats)]
        if len(starts) != len(completion):
            raise ValueError(f"{len(completion)} completions for {len(prompts)} prompts x {repeats}")
        texts = [tok.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(completion, mask, strict=True)]
        return [start + text.rstrip() if start else text.strip() for start, text in zip(starts, texts, strict=True)]

    # ------------------------------------------------------------------ scoring
    def representation(self, agent: str, c: Completions, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent's own last-layer hidden states of its completions: at the last prompt token (B, H) and at
        the last generated token (B, H); with ``grad`` the agent's trainable tensors get gradients through them."""
        m = self.members[agent]
        if m.adapter is not None:
            m.module.set_adapter(m.adapter)
        with torch.set_grad_enabled(grad):
            return last_hidden_states(m.module, c)

    def hidden_size(self, agent: str) -> int:
        """Width of the agent's hidden states (the representation's H)."""
        config = self.members[agent].module.config
        return int(config.hidden_size)

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


def _check_targets(module, target: Sequence[str]) -> None:
    """Refuse LoRA target names that match no linear layer of ``module`` (PEFT only refuses when none match,
    so a typo among several names would silently train fewer layers)."""
    linear = {name.rsplit(".", 1)[-1] for name, sub in module.named_modules() if _is_projection(sub)}
    missing = [t for t in target if t not in linear]
    if missing:
        raise ValueError(
            f"LoRA targets {missing} match no linear layer of {type(module).__name__}; its linear layers: "
            f"{', '.join(sorted(linear))} (set them with --lora-targets)"
        )


def _is_projection(module: torch.nn.Module) -> bool:
    """A layer LoRA can adapt: a linear layer, or GPT-2's Conv1D (a transposed linear layer)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
