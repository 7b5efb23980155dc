"""A lean one-token decoding step for Qwen2-architecture models (the embedded model's), used by sampling.

Decoding one token through the Hugging Face module stack costs more in Python (module calls, config look-ups,
mask and cache bookkeeping) than in arithmetic at small sizes. `LeanDecoder` runs the same torch operations
in the same order on the module's own weights (RMSNorm, q/k/v projections with bias, rotary embedding,
grouped-query SDPA, o projection, SiLU-gated MLP, final norm, LM head), so for a plain model without padding
its logits are bit-identical to the module's (tested); it keeps the keys and values in buffers reserved once
for the whole token budget.

With PEFT LoRA adapters on one frozen base (one adapter per agent), every row of the batch gets its own
adapter as a batched low-rank update: y = x W^T + b + (x A_row^T)(B_row^T * scale_row) with the rows' A/B
matrices stacked once per sampling call (torch.bmm), instead of PEFT's split of the batch by adapter. The
result equals PEFT's up to float rounding (the order of the scale multiplication differs). With left
padding, the padding positions are masked out of attention as the module does (boolean mask, GQA packed).

It serves a plain or LoRA-wrapped `Qwen2ForCausalLM` with SDPA attention, default RoPE, no sliding window;
`LeanDecoder.supports` says whether it applies, anything else decodes through the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def _base_of(module) -> Any:
    """The Qwen2ForCausalLM inside a PEFT wrapper, or the module itself."""
    if type(module).__name__.startswith("PeftModel"):
        return module.base_model.model
    return module


def _plain_lora(lin) -> bool:
    """A PEFT LoRA Linear that is plain: no DoRA or other variant, not merged, adapters enabled, no dropout."""
    return (
        not getattr(lin, "merged_adapters", [])
        and not getattr(lin, "disable_adapters", False)
        and not getattr(lin, "lora_variant", {})
        and all(isinstance(d, torch.nn.Identity) for d in lin.lora_dropout.values())
        and not any(getattr(lin, "lora_bias", {}).values())
    )


class LeanDecoder:
    """Decodes one token at a time on a prefilled KV cache (a transformers `DynamicCache`)."""

    @staticmethod
    def supports(module) -> bool:
        base = _base_of(module)
        cfg: Any = getattr(base, "config", None)
        if not (
            cfg is not None
            and type(base).__name__ == "Qwen2ForCausalLM"
            and not module.training
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and cfg.hidden_act == "silu"
            and (cfg.rope_parameters or {}).get("rope_type", "default") == "default"
            and all(t == "full_attention" for t in cfg.layer_types)
            and getattr(base.model.rotary_emb, "rope_type", "default") == "default"
        ):
            return False
        for layer in base.model.layers:
            for lin in (*_attn_linears(layer.self_attn), *_mlp_linears(layer.mlp)):
                if not isinstance(lin, torch.nn.Linear) and not (hasattr(lin, "lora_A") and _plain_lora(lin)):
                    return False
        return isinstance(base.lm_head, torch.nn.Linear) and isinstance(base.model.embed_tokens, torch.nn.Embedding)

    def __init__(self, module, cache, extra: int, adapter_names: Sequence[str] | None = None, attn=None):
        """`adapter_names`: the LoRA adapter of every row (None: the plain model); `attn` (B, P): the prompt's
        attention mask when it has padding (None: no padding)."""
        m = _base_of(module).model
        self.layers = []
        for layer, cached in zip(m.layers, cache.layers, strict=True):
            a = layer.self_attn
            B, H, L, D = cached.keys.shape
            kbuf = cached.keys.new_empty(B, H, L + extra, D)
            vbuf = cached.values.new_empty(B, H, L + extra, cached.values.shape[-1])
            kbuf[:, :, :L] = cached.keys
            vbuf[:, :, :L] = cached.values
            mlp, n1, n2 = layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            lin = [self._linear(x, adapter_names) for x in (*_attn_linears(a), *_mlp_linears(mlp))]
            weights = (
                lin,
                (a.scaling, a.num_key_value_groups),
                (n1.weight, n1.variance_epsilon, n2.weight, n2.variance_epsilon),
            )
            self.layers.append((weights, kbuf, vbuf))
        self.filled = L
        self.mask = None
        if attn is not None:  # (B, 1, 1, P + extra) boolean, True where a row may attend
            full = torch.cat([attn, attn.new_ones(attn.shape[0], extra)], dim=1).bool()
            self.mask = full[:, None, None, :]
        base = _base_of(module)
        self.embed = m.embed_tokens.weight
        self.norm = (m.norm.weight, m.norm.variance_epsilon)
        self.head = base.lm_head.weight
        self.inv_freq = m.rotary_emb.inv_freq
        self.scaling = m.rotary_emb.attention_scaling
        self.head_dim = m.layers[0].self_attn.head_dim

    @staticmethod
    def _linear(lin, adapter_names: Sequence[str] | None):
        """(weight, bias, per-row LoRA (A^T (B, in, r), scale * B^T (B, r, out)) or None)."""
        if isinstance(lin, torch.nn.Linear):
            return lin.weight, lin.bias, None
        base = lin.base_layer
        if not adapter_names:
            raise ValueError("a LoRA-wrapped model needs the adapter of every row")
        with torch.no_grad():
            cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for n in set(adapter_names):
                cache[n] = (lin.lora_A[n].weight.t(), lin.lora_B[n].weight.t() * lin.scaling[n])
            a_rows = torch.stack([cache[n][0] for n in adapter_names])
            b_rows = torch.stack([cache[n][1] for n in adapter_names])
        return base.weight, base.bias, (a_rows, b_rows)

    @staticmethod
    def _apply(x: torch.Tensor, lin) -> torch.Tensor:  # (B, 1, in) -> (B, 1, out)
        w, b, lora = lin
        y = F.linear(x, w, b)
        if lora is not None:
            y = y + torch.bmm(torch.bmm(x, lora[0]), lora[1])
        return y

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + eps)
        return weight * x.to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B,), (B, 1) -> (B, V)
        """Logits of the next token after appending `tokens` at `positions`."""
        B = tokens.shape[0]
        x = F.embedding(tokens[:, None], self.embed)  # (B, 1, h)
        freqs = positions[..., None].float() * self.inv_freq.to(dtype=torch.float)  # (B, 1, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.scaling).to(x.dtype).unsqueeze(1)  # (B, 1, 1, D)
        sin = (emb.sin() * self.scaling).to(x.dtype).unsqueeze(1)
        start, stop = self.filled, self.filled + 1
        shape = (B, 1, -1, self.head_dim)
        mask = None if self.mask is None else self.mask[..., :stop]
        for (lin, (scale, groups), (n1, e1, n2, e2)), kbuf, vbuf in self.layers:
            residual = x
            h = self._rms(x, n1, e1)
            q = self._apply(h, lin[0]).view(shape).transpose(1, 2)
            k = self._apply(h, lin[1]).view(shape).transpose(1, 2)
            v = self._apply(h, lin[2]).view(shape).transpose(1, 2)
            # rotary embedding of q and k in one pass (element-wise, so the same values as one at a time)
            qk = torch.cat((q, k), dim=1)
            qk = (qk * cos) + (self._rotate_half(qk) * sin)
            q, k = qk[:, : q.shape[1]], qk[:, q.shape[1] :]
            kbuf[:, :, start:stop] = k
            vbuf[:, :, start:stop] = v
            if mask is None:
                o = F.scaled_dot_product_attention(
                    q,
                    kbuf[:, :, :stop],
                    vbuf[:, :, :stop],
                    attn_mask=None,
                    dropout_p=0.0,
                    scale=scale,
                    is_causal=False,
                    enable_gqa=groups > 1,
                )
            else:  # one query token: pack the query heads of each KV head as its queries
                qp = q.reshape(B, -1, groups, self.head_dim) if groups > 1 else q
                o = F.scaled_dot_product_attention(
                    qp,
                    kbuf[:, :, :stop],
                    vbuf[:, :, :stop],
                    attn_mask=mask,
                    dropout_p=0.0,
                    scale=scale,
                    is_causal=False,
                )
            o = o.reshape(B, -1, 1, self.head_dim).transpose(1, 2).contiguous()
            o = o.reshape(B, 1, -1).contiguous()
            x = residual + self._apply(o, lin[3])
            residual = x
            h = self._rms(x, n2, e2)
            x = residual + self._apply(F.silu(self._apply(h, lin[4])) * self._apply(h, lin[5]), lin[6])
        self.filled = stop
        x = self._rms(x, *self.norm)
        return F.linear(x, self.head)[:, -1]


def _attn_linears(a) -> tuple:
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj


def _mlp_linears(mlp) -> tuple:
    return mlp.gate_proj, mlp.up_proj, mlp.down_proj
