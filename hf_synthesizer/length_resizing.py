"""Resize the maximum length `L` (`config.synthesizer_length`) of a synthesizer model in place.

Parameters sized by `L` are resampled along their length axes:

- random `R_h` and fixed random (L x L): bilinear interpolation over both axes;
- factorized random `R1_h, R2_h` (L x k): linear interpolation along L (so `R1 R2^T` is resampled and stays
  rank k);
- dense output layer `W2_h` (dh x L) and `b2_h` (L): linear interpolation along L;
- factorized dense: the split `[a, b]` (`a * b = L`) is recomputed for the new length (the most balanced
  one, or `factorized_dense_split=` given), and the rows of `F_A` / `F_B` are linearly interpolated from
  `a` to `a'` and `b` to `b'` (output position `j = q*a + p` lives on an `a x b` grid, resampled to `a' x b'`).

`method="interpolate"` (default) uses `torch.nn.functional.interpolate(..., align_corners=True)`: the first
and last positions map onto each other, new position `i'` reads old position `i' (L-1) / (L'-1)`. The
learned pattern is stretched to the new length, as for interpolated position embeddings; growing then
shrinking back returns the original exactly when `(L-1)` divides `(L'-1)` and closely otherwise.
`method="extend"` keeps every position below `min(L, L')` exactly (shorter inputs behave exactly as before):
shrinking crops; growing continues `R` along its diagonals (`R'[i, j] = R[i - t, j - t]` with
`t = max(0, max(i, j) - L + 1)`, indices clamped at 0 for offsets |i - j| >= L, which keeps relative-position
patterns) and repeats the last row of
`R1`/`R2` and the last column of `W2`/`b2`. Factorized dense supports only "interpolate".

For models with absolute position embeddings (BERT), `L` cannot usefully exceed `max_position_embeddings`:
longer inputs would fail in the position embeddings. Growing beyond it raises a `ValueError`; the position
embeddings are not resized. Create the optimizer after resizing: parameters are replaced by new tensors.

This file may ship with saved checkpoints (trust_remote_code): it imports only torch and siblings.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_synthesizer import default_factorized_dense_split
from .synthesizer_attention import SynthesizerLogits

METHODS = ("interpolate", "extend")


def _resample_last(x: torch.Tensor, new: int, method: str) -> torch.Tensor:
    """Resample the last axis of `x` to `new` entries."""
    old = x.shape[-1]
    if method == "extend":
        if new <= old:
            return x[..., :new].clone()
        return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], new - old)], -1)
    flat = x.reshape(1, -1, old).float()
    if old == 1:
        out = flat.expand(1, flat.shape[1], new)
    else:
        out = F.interpolate(flat, size=new, mode="linear", align_corners=True)
    return out.reshape(*x.shape[:-1], new).to(x.dtype)


def _resample_square(r: torch.Tensor, new: int, method: str) -> torch.Tensor:
    """Resample `(H, L, L)` to `(H, L', L')`."""
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
    return F.interpolate(r[None].float(), size=(new, new), mode="bilinear", align_corners=True)[0].to(r.dtype)


def _resample_linear_outputs(layer: nn.Linear, heads: int, new: int) -> nn.Linear:
    """A linear layer with `heads * m` outputs resampled to `heads * new` outputs (per head, along m)."""
    out_features, in_features = layer.weight.shape
    weight = layer.weight.detach().view(heads, out_features // heads, in_features).transpose(1, 2)  # (H, d, m)
    weight = _resample_last(weight, new, "interpolate").transpose(1, 2).reshape(heads * new, in_features)
    resized = nn.Linear(in_features, heads * new, bias=layer.bias is not None).to(layer.weight.device)
    with torch.no_grad():
        resized.weight.copy_(weight)
        if layer.bias is not None:
            resized.bias.copy_(_resample_last(layer.bias.detach().view(heads, -1), new, "interpolate").flatten())
    return resized


def _as_parameter(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def resize_synthesizer_length(model: nn.Module, new_length: int, method: str = "interpolate",
                              factorized_dense_split: list[int] | None = None) -> nn.Module:
    """Resize every synthesizer layer of `model` to maximum length `new_length` and update its config.

    Returns `model` (changed in place). See the module docstring for the method.
    """
    config = model.config
    if not isinstance(new_length, int) or new_length <= 0:
        raise ValueError(f"new_length must be a positive integer, got {new_length!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and new_length > positions:
        raise ValueError(
            f"new_length={new_length} exceeds max_position_embeddings={positions}: inputs longer than "
            f"{positions} tokens cannot run through this model's absolute position embeddings anyway. Use "
            f"new_length <= {positions}."
        )
    modules = [m for m in model.modules() if isinstance(m, SynthesizerLogits)]
    has_factorized_dense = any(hasattr(m, "factorized_dense_a") for m in modules)
    if has_factorized_dense and method != "interpolate":
        raise ValueError("Factorized dense layers can only be resized with method='interpolate'.")
    split = None
    if has_factorized_dense:
        split = list(factorized_dense_split or default_factorized_dense_split(new_length))
        if len(split) != 2 or min(split) <= 0 or split[0] * split[1] != new_length:
            raise ValueError(
                f"factorized_dense_split={split} must be [a, b] with a * b == new_length ({new_length})."
            )
    for module in modules:
        if module.length == new_length:
            continue
        if hasattr(module, "random_r"):
            module.random_r = _as_parameter(module.random_r, _resample_square(module.random_r, new_length, method))
        if hasattr(module, "fixed_random_r"):
            module.fixed_random_r = _resample_square(module.fixed_random_r, new_length, method).contiguous()
        for name in ("factorized_random_r1", "factorized_random_r2"):
            if hasattr(module, name):
                old = getattr(module, name)
                value = _resample_last(old.transpose(1, 2), new_length, method).transpose(1, 2)
                setattr(module, name, _as_parameter(old, value))
        if hasattr(module, "dense_w2"):
            module.dense_w2 = _as_parameter(module.dense_w2, _resample_last(module.dense_w2, new_length, method))
            module.dense_b2 = _as_parameter(module.dense_b2, _resample_last(module.dense_b2, new_length, method))
        if hasattr(module, "factorized_dense_a"):
            heads = module.num_heads
            a_old = module.factorized_dense_a.out_features // heads
            b_old = module.factorized_dense_b.out_features // heads
            if [a_old, b_old] != split:
                module.factorized_dense_a = _resample_linear_outputs(module.factorized_dense_a, heads, split[0])
                module.factorized_dense_b = _resample_linear_outputs(module.factorized_dense_b, heads, split[1])
        module.length = new_length
    config.synthesizer_length = new_length
    if has_factorized_dense:
        # Keep the field None when the new split is the default one, so later resizes recompute it.
        default = default_factorized_dense_split(new_length)
        config.synthesizer_factorized_dense_split = None if split == default else split
    elif config.synthesizer_factorized_dense_split is not None:
        split = config.synthesizer_factorized_dense_split
        if split[0] * split[1] != new_length:
            config.synthesizer_factorized_dense_split = None  # unused here; keep the config valid
    config.check_synthesizer_fields()
    return model
