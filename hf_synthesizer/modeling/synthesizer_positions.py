"""Positions of one attention call's queries and keys (docs/attention_core.md, "Positions"): synthesized rows and
columns are indexed by position, not by slot. `token_positions` decides them for every call; the cache layer keeps
its keys' positions (`record_key_positions`), since the cache itself stores none.

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

from dataclasses import dataclass

import torch

from .synthesizer_math import padded_positions, rotation_order, take


@dataclass(frozen=True)
class Positions:
    """Where each query and key sits, when that is not its slot (docs/attention_core.md, "Positions").

    query `(B, lq)` / key `(B, lk)` long: the row / column of the synthesized logits each query / key uses. `order`
    `(B, lk)` long or None: set for whole sequences whose positions are `slot - left padding` (a key mask, no cache):
    reordered by it (`rotation_order`) every kept token sits at the slot of its position, so the routes run on the
    reordered slots instead of reading logits at positions."""

    query: torch.Tensor
    key: torch.Tensor
    order: torch.Tensor | None = None


def token_positions(
    position_ids, attention_mask, q0, lq: int, lk: int, tuned: bool, written: torch.Tensor | None = None
) -> Positions | None:
    """The positions of this call's queries and keys, one rule for every input (docs/attention_core.md, "Positions"),
    or None when they are the slots (query `q0 + i`, key `j`; `q0` is the cache's seen length while decoding):

    - a query sits at its `position_ids` `(B or 1, lq)` when given (they win over the mask, as in BERT's embeddings),
      else at the mask's position of its slot (`mask_positions`: slot minus the left padding, or per row of a full mask), else
      at its slot;
    - a key sits where its token sat when it was written: for whole sequences (no cache) the queries' positions;
      after a cached prefix, `written` `(B or 1, n)` (the key positions the cache layer recorded, see
      `record_key_positions`) for the first `n` keys and the mask's positions (else the slots) for keys it does not
      cover (a cache filled by others, e.g. PEFT's prefix), this call's keys at its queries' positions.

    `tuned` (CPU eager) may read on the host: positions that equal the slots on every kept token are reported as None
    (fast routes), and given `position_ids` that equal the mask's on every kept token of a whole sequence take the
    mask's (whose `order` keeps the fast routes). Elsewhere (GPU, compile, export) nothing is read on the host."""
    whole = isinstance(q0, int) and q0 == 0 and lq == lk
    kept = kept_slots(attention_mask)
    positions = mask_positions(attention_mask, kept, q0, lq, lk, whole)
    given = None if position_ids is None else position_ids.reshape(-1, lq).clamp_min(0)
    if whole and given is not None:
        if not (tuned and positions is not None and _agree(given, positions.query, kept)):
            positions = Positions(given, given)
    elif not whole and (given is not None or written is not None):
        slots = torch.arange(lk, device=(given if given is not None else written).device)
        keys = slots.expand(1, lk) if positions is None else positions.key
        queries = given if given is not None else take(keys, 1, q0, lq)
        positions = Positions(queries, cached_key_positions(written, keys, queries, q0))
    if positions is None or not tuned or isinstance(q0, torch.Tensor):
        return positions
    slots = torch.arange(lk, device=positions.key.device)
    if _agree(positions.key, slots, kept) and _agree(positions.query, slots[q0 : q0 + lq], _query_slots(kept, q0, lq)):
        return None  # CPU eager: every kept token at its slot, the routes run on the slots
    return positions


def cached_key_positions(written, keys, queries, q0) -> torch.Tensor:
    """`(B, lk)` positions of the keys after a cached prefix: `keys` (the mask's or the slots, `(B or 1, lk)`) with
    the first ones replaced by the `written` record `(B or 1, n)` where it fits the batch, and this call's keys (slots
    `q0 .. q0 + lq - 1`; `q0` an int or a static cache's on-device offset) at their queries' positions
    `(B or 1, lq)`."""
    batch = max(keys.shape[0], queries.shape[0], 1 if written is None else written.shape[0])
    keys = keys.expand(batch, -1)
    if written is not None and written.shape[0] in (1, batch) and written.device == keys.device:
        n = min(written.shape[1], keys.shape[1])
        keys = torch.cat([written[:, :n].expand(batch, -1), keys[:, n:]], dim=1)
    lq = queries.shape[1]
    slots = (torch.arange(lq, device=keys.device) + q0).expand(batch, lq)
    return keys.scatter(1, slots, queries.expand(batch, lq).to(keys.dtype))


def record_key_positions(cache_layer, positions: Positions | None, lk: int, device) -> None:
    """Remember on a self-attention cache layer the positions of its `lk` keys (`positions.key`, or the slots when
    `positions` is None), so that later calls give each cached key the position it was written at (the cache stores
    no positions: a position given by `position_ids` cannot be recovered from the mask). An attribute of the layer
    object: `reorder_cache` (beam search) does not permute it, which is exact for `generate`, whose beams of one
    example share their positions; a record that does not fit the next call's batch is ignored."""
    if cache_layer is None:
        return
    keys = torch.arange(lk, device=device)[None] if positions is None else positions.key
    cache_layer.synthesizer_key_positions = keys


def _agree(a, b, where) -> bool:
    """Host read: `a == b` wherever `where` (None: everywhere) holds, shapes broadcast."""
    same = a == b
    return bool((same if where is None else same | ~where).all())


def _query_slots(kept, q0: int, lq: int):
    return None if kept is None else kept[:, q0 : q0 + lq]


def kept_slots(attention_mask) -> torch.Tensor | None:
    """`(B or 1, lk)` bool: the slots some query may attend to (real tokens), from a key mask `(B or 1, 1, 1, lk)` or
    a full mask `(B or 1, 1, lq, lk)`, boolean keep-mask or additive float mask. None for no mask or a per-head mask."""
    m = attention_mask
    if m is None or m.dim() != 4 or m.shape[1] != 1:
        return None
    keep = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    return keep[:, 0].any(1)


def mask_positions(attention_mask, kept, q0, lq: int, lk: int, whole: bool) -> Positions | None:
    """Positions from a mask, on-device (no host read); `kept` its `kept_slots`. A key mask `(B or 1, 1, 1, lk)`: every
    slot at `slot - left padding` (`padded_positions`), queries the slots `q0 .. q0 + lq - 1` of it, and `order` set for
    whole sequences. A full mask `(B or 1, 1, lq, lk)`: a query's position is its slot minus the first key its row
    keeps (packed sequences restart there; a row keeping none takes the example's first kept slot); keys take the
    queries' positions (whole sequences) or `slot - left padding`. Per-head masks and no mask: None (slots)."""
    if kept is None:
        return None
    keys = padded_positions(kept)
    if attention_mask.shape[2] == 1:
        return Positions(take(keys, 1, q0, lq), keys, rotation_order(kept) if whole else None)
    m = attention_mask
    keep = (m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2)[:, 0]  # (B, lq, lk)
    first = keep.int().argmax(-1)  # (B, lq): the first kept key of each row (0 when none)
    start = torch.where(keep.any(-1), first, kept.int().argmax(-1)[:, None])
    query = torch.arange(lq, device=m.device) + q0 - start
    if not whole:
        return Positions(query.clamp_min(0), keys)
    # Slots before the first kept key wrap around to the end, where the reordering of a key mask puts them
    # (outputs of padded slots are unused, but equal on every route).
    query = torch.where(query < 0, query + lk, query)
    return Positions(query, query)
