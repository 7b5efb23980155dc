"""A transformers cache layer that writes into a buffer reserved once (the one monkeypatch of transformers).

Decoding through a Hugging Face module appends one token per step to every layer's `DynamicLayer`, which
concatenates (copies) the whole cache each time. :class:`ReservedLayer` replaces that method on one
instance so the appends are writes into a preallocated buffer, with the same values."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ReservedLayer"]


class ReservedLayer:
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
        layer.__dict__["update"] = ReservedLayer.update.__get__(layer)  # this instance only

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
