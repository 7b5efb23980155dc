"""A lean one-token decoding step for Qwen2-architecture models (the embedded model's), used by sampling.

Decoding one token through the Hugging Face module stack costs more in Python (module calls, config look-ups,
mask and cache bookkeeping) than in arithmetic at small sizes. `LeanDecoder` runs the same torch operations
in the same order on the module's own weights (RMSNorm, q/k/v projections with bias, rotary embedding,
grouped-query SDPA, o projection, SiLU-gated MLP, final norm, LM head), so its logits are bit-identical to
the module's; it keeps the keys and values in buffers reserved once for the whole token budget.

It serves only the case it reproduces exactly: a plain `Qwen2ForCausalLM` (no PEFT wrapper), SDPA attention,
default RoPE, no sliding window, no padding in the attention mask. `LeanDecoder.supports` says whether it
applies; anything else decodes through the module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LeanDecoder:
    """Decodes one token at a time on a prefilled KV cache (a transformers `DynamicCache`)."""

    @staticmethod
    def supports(module) -> bool:
        cfg: Any = getattr(module, "config", None)
        return (
            cfg is not None
            and type(module).__name__ == "Qwen2ForCausalLM"
            and not module.training
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and cfg.hidden_act == "silu"
            and (cfg.rope_parameters or {}).get("rope_type", "default") == "default"
            and all(t == "full_attention" for t in cfg.layer_types)
            and getattr(module.model.rotary_emb, "rope_type", "default") == "default"
        )

    def __init__(self, module, cache, extra: int):
        m = module.model
        self.layers = []
        for layer, cached in zip(m.layers, cache.layers, strict=True):
            a = layer.self_attn
            B, H, L, D = cached.keys.shape
            kbuf = cached.keys.new_empty(B, H, L + extra, D)
            vbuf = cached.values.new_empty(B, H, L + extra, cached.values.shape[-1])
            kbuf[:, :, :L] = cached.keys
            vbuf[:, :, :L] = cached.values
            mlp, n1, n2 = layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            weights = (
                (a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias, a.v_proj.weight, a.v_proj.bias),
                (a.o_proj.weight, a.o_proj.bias, a.scaling, a.num_key_value_groups > 1),
                (mlp.gate_proj.weight, mlp.gate_proj.bias, mlp.up_proj.weight, mlp.up_proj.bias),
                (mlp.down_proj.weight, mlp.down_proj.bias),
                (n1.weight, n1.variance_epsilon, n2.weight, n2.variance_epsilon),
            )
            self.layers.append((weights, kbuf, vbuf))
        self.filled = L
        self.embed = m.embed_tokens.weight
        self.norm = (m.norm.weight, m.norm.variance_epsilon)
        self.head = module.lm_head.weight
        self.inv_freq = m.rotary_emb.inv_freq
        self.scaling = m.rotary_emb.attention_scaling
        self.head_dim = m.layers[0].self_attn.head_dim

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
        for (qkv, (wo, bo, scale, gqa), (wg, bg, wu, bu), (wd, bd), (n1, e1, n2, e2)), kbuf, vbuf in self.layers:
            residual = x
            h = self._rms(x, n1, e1)
            q = F.linear(h, qkv[0], qkv[1]).view(shape).transpose(1, 2)
            k = F.linear(h, qkv[2], qkv[3]).view(shape).transpose(1, 2)
            v = F.linear(h, qkv[4], qkv[5]).view(shape).transpose(1, 2)
            q = (q * cos) + (self._rotate_half(q) * sin)
            k = (k * cos) + (self._rotate_half(k) * sin)
            kbuf[:, :, start:stop] = k
            vbuf[:, :, start:stop] = v
            o = F.scaled_dot_product_attention(
                q,
                kbuf[:, :, :stop],
                vbuf[:, :, :stop],
                attn_mask=None,
                dropout_p=0.0,
                scale=scale,
                is_causal=False,
                enable_gqa=gqa,
            )
            o = o.reshape(B, -1, 1, self.head_dim).transpose(1, 2).contiguous()
            o = o.reshape(B, 1, -1).contiguous()
            x = residual + F.linear(o, wo, bo)
            residual = x
            h = self._rms(x, n2, e2)
            x = residual + F.linear(F.silu(F.linear(h, wg, bg)) * F.linear(h, wu, bu), wd, bd)
        self.filled = stop
        x = self._rms(x, *self.norm)
        return F.linear(x, self.head)[:, -1]
