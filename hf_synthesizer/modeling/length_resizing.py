"""Resize the maximum length `L` (`config.synthesizer_length`) of a synthesizer model in place.

Parameters sized by `L` are resampled along their length axes:

- random `R_h` and fixed random (L x L): bilinear interpolation over both axes;
- factorized random `R1_h, R2_h` (L x k): linear interpolation along L (so `R1 R2^T` is resampled and stays
  rank k);
- dense output layer `W2_h` (dh x L) and `b2_h` (L): linear interpolation along L.

`method="interpolate"` (default) uses `torch.nn.functional.interpolate(..., align_corners=True)`: the first
and last positions map onto each other, new position `i'` reads old position `i' (L-1) / (L'-1)`. The
learned pattern is stretched to the new length, as for interpolated position embeddings; growing then
shrinking back returns the original exactly when `(L-1)` divides `(L'-1)` and closely otherwise.
`method="extend"` keeps every position below `min(L, L')` exactly (shorter inputs behave exactly as before):
shrinking crops; growing continues `R` along its diagonals (`R'[i, j] = R[i - t, j - t]` with
`t = max(0, max(i, j) - L + 1)`, indices clamped at 0 for offsets |i - j| >= L, which keeps relative-position
patterns) and repeats the last row of `R1`/`R2` and the last column of `W2`/`b2`.

Causal layers (decoders) never read `R[i, j]` above the diagonal (`j > i`), so interpolating across it would
carry unused values into the new diagonal. There, each new entry is interpolated from old entries of its own
side of the diagonal only (bilinear weights renormalised over them), and factorized random reads `R2` at the
previous old key position instead of interpolating it: `R1'_i . R2'_j` then combines only old pairs with key <= query.
Dense `W2` columns are read by every later query, so nothing of them is unused.

Factorized dense (`S_ij = A_i[j mod a] * B_i[j // a]`) cannot be resampled along the key axis `j`: a resampled
row is no longer a product of the two factors, and resampling `A` and `B` separately scrambles which key each
logit belongs to. It supports `method="extend"` to a multiple of `a` only (the split becomes `[a, L'/a]`; `B`
is cropped, or repeats its last block): exact for keys below `min(L, L')`. Other requests raise a `ValueError`.

For models with absolute position embeddings (BERT), `L` cannot usefully exceed `max_position_embeddings`:
longer inputs would fail in the position embeddings. Growing beyond it raises a `ValueError`; the position
embeddings are not resized. Create the optimizer after resizing: parameters are replaced by new tensors.

This file may ship with saved checkpoints (trust_remote_code): it imports only torch and siblings.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_synthesizer import check_length_limit, default_factorized_dense_split
from .synthesizer_attention import SynthesizerLogits

METHODS = ("interpolate", "extend")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _resample_last(x: torch.Tensor, new: int, method: str) -> torch.Tensor:
    """Resample the last axis of `x` to `new` entries."""
    old = x.shape[-1]
    if method == "extend":
        if new <= old:
            return x[..., :new].clone()
        return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], new - old)], -1)
    flat = x.reshape(1, -1, old).to(_work_dtype(x))
    if old == 1:
        out = flat.expand(1, flat.shape[1], new)
    else:
        out = F.interpolate(flat, size=new, mode="linear", align_corners=True)
    return out.reshape(*x.shape[:-1], new).to(x.dtype)


def _previous_positions(old: int, new: int, device) -> torch.Tensor:
    """`floor(i' (L-1) / (L'-1))` for each new position `i'`: the old position at or before the one it maps to
    (integer arithmetic: exact at grid points)."""
    if new == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    return torch.div(torch.arange(new, device=device) * (old - 1), new - 1, rounding_mode="floor")


def _bilinear(x: torch.Tensor, new: int) -> torch.Tensor:
    return F.interpolate(x[None], size=(new, new), mode="bilinear", align_corners=True)[0]


def _resample_square(r: torch.Tensor, new: int, method: str, causal: bool = False) -> torch.Tensor:
    """Resample `(H, L, L)` to `(H, L', L')`. `causal`: each side of the diagonal is interpolated from old entries on
    the same side only (bilinear weights renormalised over them), so the used triangle (`j <= i`) never reads the
    unused one."""
    old = r.shape[-1]
    if method == "extend":
        if new <= old:
            return r[:, :new, :new].clone()
        i = torch.arange(new, device=r.device)[:, None]
        j = torch.arange(new, device=r.device)[None, :]
        shift = (torch.maximum(i, j) - (old - 1)).clamp_min(0)
        return r[:, (i - shift).clamp_min(0), (j - shift).clamp_min(0)]
    if old == 1:
        return r.expand(r.shape[0], new, new).clone()
    work = r.to(_work_dtype(r))
    if not causal:
        return _bilinear(work, new).to(r.dtype)
    lower = torch.ones(old, old, dtype=work.dtype, device=r.device).tril()[None]
    new_lower = torch.ones(new, new, dtype=torch.bool, device=r.device).tril()
    # Every new entry has a positive weight on an old corner of its own side (floor(y) <= floor(x) below the
    # diagonal; floor(y) > floor(x) or floor(y) + 1 above it): the denominators are positive.
    below = _bilinear(work * lower, new) / _bilinear(lower, new)
    above = _bilinear(work * (1 - lower), new) / _bilinear(1 - lower, new)
    return torch.where(new_lower, below, above).to(r.dtype)


def _resample_linear_outputs(layer: nn.Linear, heads: int, new: int, method: str) -> nn.Linear:
    """A linear layer with `heads * m` outputs resampled to `heads * new` outputs (per head, along m)."""
    out_features, in_features = layer.weight.shape
    weight = layer.weight.detach().view(heads, out_features // heads, in_features).transpose(1, 2)  # (H, d, m)
    weight = _resample_last(weight, new, method).transpose(1, 2).reshape(heads * new, in_features)
    resized = nn.Linear(in_features, heads * new, bias=layer.bias is not None).to(layer.weight)
    with torch.no_grad():
        resized.weight.copy_(weight)
        if layer.bias is not None:
            resized.bias.copy_(_resample_last(layer.bias.detach().view(heads, -1), new, method).flatten())
    return resized


def _factorized_dense_split(split: list[int], new_length: int, method: str) -> list[int]:
    """The split `[a, L'/a]` of a factorized dense layer extended to `new_length`, or a ValueError saying why not."""
    a, b = split
    if method == "extend" and new_length % a == 0:
        return [a, new_length // a]
    below, above = (new_length // a) * a, (new_length // a + 1) * a
    nearest = f"{new_length}" if new_length % a == 0 else f"{below} or {above}" if below else f"{above}"
    raise ValueError(
        f"Factorized dense logits S_ij = A_i[j mod a] * B_i[j // a] (split [a, b] = {[a, b]}) cannot be resampled "
        f"along the key axis j: a resampled row is no longer a product of the two factors, and resampling A and B "
        f"separately would change which key each logit belongs to. Resize with method='extend' to a multiple of "
        f"a={a} (e.g. {nearest}): keys below min(L, L') keep their logits exactly, B is cropped or repeats its last "
        f"block. Or convert the stock checkpoint again with synthesizer_length={new_length} (factorized dense then "
        f"starts from its plain initialisation)."
    )


def _as_parameter(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def resize_synthesizer_length(model: nn.Module, new_length: int, method: str = "interpolate") -> nn.Module:
    """Resize every synthesizer layer of `model` to maximum length `new_length` and update its config.

    Returns `model` (changed in place). See the module docstring for the methods. Raises `ValueError` for a
    non-positive length, an unknown method, a length beyond BERT's `max_position_embeddings`, and factorized dense
    layers unless `method="extend"` to a multiple of the split's first factor.
    """
    config = model.config
    if not isinstance(new_length, int) or new_length <= 0:
        raise ValueError(f"new_length must be a positive integer, got {new_length!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    check_length_limit(new_length, config.max_synthesizer_length())  # the config's own message
    # Each layer's synthesizer, with whether its attention module is causal (a decoder's self-attention).
    causal = {}
    for module in model.modules():
        synthesizer = getattr(module, "synthesizer", None)
        if isinstance(synthesizer, SynthesizerLogits):
            causal[synthesizer] = bool(getattr(module, "is_causal", False))
    for module in model.modules():
        if isinstance(module, SynthesizerLogits):
            causal.setdefault(module, False)
    has_factorized_dense = any(hasattr(m, "factorized_dense_a") for m in causal)
    split = None
    if has_factorized_dense and config.synthesizer_length != new_length:
        split = _factorized_dense_split(config.factorized_dense_split, new_length, method)
    for module, is_causal in causal.items():
        if module.length == new_length:
            continue
        if hasattr(module, "random_r"):
            value = _resample_square(module.random_r, new_length, method, is_causal)
            module.random_r = _as_parameter(module.random_r, value)
        if hasattr(module, "fixed_random_r"):
            module.fixed_random_r = _resample_square(module.fixed_random_r, new_length, method, is_causal).contiguous()
        if hasattr(module, "factorized_random_r1"):
            r1, r2 = module.factorized_random_r1, module.factorized_random_r2
            new_r1 = _resample_last(r1.transpose(1, 2), new_length, method).transpose(1, 2)
            if is_causal and method == "interpolate":  # keys from the previous old position: key <= query stays so
                new_r2 = r2[:, _previous_positions(r2.shape[1], new_length, r2.device)]
            else:
                new_r2 = _resample_last(r2.transpose(1, 2), new_length, method).transpose(1, 2)
            module.factorized_random_r1 = _as_parameter(r1, new_r1)
            module.factorized_random_r2 = _as_parameter(r2, new_r2)
        if hasattr(module, "dense_w2"):
            module.dense_w2 = _as_parameter(module.dense_w2, _resample_last(module.dense_w2, new_length, method))
            module.dense_b2 = _as_parameter(module.dense_b2, _resample_last(module.dense_b2, new_length, method))
        if hasattr(module, "factorized_dense_b"):  # A (index j mod a) is unchanged: a stays
            heads = module.num_heads
            module.factorized_dense_b = _resample_linear_outputs(module.factorized_dense_b, heads, split[1], method)
        module.length = new_length
    config.synthesizer_length = new_length
    if split is not None:
        # Keep the field None when the new split is the default one, so that it follows the length.
        default = default_factorized_dense_split(new_length)
        config.synthesizer_factorized_dense_split = None if split == default else split
    elif config.synthesizer_factorized_dense_split is not None:
        split = config.synthesizer_factorized_dense_split
        if split[0] * split[1] != new_length:
            config.synthesizer_factorized_dense_split = None  # unused here; keep the config valid
    config.check_synthesizer_fields()
    return model
