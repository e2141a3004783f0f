"""What the fast routes share: the masked value, the chunk size, the causal and padding biases, the uniform rows of
queries that see no kept key, and the input-independent cache. Each route has its own flat file
beside the plain math it is tested against (tests/test_fast_paths.py, tests/test_routes.py, forward and gradients):

* `route_shared.py` -- input-independent logits (random, fixed random, factorized random and mixtures of them) once
  per batch, applied to every example with one matmul (a key-padding mask rides along as one extra value column);
* `route_per_example.py` -- logits that differ per example and contain a full-rank input-independent term
  (random+vanilla, dense+random, ...), or attention dropout: query-chunked attention with its own backward;
* `route_feature.py` -- logits that are a dot product of per-example features (dense, factorized random, their
  mixtures with vanilla) on sdpa's flash CPU kernel;
* `route_factorized_dense.py` -- factorized dense, its own Function over query chunks;
* `route_chunked_reference.py` -- the reference math in query chunks (factorized dense mixtures).

This file ships with saved checkpoints (trust_remote_code): it imports only torch.
"""

import torch


# Query rows per chunk: keeps each chunk's (H, rows, lk) logits small enough to be reused by the allocator
# instead of page-faulted afresh (docs/attention_core.md, "Performance on CPU").
CHUNK_ELEMENTS = 1 << 22
# Additive value of a masked-out logit. Finite (unlike -inf) so that a fully masked row comes out uniform like the
# reference (which adds finfo.min), and two of them (causal + padding) cannot overflow to -inf.
MASKED = -1e30


def _chunk_rows(heads_times_batch: int, key_length: int) -> int:
    return max(16, CHUNK_ELEMENTS // max(1, heads_times_batch * key_length))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64 so that gradcheck can verify the backward passes)."""
    return t if t.dtype == torch.float64 else t.float()


# ----------------------------------------------------------------------------------------------- masks


def causal_bias(q0: int, rows: range | slice, key_length: int, device) -> torch.Tensor:
    """Additive (rows, lk) fp32 bias: 0 where query `q0 + i` may see key `j <= q0 + i`, -inf elsewhere."""
    r = torch.arange(rows.start, rows.stop, device=device)[:, None] + q0
    keep = r >= torch.arange(key_length, device=device)[None, :]
    return torch.zeros(keep.shape, device=device).masked_fill_(~keep, MASKED)


def no_key_rows(key_bias, causal: bool, q0: int, lq: int):
    """`(B or 1, lq)` bool, on-device: query rows that see no kept key (every key padded, or, under a causal mask,
    every key up to the query). The reference attends uniformly over all keys there (it adds `finfo.min` to every
    logit); the key-weight trick would divide 0 by 0."""
    kept = key_bias > MASKED / 2  # (B, lk)
    if not causal:
        return (~kept.any(-1, keepdim=True)).expand(-1, lq)
    lk = kept.shape[-1]
    seen = kept.cumsum(-1)  # kept keys up to each position
    last_seen = (torch.arange(lq, device=kept.device) + q0).clamp_max(lk - 1)
    return seen[:, last_seen] == 0


def uniform_where_no_key(out, value, key_bias, causal: bool, q0: int):
    """`out` `(B, lq, H, dh)` with the rows of `no_key_rows` replaced by the mean of the values over all keys (the
    reference's uniform attention there)."""
    empty = no_key_rows(key_bias, causal, q0, out.shape[1])[:, :, None, None]
    return torch.where(empty, value.mean(2)[:, None].to(out.dtype), out)


class _UniformRows(torch.autograd.Function):
    """`torch.where(empty, mean of the values, out)` with the reference's gradient on the `empty` rows (rows that see
    no kept key): the reference adds `finfo.min` to every logit of such a row, so its probabilities round to uniform
    and autograd differentiates the softmax there, at uniform probabilities `u = 1/lk`:
    `dS_ij = (g_i . v_j - g_i . vbar) / lk` into the row's logits, `g_i / lk` into every value. `out` gets no gradient
    on those rows (a fused kernel's saved log-sum-exp rounds to the mask value there, which would weigh each key 1).
    The logits are `qf kf^T + logits` (either part may be None); public ops only, in backward only (nothing is added
    to the forward)."""

    @staticmethod
    def forward(ctx, out, value, empty, qf, kf, logits):
        # out (B, lq, H, dh); value (B, H, lk, dh); empty bool (B or 1, H or 1, lq); qf (B, H, lq, f), kf (B, H, lk, f)
        # or None; logits (.., H, lq, lk) (input-independent: (H, lq, lk) or (1, H, lq, lk)) or None.
        ctx.save_for_backward(value, empty, qf, kf)
        ctx.logits_shape = None if logits is None else logits.shape
        return torch.where(empty.transpose(1, 2)[..., None], value.mean(2)[:, None].to(out.dtype), out)

    @staticmethod
    def backward(ctx, grad):
        value, empty, qf, kf = ctx.saved_tensors
        lk = value.shape[2]
        rows = empty.transpose(1, 2)[..., None]  # (B or 1, lq, H or 1, 1)
        grad_out = torch.where(rows, 0.0, grad)
        g = torch.where(rows, grad, 0.0).transpose(1, 2).to(value.dtype)  # (B, H, lq, dh): the empty rows' gradient
        grad_value = (g.sum(2, keepdim=True) / lk).expand(value.shape)
        grad_qf = grad_kf = grad_logits = None
        if any(ctx.needs_input_grad[3:]):
            vbar = value.mean(2, keepdim=True)  # (B, H, 1, dh)
            shape = ctx.logits_shape
            if qf is None and kf is None and (len(shape) == 3 or shape[0] == 1):
                # logits shared by the batch: sum_b g_bi . v_bj as one matmul over (batch, head dim)
                batch, heads, lq, dh = g.shape
                dp = torch.matmul(g.permute(1, 2, 0, 3).reshape(heads, lq, batch * dh),
                                  value.permute(1, 0, 3, 2).reshape(heads, batch * dh, lk))
                grad_logits = ((dp - (g * vbar).sum((0, 3))[..., None]) / lk).reshape(shape)  # (H, lq, lk)
            else:
                ds = (torch.matmul(g, value.transpose(-1, -2)) - (g * vbar).sum(-1, keepdim=True)) / lk
                if ctx.needs_input_grad[5]:
                    grad_logits = ds.sum_to_size(shape)
                ds = ds.to(qf.dtype) if qf is not None else ds
                grad_qf = torch.matmul(ds, kf).sum_to_size(qf.shape) if ctx.needs_input_grad[3] else None
                grad_kf = torch.matmul(ds.transpose(-1, -2), qf).sum_to_size(kf.shape) if ctx.needs_input_grad[4] else None
        return grad_out, grad_value.to(value.dtype), None, grad_qf, grad_kf, grad_logits


def keyless_rows(bias, lq: int):
    """`(B or 1, H or 1, lq)` bool, on-device: the rows of a 4-D additive mask (MASKED where masked) that see no kept
    key."""
    return (bias.amax(-1) <= MASKED / 2).expand(bias.shape[0], bias.shape[1], lq)


def uniform_rows(out, value, empty, qf=None, kf=None, logits=None):
    """`out` `(B, lq, H, dh)` with the rows where `empty` `(B or 1, H or 1, lq)` holds attending uniformly over all keys,
    as in the reference, forward and backward (`_UniformRows`); the logits of those rows are `qf kf^T + logits`.
    Without gradients a plain `torch.where`."""
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (out, value, qf, kf, logits))
    if not grads:
        return torch.where(empty.transpose(1, 2)[..., None], value.mean(2)[:, None].to(out.dtype), out)
    return _UniformRows.apply(out, value, empty, qf, kf, logits)


def general_bias(attention_mask, dtype=torch.float32):
    """An arbitrary mask as an additive float mask with -inf for masked-out entries."""
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill_(
            ~attention_mask, MASKED
        )
    return attention_mask.to(dtype).clamp_min(MASKED)


class InputIndependentCache:
    """One tensor computed from a layer's parameters only, reused while they are unchanged (inference, frozen R):
    softmax(R[q0:q0+lq, :lk] + causal) of random / fixed random (`shared_probabilities`), or the mixed logits
    `sum_n alpha_n R_n + causal` of a mixture with per-example terms, e.g. random + vanilla (`shared_logits`).

    Valid while every source tensor is the same tensor with the same contents, as far as PyTorch tracks them: keyed on
    each source's `_version` (bumped by every in-place update through the tensor or a view or `.detach()` of it:
    optimizer steps, `load_state_dict`, `copy_`, `init`, EMA/SWA tools), its storage (held by the key, so that a
    new tensor -- `.to()`, `param.data = ...`, ZeRO-style swaps -- never matches even when the allocator hands out the
    old address again), data pointer, dtype and device, plus the caller's key (slice and causal flag). One entry per
    layer (the last slice used). A value built under `inference_mode` is not reused outside it.

    Not tracked by PyTorch, hence not seen here: in-place writes through `param.data` (its `.data` tensor has a
    version counter of its own). The cache is emptied by every `model.train()` / `model.eval()` (evaluation loops,
    Trainer's included, call them) and by `clear()`; after writing weights through `.data` in the middle of an
    evaluation, call one of them, or set `cache_input_independent = False`.
    """

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, sources, key, compute):
        key = tuple((t._version, t.untyped_storage(), t.data_ptr(), t.dtype, t.device) for t in sources) + tuple(key)
        value = self.value
        if self._same(key) and value is not None and (not value.is_inference() or torch.is_inference_mode_enabled()):
            return value
        with torch.no_grad():
            value = compute()
        self.key, self.value = key, value
        return value

    def _same(self, key) -> bool:
        if self.key is None or len(self.key) != len(key):
            return False
        for old, new in zip(self.key, key):
            if isinstance(old, tuple):  # a source: storages compared by identity (both alive: no address reuse)
                if old[1]._cdata != new[1]._cdata or old[:1] + old[2:] != new[:1] + new[2:]:
                    return False
            elif old != new:
                return False
        return True

    def clear(self):
        self.key = self.value = None


# Where the routes that lived in this file before 0.2.0's split moved (their old import path keeps working).
MOVED = {
    **dict.fromkeys(["shared_logits_attention", "generic_shared_attention", "shared_probabilities"], "route_shared"),
    **dict.fromkeys(["per_example_attention", "generic_per_example_attention", "shared_logits"], "route_per_example"),
    "feature_attention": "route_feature",
}


def __getattr__(name):
    """`from .synthesizer_fast import shared_logits_attention` (the path before the routes had files of their own)."""
    if name in MOVED:
        import importlib

        return getattr(importlib.import_module(f".{MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
