"""A lean one-token decoding step that serves several agents' models in one batched loop (Qwen2, Qwen3, Llama,
Mistral architectures).

Decoding one token through the Hugging Face module stack costs far more in Python and per-operation
overhead than in arithmetic at small sizes, and n agents with n different weight sets would each need their
own loop. `StackedDecoder` instead keeps, for every layer, the agents' weights stacked along a leading agent
axis, so that one `torch.baddbmm` applies each agent's weights to its own rows:

- rows are agent-major, the same number R per agent: the batch is (A agents, R rows, features);
- full fine-tuning: each agent's own weights are stacked; LoRA on a shared base: each agent's adapter is
  merged into a copy of the base weights (W + scale * B A, computed once per sampling call, no grad);
- q, k and v are one fused projection (bias included), as are the MLP's gate and up projections; the
  residual additions are fused into the output projections (`baddbmm(x, h, W)`);
- Qwen3's per-head RMSNorm of q and k (before the rotary embedding) runs on q and k together;
- attention at one query token runs as two small matrix products with a softmax between, the query heads
  of each KV head packed as its queries (grouped-query attention without repeating K/V), and an additive
  mask for the left padding that aligns prompts of different lengths (each agent's own, and across agents);
- keys and values go into buffers reserved once for the whole token budget;
- rotary embeddings come from a cos/sin table built once per call.

The four architectures share one layer: pre-norm RMSNorm, rotary attention with optional q/k/v biases and
none on the output projection, a SiLU-gated MLP without biases. They differ only in what `_ARCHITECTURES`
records. The logits equal the module's up to float rounding (tested against each agent's module, per
architecture). The decoder copies the weights it stacks; `StackedDecoder.supports` refuses (and the caller
decodes through the module) when the copy would exceed `STACK_BYTES_LIMIT`, or for anything but a plain or
LoRA-wrapped model of a listed architecture with SDPA attention, default RoPE over the whole head, no sliding
window, and no bias where the decoder applies none (Llama's `attention_bias=True` biases o_proj too, and
`mlp_bias=True` the MLP: both refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

STACK_BYTES_LIMIT = 1 << 30
"""Most bytes of weights the decoder copies for one sampling call (beyond it: decode through the module)."""


_ARCHITECTURES = {  # class name: (per-head q/k RMSNorm, attention windowed by `config.sliding_window` alone)
    "Qwen2ForCausalLM": (False, False),  # windows per layer (`layer_types`, `attn.sliding_window`)
    "Qwen3ForCausalLM": (True, False),
    "LlamaForCausalLM": (False, False),  # no sliding window at all
    "MistralForCausalLM": (False, True),  # Llama's layer; windowed whenever `config.sliding_window` is set
}


def _base_of(module) -> Any:
    """The causal LM inside a PEFT wrapper, or the module itself."""
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


def _attn_linears(a) -> tuple:
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj


def _mlp_linears(mlp) -> tuple:
    return mlp.gate_proj, mlp.up_proj, mlp.down_proj


def _shape_of(module) -> tuple:
    """What must match for two models' weights to be stacked (the architecture included)."""
    cfg = _base_of(module).config
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    rope = (cfg.rope_parameters or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    attn = _base_of(module).model.layers[0].self_attn
    biases = tuple(getattr(getattr(lin, "base_layer", lin), "bias", None) is not None for lin in _attn_linears(attn))
    shapes = (*(getattr(cfg, n) for n in names), cfg.vocab_size, cfg.rms_norm_eps, rope, _head_dim(module))
    return (type(_base_of(module)).__name__, *shapes, biases)


def _head_dim(module) -> int:
    return _base_of(module).model.layers[0].self_attn.head_dim


def _stack(per_agent: list[tuple[Sequence, str | None]], scale: torch.Tensor | None = None):
    """W^T (A, in, sum of outs) of each agent's projections that read one input, written in place: a Linear's
    weight, or a LoRA Linear's base weight + scale * B A of the agent's adapter (no grad); every row scaled by
    `scale` (A, in, 1) when given (a folded RMSNorm weight). Also the biases (A, 1, sum of outs) or None."""
    bases = [getattr(lin, "base_layer", lin) for lin in per_agent[0][0]]
    outs = [b.out_features for b in bases]
    ref = bases[0].weight
    w = ref.new_empty(len(per_agent), bases[0].in_features, sum(outs))
    bias = None if all(b.bias is None for b in bases) else ref.new_zeros(len(per_agent), 1, sum(outs))
    for a, (lins, adapter) in enumerate(per_agent):
        col = 0
        for lin, n in zip(lins, outs, strict=True):
            plain, block = getattr(lin, "base_layer", lin), w[a, :, col : col + n]
            block.copy_(plain.weight.t())
            if plain is not lin:  # LoRA
                if adapter is None:
                    raise ValueError("a LoRA-wrapped model needs the adapter of its rows")
                a_t, b_t = lin.lora_A[adapter].weight.t(), lin.lora_B[adapter].weight.t()
                # PEFT keeps adapters in float32 on a bf16 base: merge in float32, round once
                delta = torch.mm(a_t.float(), b_t.float()) * lin.scaling[adapter]
                block.add_(delta.to(block.dtype))
            if plain.bias is not None:
                assert bias is not None
                bias[a, 0, col : col + n] = plain.bias
            col += n
    if scale is not None:
        w.mul_(scale)
    return w, bias


def _config_supported(base, config_window: bool) -> bool:
    """SDPA attention, SiLU, default RoPE over the whole head, and no sliding window in any layer."""
    cfg: Any = base.config
    rotary = base.model.rotary_emb
    return (
        getattr(cfg, "_attn_implementation", None) == "sdpa"
        and cfg.hidden_act == "silu"
        and (cfg.rope_parameters or {}).get("rope_type", "default") == "default"
        and getattr(rotary, "rope_type", "default") == "default"
        and rotary.inv_freq.numel() * 2 == _head_dim(base)
        and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or [])
        and not (config_window and getattr(cfg, "sliding_window", None) is not None)
    )


def _layer_supported(layer, qk_norm: bool, eps: float) -> bool:
    """Plain or plain-LoRA Linears, no bias on o_proj or the MLP, no window, the norms the architecture has."""
    attn = layer.self_attn
    linears = (*_attn_linears(attn), *_mlp_linears(layer.mlp))
    if not all(isinstance(lin, torch.nn.Linear) or (hasattr(lin, "lora_A") and _plain_lora(lin)) for lin in linears):
        return False
    unbiased = (attn.o_proj, *_mlp_linears(layer.mlp))  # the decoder applies no bias there
    if any(getattr(lin, "base_layer", lin).bias is not None for lin in unbiased):
        return False
    if getattr(attn, "sliding_window", None) is not None or hasattr(attn, "q_norm") != qk_norm:
        return False
    width = layer.input_layernorm.weight.shape[0]
    norms = [(layer.input_layernorm, width), (layer.post_attention_layernorm, width)]
    if qk_norm:
        norms += [(attn.q_norm, attn.head_dim), (attn.k_norm, attn.head_dim)]
    return all(_norm_supported(n, eps, w) for n, w in norms)


def _norm_supported(norm, eps: float, width: int) -> bool:
    """An RMSNorm with a weight of `width` and the config's epsilon (the one the decoder uses)."""
    weight = getattr(norm, "weight", None)
    return (
        isinstance(weight, torch.Tensor) and weight.shape == (width,) and getattr(norm, "variance_epsilon", None) == eps
    )


class StackedDecoder:
    """Decodes one token at a time for A agents x R rows (agent-major) on their prefilled KV caches."""

    @staticmethod
    def supports(module) -> bool:
        """Whether this model (plain or PEFT LoRA) can be served by the decoder, exactly as its module runs."""
        base = _base_of(module)
        kind = type(base).__name__
        if getattr(base, "config", None) is None or module.training or kind not in _ARCHITECTURES:
            return False
        qk_norm, config_window = _ARCHITECTURES[kind]
        return (
            _config_supported(base, config_window)
            and all(_layer_supported(layer, qk_norm, base.config.rms_norm_eps) for layer in base.model.layers)
            and _norm_supported(base.model.norm, base.config.rms_norm_eps, base.config.hidden_size)
            and isinstance(base.lm_head, torch.nn.Linear)
            and base.lm_head.bias is None
            and isinstance(base.model.embed_tokens, torch.nn.Embedding)
        )

    @staticmethod
    def can_stack(modules: Sequence) -> bool:
        """Whether these agents' models (one per agent, possibly the same object) decode in one loop."""
        if not all(StackedDecoder.supports(m) for m in modules):
            return False
        if len({_shape_of(m) for m in modules}) != 1:
            return False
        size = sum(p.numel() * p.element_size() for p in _base_of(modules[0]).parameters())
        return size * len(modules) <= STACK_BYTES_LIMIT

    def __init__(
        self,
        modules: Sequence,
        adapters: Sequence[str | None],
        caches: Sequence,
        attns: Sequence,
        repeats: int,
        extra: int,
    ):
        """`modules`/`adapters`: each agent's model and LoRA adapter (None: plain); `caches`: each agent's
        prefilled keys and values [k_0, v_0, k_1, ...], each (N, H_kv, P_a, D) for its N distinct prompts;
        `attns`: each agent's prompt attention mask (N, P_a); `repeats`: rows per distinct prompt (G);
        `extra`: token budget. Rows are agent-major, prompt-major: (agent, prompt, repeat)."""
        self.A, self.N, self.G = len(modules), attns[0].shape[0], repeats
        if any(a.shape[0] != self.N for a in attns):
            raise ValueError("every agent needs the same number of prompts")
        self.U, self.R = self.A * self.N, self.N * repeats  # distinct prompts; rows per agent
        bases = [_base_of(m) for m in modules]
        cfg = bases[0].config
        self.H, self.Hkv, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(modules[0])
        self.I, self.eps = cfg.intermediate_size, cfg.rms_norm_eps
        self.scale = bases[0].model.layers[0].self_attn.scaling
        self.width = max(a.shape[1] for a in attns)  # prompts right-aligned at this column
        self._weights(bases, adapters)
        self._buffers(caches, attns, extra)
        self._rotary(bases[0].model.rotary_emb, self.width + extra + 1, attns[0].device)
        self.generated = 0

    def _weights(self, bases: list, adapters: Sequence[str | None]) -> None:
        """Per layer the stacked W^T of the fused projections; each RMSNorm's weight is folded into the
        projections that read its output (norm(x) * w @ W^T = norm(x) @ (w[:, None] * W^T))."""
        self.layers = []
        for i in range(len(bases[0].model.layers)):
            per_agent = [(b.model.layers[i], name) for b, name in zip(bases, adapters, strict=True)]
            attn = [(_attn_linears(layer.self_attn), n) for layer, n in per_agent]
            mlp = [(_mlp_linears(layer.mlp), n) for layer, n in per_agent]
            n1, n2 = (
                self._norm([getattr(layer, k) for layer, _ in per_agent])
                for k in ("input_layernorm", "post_attention_layernorm")
            )
            self.layers.append(
                (
                    _stack([(lins[:3], n) for lins, n in attn], n1),  # fused q, k, v (and their biases)
                    self._qk_norm([layer.self_attn for layer, _ in per_agent]),
                    _stack([(lins[3:], n) for lins, n in attn])[0],  # o (no bias: `supports`)
                    _stack([(lins[:2], n) for lins, n in mlp], n2)[0],  # fused gate, up
                    _stack([(lins[2:], n) for lins, n in mlp])[0],  # down
                )
            )
        embed = torch.stack([b.model.embed_tokens.weight for b in bases])  # (A, V, h)
        self.vocab = embed.shape[1]
        self.embed = embed.reshape(-1, embed.shape[2])  # (A*V, h): agent a's token t is row a*V + t
        self.offset = (torch.arange(self.A, device=embed.device) * self.vocab).repeat_interleave(self.R)  # (B,)
        head = torch.stack([b.lm_head.weight for b in bases]).transpose(1, 2)  # (A, h, V)
        self.head = head * self._norm([b.model.norm for b in bases])

    def _qk_norm(self, attns: list) -> torch.Tensor | None:
        """(A, 1, H + Hkv, D): each agent's q_norm weight for its H query heads, then k_norm's for its Hkv
        key heads (Qwen3), or None (no q/k norm)."""
        if not hasattr(attns[0], "q_norm"):
            return None
        rows = [torch.cat([a.q_norm.weight.expand(self.H, -1), a.k_norm.weight.expand(self.Hkv, -1)]) for a in attns]
        return torch.stack(rows)[:, None]

    @staticmethod
    def _norm(norms: list) -> torch.Tensor:  # (A, h, 1): each agent's RMSNorm weight, to scale W^T's rows
        return torch.stack([n.weight for n in norms])[:, :, None]

    def _buffers(self, caches: Sequence, attns: Sequence, extra: int) -> None:
        """Per layer: ONE copy of each distinct prompt's keys and values (U, Hkv, width, D), right-aligned,
        read together by its G rows; the generated keys and values (U, Hkv, G, extra, D); the additive mask
        (U * Hkv, 1, width) that hides the prompts' padding."""
        U, Hkv, D, W = self.U, self.Hkv, self.D, self.width
        ref = caches[0][0]
        self.kv = []
        for i in range(len(caches[0]) // 2):
            kp, vp = ref.new_empty(U, Hkv, W, D), ref.new_empty(U, Hkv, W, D)
            for a, cache in enumerate(caches):
                rows, P = slice(a * self.N, (a + 1) * self.N), cache[2 * i].shape[2]
                kp[rows, :, W - P :] = cache[2 * i]
                vp[rows, :, W - P :] = cache[2 * i + 1]
                kp[rows, :, : W - P] = 0  # masked, but must be finite (0 * inf is nan)
                vp[rows, :, : W - P] = 0
            # generated keys/values: each position is written before any query reads it
            kg, vg = ref.new_empty(U, Hkv, self.G, extra, D), ref.new_empty(U, Hkv, self.G, extra, D)
            self.kv.append((kp.view(U * Hkv, W, D), vp.view(U * Hkv, W, D), kg, vg))
        allowed = torch.cat([F.pad(a.bool(), (W - a.shape[1], 0)) for a in attns])  # (U, W)
        mask = torch.zeros(U, W, dtype=ref.dtype, device=ref.device).masked_fill(~allowed, float("-inf"))
        self.mask = mask[:, None, None, :].expand(U, Hkv, 1, W).reshape(U * Hkv, 1, W)

    def _rotary(self, rotary, positions: int, device) -> None:
        """cos/sin (positions, D) and the signed permutation R with x @ R = rotate_half(x) (exact)."""
        freqs = torch.arange(positions, device=device, dtype=torch.float)[:, None] * rotary.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed.dtype
        self.cos = (emb.cos() * rotary.attention_scaling).to(dtype)
        self.sin = (emb.sin() * rotary.attention_scaling).to(dtype)
        half = self.D // 2
        rot = torch.zeros(self.D, self.D, dtype=dtype, device=device)
        idx = torch.arange(half, device=device)
        rot[idx + half, idx] = -1.0
        rot[idx, idx + half] = 1.0
        self.rot = rot

    def _rms(self, x: torch.Tensor) -> torch.Tensor:  # without the weight (folded into the next projection)
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # (B,), (B, 1) -> (B, V)
        """Logits of the next token after appending `tokens` at `positions` (each row's own position)."""
        A, R, H, Hkv, D = self.A, self.R, self.H, self.Hkv, self.D
        U, G, groups, B = self.U, self.G, H // Hkv, A * R
        x = F.embedding(tokens + self.offset, self.embed).view(A, R, -1)
        cos, sin = self.cos[positions[:, 0]][:, None, :], self.sin[positions[:, 0]][:, None, :]  # (B, 1, D)
        t = self.generated + 1  # generated keys including this token's
        for ((wqkv, bqkv), wqk, wo, wgu, wd), (kp, vp, kg, vg) in zip(self.layers, self.kv, strict=True):
            h = self._rms(x)
            qkv = (torch.baddbmm(bqkv, h, wqkv) if bqkv is not None else torch.bmm(h, wqkv)).view(B, H + 2 * Hkv, D)
            qk = qkv[:, : H + Hkv]
            if wqk is not None:  # Qwen3: RMSNorm of every q and k head over its D features
                qk = (self._rms(qk).view(A, R, H + Hkv, D) * wqk).view(B, H + Hkv, D)
            qk = torch.addcmul(qk * cos, qk @ self.rot, sin)  # rotary embedding of q and k together
            kg[:, :, :, t - 1] = qk[:, H:].view(U, G, Hkv, D).transpose(1, 2)
            vg[:, :, :, t - 1] = qkv[:, H + Hkv :].view(U, G, Hkv, D).transpose(1, 2)
            # the G rows' query heads of each (prompt, KV head) as one block of queries: (U*Hkv, G*groups, D)
            q = (qk[:, :H] * self.scale).view(U, G, Hkv, groups, D).transpose(1, 2).reshape(U * Hkv, G * groups, D)
            keys = kg.view(U * Hkv * G, -1, D)[:, :t]
            own = torch.bmm(q.view(U * Hkv * G, groups, D), keys.transpose(1, 2)).view(U * Hkv, G * groups, t)
            scores = torch.cat([torch.baddbmm(self.mask, q, kp.transpose(1, 2)), own], dim=-1)
            p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # (U*Hkv, G*groups, width + t)
            o = torch.bmm(p[..., : self.width], vp) + torch.bmm(
                p[..., self.width :].reshape(U * Hkv * G, groups, t), vg.view(U * Hkv * G, -1, D)[:, :t]
            ).view(U * Hkv, G * groups, D)
            o = o.view(U, Hkv, G, groups, D).transpose(1, 2).reshape(A, R, H * D)
            x = torch.baddbmm(x, o, wo)
            gu = torch.bmm(self._rms(x), wgu)
            x = torch.baddbmm(x, F.silu(gu[..., : self.I]) * gu[..., self.I :], wd)
        self.generated = t
        return torch.bmm(self._rms(x), self.head).view(B, -1)


def _project(lin, x: torch.Tensor, adapter: str | None) -> torch.Tensor:
    """A Linear, or a LoRA Linear with `adapter` applied (None: the base alone), whatever adapter is active."""
    if isinstance(lin, torch.nn.Linear):
        return F.linear(x, lin.weight, lin.bias)
    y = lin.base_layer(x)
    if adapter is None:
        return y
    down = lin.lora_A[adapter]  # PEFT keeps adapters in float32 on a bf16 base, as its own forward does
    delta = lin.lora_B[adapter](down(x.to(down.weight.dtype))) * lin.scaling[adapter]
    return y + delta.to(y.dtype)


def _heads(attn, name: str, h: torch.Tensor, adapter: str | None) -> torch.Tensor:  # (B, P, h) -> (B, n, P, D)
    """The q, k or v heads of `attn` for the hidden states `h`; Qwen3's per-head RMSNorm applied to q and k."""
    x = _project(getattr(attn, f"{name}_proj"), h, adapter).view(*h.shape[:2], -1, attn.head_dim)
    norm = getattr(attn, f"{name}_norm", None)
    return (x if norm is None else norm(x)).transpose(1, 2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def prompt_pass(module, ids: torch.Tensor, adapter: str | None) -> tuple[torch.Tensor, ...]:
    """Forward of unpadded prompts (B, P) that computes only what decoding and scoring read: the keys and
    values of every layer and the last token's logits. The last layer's attention output and MLP are computed
    for the last token only (the module computes them for every position, and its backward pass then runs
    them on zero gradients). Returns (logits (B, 1, V), k_0, v_0, k_1, v_1, ...), each (B, H_kv, P, D); equal
    to the module's forward up to float rounding (tested). For a model `StackedDecoder.supports`."""
    base = _base_of(module)
    m = base.model
    x = m.embed_tokens(ids)  # (B, P, h)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    cos, sin = (t[:, None] for t in m.rotary_emb(x, positions))  # (1, 1, P, D)
    out: list[torch.Tensor] = []
    for i, layer in enumerate(m.layers):
        a, last = layer.self_attn, i == len(m.layers) - 1
        B = x.shape[0]
        h = layer.input_layernorm(x)
        k = _rotate(_heads(a, "k", h, adapter), cos, sin)
        v = _heads(a, "v", h, adapter)
        out += [k, v]
        if last:  # only the last token goes on
            h, x, cos, sin = h[:, -1:], x[:, -1:], cos[:, :, -1:], sin[:, :, -1:]
        q = _rotate(_heads(a, "q", h, adapter), cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=not last, scale=a.scaling, enable_gqa=True)
        x = x + _project(a.o_proj, o.transpose(1, 2).reshape(B, h.shape[1], -1), adapter)
        h = layer.post_attention_layernorm(x)
        mlp = layer.mlp
        act = F.silu(_project(mlp.gate_proj, h, adapter)) * _project(mlp.up_proj, h, adapter)
        x = x + _project(mlp.down_proj, act, adapter)
    return (base.lm_head(m.norm(x)), *out)
