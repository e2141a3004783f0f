"""The decoding cache as synthesizer attention modules use it: whichever name transformers passes it under, the key
placeholder of layers that read no keys, the update that returns the query offset, and the check of a caller's
`cache_position` (docs/attention_core.md, "Caches").

This file ships with saved checkpoints (trust_remote_code): it imports only torch, transformers and its flat siblings.
"""

import torch
from transformers.masking_utils import is_tracing

from .synthesizer_math import check_length


def resolve_cache(cache, past_key_values):
    """The decoding cache, whichever name the caller used: transformers 5.24 passes `cache=` to attention modules,
    5.23 `past_key_values=`."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the decoding cache once, as `cache=` (or the older name `past_key_values=`), not both.")
    return cache if cache is not None else past_key_values


def key_placeholder(value: torch.Tensor, cache, layer_idx: int) -> torch.Tensor:
    """The keys a layer without a dot-product term puts in its cache: zeros `(B, H, lq, w)` that only count the
    positions (nothing reads them). `w` is 1 (transformers 5.23's `DynamicLayer` counts an empty tensor as length 0),
    or the width of the keys the cache layer already holds, so that full-width entries written by others -- PEFT's
    prefix tuning fills every layer with its prefix keys, a user's cache -- and ours can be concatenated. `cache` a
    self-attention `Cache` (not an `EncoderDecoderCache`) or None."""
    width = 1
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx is not None and layer_idx < len(layers):
        keys = getattr(layers[layer_idx], "keys", None)
        if getattr(layers[layer_idx], "is_initialized", True) and isinstance(keys, torch.Tensor) and keys.dim() == 4:
            width = keys.shape[-1] if keys.shape[-1] > 0 else 1
    return value.new_zeros(()).expand(*value.shape[:-1], width)


def update_self_attention_cache(cache, layer_idx: int, key, value, attention_mask, length_limit: int | None = None):
    """Append this step's key/value to a self-attention `cache` layer; returns `(query_offset, key, value, mask)`.

    `query_offset` is the number of positions cached before this step (the position of the first query): the int a
    `DynamicCache` reports, or the on-device 0-dim tensor a `StaticCache` keeps (`cumulative_length`, cloned before the
    update adds to it in place), never read on the host here, so that a compiled decoding step stays one graph (no
    sync, CUDA graphs possible); transformers' T5 takes the same tensor for its position bias. key/value
    `(B, H, lk, dh)`: a `DynamicCache` returns the `query_offset + lq` positions filled so far; a `StaticCache` all
    `max_cache_len` slots, the ones after the last query empty (hidden by the causal mask, which the attention then
    applies to a single query too). Synthesized layers (`length_limit`, their synthesizer_length) cut a static cache
    longer than that to it: a slot past it could only be filled by decoding past the limit, which raises the
    documented ValueError (read on the host in eager mode, an on-device assertion while compiling).
    """
    query_offset = cache.get_seq_length(layer_idx)
    lq = value.shape[2]
    if isinstance(query_offset, torch.Tensor):
        query_offset = query_offset.clone()
    key, value = cache.update(key, value, layer_idx)
    if isinstance(query_offset, torch.Tensor):
        live = length_limit if length_limit is not None and value.shape[2] > length_limit else None
        if live is not None:
            if torch.compiler.is_compiling():
                torch._assert_async(query_offset + lq <= live, "decoding past config.synthesizer_length")
            else:
                check_length(int(query_offset) + lq, live)
    else:
        live = query_offset + lq if value.shape[2] > query_offset + lq else None
    if live is not None:
        key, value = key[:, :, :live], value[:, :, :live]
        if attention_mask is not None and attention_mask.shape[-1] > live:
            attention_mask = attention_mask[..., :live]
    return query_offset, key, value, attention_mask


def cache_layer_of(cache, layer_idx) -> object | None:
    """The layer object of a self-attention `cache` holding layer `layer_idx`'s keys (None without one): where
    `record_key_positions` keeps their positions."""
    layers = getattr(cache, "layers", None)
    return layers[layer_idx] if layers is not None and layer_idx is not None and layer_idx < len(layers) else None


def check_cache_position(cache_position, query_offset) -> None:
    """A caller's `cache_position` (positions of this call's tokens in the decoding cache, as loops written for
    transformers 5.23 pass it) must agree with the cache's seen length `query_offset`, which gives the positions:
    raise naming both when not. One host read of each (the modules check once per model forward, in their first
    layer); nothing is checked while tracing (compile, export)."""
    if cache_position is None or cache_position.numel() == 0 or is_tracing(cache_position):
        return
    first, seen = int(cache_position.reshape(-1)[0]), int(query_offset)
    if first != seen:
        raise ValueError(
            f"cache_position starts at {first} but the decoding cache has seen {seen} positions: the queries of this "
            f"call sit at positions {seen}.. of the cache. Pass cache_position=torch.arange({seen}, {seen} + "
            f"new tokens) (or leave it out: the cache gives it), or the cache that goes with your cache_position."
        )
