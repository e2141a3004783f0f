"""The feature route: logits that are a dot product of per-example features -- dense (`h . W2_j + b2_j`), factorized
random (`R1_i . R2_j`), and their mixtures with vanilla (features concatenated, weights folded into the query side) --
on sdpa's flash CPU kernel (O(l) memory). Features and values are zero-padded to one head dim because the kernel
falls back to the slow math path when q/k and v head dims differ.

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

import torch
from torch.nn import functional as F

def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """The flash kernel needs a contiguous last dim only; a full copy (e.g. of a transposed value) would be one more
    activation saved for backward per layer."""
    return t if t.stride(-1) == 1 else t.contiguous()


def feature_attention(qf, kf, value, attention_mask, dropout):
    """`softmax(qf kf^T (+ mask)) V` through sdpa's flash kernel: q/k features and values zero-padded to one
    head dim (flash needs equal dims and a contiguous last dim). Returns `(B, lq, H, dh)`.

    The queries are laid out `(B, lq, H, width)` in memory: flash writes its output in the query's layout, so the
    `(B, lq, H, dh)` result is a free transpose instead of one more copy (and activation) per layer."""
    dh = value.shape[-1]
    width = max(qf.shape[-1], dh)
    batch = value.shape[0]
    q = qf.expand(batch, -1, -1, -1).transpose(1, 2)
    if q.shape[-1] < width:
        q = torch.cat([q, q.new_zeros(*q.shape[:-1], width - q.shape[-1])], dim=-1)
    q = q.contiguous().transpose(1, 2)
    if kf.shape[-1] < width:  # (key features the same for every example: padded once)
        kf = F.pad(kf[:1] if kf.stride(0) == 0 else kf, (0, width - kf.shape[-1]))
    if dh < width:
        value = F.pad(value, (0, width - dh))
    out = F.scaled_dot_product_attention(
        q, _unit_stride(kf.expand(batch, -1, -1, -1)), _unit_stride(value), attn_mask=attention_mask,
        dropout_p=dropout, scale=1.0,
    )
    return out[..., :dh].transpose(1, 2)

