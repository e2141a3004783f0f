"""Fast paths of the synthesizer attention, each checked against the plain reference in `synthesizer_math.py`
(tests/test_fast_paths.py compares forward and gradients, with and without padding and causal offsets).

Three routes, chosen per variant by measurement (benchmarks/RESULTS.md):

* `shared_logits_attention` -- input-independent logits (random, fixed random, factorized random and mixtures of
  them). The logits and their softmax are computed **once per batch** and applied to every example with one
  matmul: `(H, lq, lk) @ (H, lk, B*dh)`. A per-example key-padding mask does not break this: with
  `P = softmax(S)` and key weights `w_b` (1 kept / 0 padded, or `exp(m - max m)` for an additive mask),
  `softmax(S + m_b) V_b = (P @ (w_b * V_b)) / (P @ w_b)`, so the kept-key sums ride along as one extra value
  column. Causal masks are shared by all examples and applied to `P` itself. Logits are recomputed in query
  chunks in backward (nothing of size l x l is saved); one matmul forward, two backward (sdpa: about seven).
* `per_example_attention` -- logits that differ per example *and* contain a full-rank input-independent term
  (random+vanilla, dense+random, ...) or attention dropout: an explicit query-chunked attention with a custom
  backward that recomputes each chunk from the saved log-sum-exp, so the full-rank term's gradient
  `sum_b dS_b` is accumulated chunk by chunk instead of going through sdpa's slow math path (a float mask that
  requires grad), and no l x l tensor per example is ever kept.
* `feature_attention` -- logits that are a dot product of per-example features: dense (`h . W2_j + b2_j`),
  factorized random (`R1_i . R2_j`), and their mixtures with vanilla (features concatenated, weights folded into
  the query side). Runs on sdpa's flash CPU kernel (O(l) memory); all features and the values are zero-padded
  to one head dim because the kernel falls back to the slow math path when q/k and v head dims differ.

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its sibling synthesizer_math.
"""

import torch
from torch.nn import functional as F

from .synthesizer_math import take

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


def cpu_tuned(t: torch.Tensor) -> bool:
    """Whether the CPU-tuned routes (custom autograd Functions, `_scaled_dot_product_flash_attention_for_cpu`,
    query chunking, the input-independent cache) may run for `t`: a CPU tensor in eager mode. Anywhere else -- CUDA
    or any other device, `meta`, and under `torch.compile` / `torch.export` tracing -- the device-generic routes run,
    built from public ops only (matmul, softmax, `F.scaled_dot_product_attention`), one graph without host reads."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def split_mask(attention_mask, causal: bool):
    """Classify a mask as `(kind, key_bias, causal)` from its shape alone: no values are read on the host, so that
    the classification is free of device syncs and graph breaks.

    kind "none": no mask. kind "key": a mask with a query dim of 1, `(B or 1, 1, 1, lk)` -- what
    `synthesizer_mask` hands over for padding -- the same for every query row; `key_bias` is its additive fp32 form
    `(B or 1, lk)` (0 kept, MASKED padded, or the float mask's values clamped at MASKED). In both, `causal` (the
    module's `is_causal` and more than one query, from the caller) adds the causal mask on top. kind "general":
    anything else -- a full `(B, 1, lq, lk)` mask (which already holds any causal part: `causal` is returned False),
    per-head masks, masks requiring grad; the caller uses a route that adds the full mask.
    """
    if attention_mask is None:
        return "none", None, causal
    m = attention_mask
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != 1 or m.requires_grad:
        return "general", None, False
    last = m[:, 0, 0, :]
    if m.dtype == torch.bool:
        bias = torch.zeros(last.shape, device=m.device).masked_fill_(~last, MASKED)
    else:
        bias = last.float().clamp_min(MASKED)
    return "key", bias, causal


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


# ----------------------------------------------------------------------------------- shared logits route


def _blocks(heads: int, lq: int, lk: int):
    """(heads slice, query rows) blocks of about CHUNK_ELEMENTS logits: whole heads when they fit (a head's block of
    a full-size R is then contiguous: no copy before the softmax, gradients written in place), else rows of one
    head."""
    per_head = lq * lk
    if per_head <= CHUNK_ELEMENTS:
        hc = max(1, CHUNK_ELEMENTS // per_head)
        for h in range(0, heads, hc):
            yield slice(h, min(heads, h + hc)), range(0, lq)
    else:
        rc = max(16, CHUNK_ELEMENTS // lk)
        for h in range(heads):
            for start in range(0, lq, rc):
                yield slice(h, h + 1), range(start, min(lq, start + rc))


def _shared_chunk_logits(r, r1, r2, q0, hs, rows, lk):
    """fp32 logits (heads in hs, rows, lk) of an input-independent term."""
    if r is not None:
        return _f32(r[hs, q0 + rows.start : q0 + rows.stop, :lk])
    return torch.matmul(_f32(r1[hs, q0 + rows.start : q0 + rows.stop]), _f32(r2[hs, :lk]).transpose(-1, -2))


class _SharedLogitsAttention(torch.autograd.Function):
    """out[b] = (P @ (w_b V_b)) / (P @ w_b) with P = softmax(S + causal) shared by the batch; see module doc."""

    @staticmethod
    def forward(ctx, value, key_weight, r, r1, r2, probs, q0, lq, causal, r_offset):
        # value (B, H, lk, dh); key_weight (B, lk) or None; either r (H, L, L) or r1, r2 (H, L, k) or probs (H, lq, lk).
        with torch.autocast(value.device.type, enabled=False):
            batch, heads, lk, dh = value.shape
            x = value.permute(1, 2, 0, 3)  # (H, lk, B, dh)
            if key_weight is not None:
                w = key_weight.to(value.dtype).t()[None, :, :, None].expand(heads, lk, batch, 1)
                x = torch.cat([x * w, w], dim=-1)
            width = x.shape[-1]
            x = x.reshape(heads, lk, batch * width)
            if probs is not None:
                y = torch.matmul(probs.to(value.dtype), x)
            else:
                y = x.new_empty(heads, lq, batch * width)
                for hs, rows in _blocks(heads, lq, lk):
                    s = _shared_chunk_logits(r, r1, r2, r_offset, hs, rows, lk)
                    if causal:
                        s = s + causal_bias(q0, rows, lk, s.device)
                    p = torch.softmax(s, dim=-1).to(value.dtype)
                    torch.matmul(p, x[hs], out=y[hs, rows.start : rows.stop])
            y = y.view(heads, lq, batch, width)
            if key_weight is not None:
                den = y[..., dh:].clamp_min(torch.finfo(y.dtype).tiny)
                out = y[..., :dh] / den
            else:
                den = None
                out = y
            out = out.permute(2, 1, 0, 3)  # (B, lq, H, dh)
        ctx.save_for_backward(x, r, r1, r2, probs, den, out)
        ctx.meta = (q0, lq, lk, causal, batch, heads, dh, width, key_weight is not None, r_offset)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, r, r1, r2, probs, den, out = ctx.saved_tensors
        q0, lq, lk, causal, batch, heads, dh, width, weighted, ro = ctx.meta
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.permute(2, 1, 0, 3).to(x.dtype)  # (H, lq, B, dh)
            if weighted:
                o = out.permute(2, 1, 0, 3)
                g = torch.cat([g / den, -(g * o).sum(-1, keepdim=True) / den], dim=-1)
            g = g.reshape(heads, lq, batch * width).contiguous()
            need_r = ctx.needs_input_grad[2] or ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
            grad_x = None
            grad_r = grad_r1 = grad_r2 = None
            if probs is not None:
                grad_x = torch.matmul(probs.to(x.dtype).transpose(-1, -2), g)
            else:
                grad_x = torch.zeros_like(x, dtype=_f32(x).dtype)
                if need_r and r is not None:
                    full = lq == r.shape[1] and lk == r.shape[2] and ro == 0
                    grad_r = (torch.empty if full else torch.zeros)(r.shape, dtype=_f32(r).dtype, device=r.device)
                if need_r and r1 is not None:
                    grad_r1 = torch.zeros(r1.shape, dtype=_f32(r1).dtype, device=r1.device)
                    grad_r2 = torch.zeros(r2.shape, dtype=_f32(r2).dtype, device=r2.device)
                for hs, rows in _blocks(heads, lq, lk):
                    s = _shared_chunk_logits(r, r1, r2, ro, hs, rows, lk)
                    if causal:
                        s = s + causal_bias(q0, rows, lk, s.device)
                    p = torch.softmax(s, dim=-1)
                    g_c = g[hs, rows.start : rows.stop]
                    if x.dtype == grad_x.dtype:
                        grad_x[hs].baddbmm_(p.transpose(-1, -2), g_c)
                    else:
                        grad_x[hs].add_(_f32(torch.matmul(p.to(x.dtype).transpose(-1, -2), g_c)))
                    if not need_r:
                        continue
                    gp = _f32(torch.matmul(g_c, x[hs].transpose(-1, -2)))  # (h, rows, lk)
                    gs = torch._softmax_backward_data(gp, p, -1, p.dtype)
                    if r is not None:
                        grad_r[hs, ro + rows.start : ro + rows.stop, :lk] = gs
                    else:
                        grad_r1[hs, ro + rows.start : ro + rows.stop] = torch.matmul(gs, _f32(r2[hs, :lk]))
                        grad_r2[hs, :lk].baddbmm_(gs.transpose(-1, -2), _f32(r1[hs, ro + rows.start : ro + rows.stop]))
            grad_x = grad_x.view(heads, lk, batch, width)
            if weighted:
                # x = [w * v, w]: w carries no gradient (masks are constants).
                grad_x = grad_x[..., :dh] * x.view(heads, lk, batch, width)[..., dh:]
            grad_value = grad_x.permute(2, 0, 1, 3).to(grad_out.dtype)
        if r is not None and grad_r is not None:
            grad_r = grad_r.to(r.dtype)
        return grad_value, None, grad_r, grad_r1, grad_r2, None, None, None, None, None


def shared_logits_attention(value, key_bias, causal, q0, lq, r=None, r1=None, r2=None, probs=None, r_offset=None):
    """Attention with logits shared by the whole batch (CPU-tuned, see `cpu_tuned`); returns `(B, lq, H, dh)`.

    Exactly one of `r` (full `(H, L, L)` logits parameter or buffer), `r1, r2` (`(H, L, k)` factors) or `probs`
    (softmax of the sliced, causally masked logits, e.g. cached) is given. `key_bias` `(B or 1, lk)` additive.
    Query `i` uses row `r_offset + i` of `r`/`r1` (default `q0`; 0 for logits already sliced). Rows without a
    kept key attend uniformly (`uniform_where_no_key`); a kept-key sum that underflows (padding probabilities
    ~e^87 above the kept keys') gives the same uniform row instead of the exact one.
    """
    r_offset = q0 if r_offset is None else r_offset
    weight = None
    if key_bias is not None:
        weight = torch.exp(key_bias - key_bias.amax(-1, keepdim=True).clamp_min(-1e30))
    out = _SharedLogitsAttention.apply(value, weight, r, r1, r2, probs, q0, lq, causal, r_offset)
    if key_bias is not None:
        out = uniform_where_no_key(out, value, key_bias, causal, q0)
    return out


def generic_shared_attention(value, key_bias, causal, q0, logits=None, probs=None):
    """The device-generic form of `shared_logits_attention`, public ops only (autograd does the backward):
    `P = softmax(logits + causal)` `(H, lq, lk)` once per batch, `out_b = (P @ (w_b V_b)) / (P @ w_b)` with key weights
    `w_b = exp(m_b - max m_b)`, as one `(H, lq, lk) @ (H, lk, B * (dh + 1))` matmul (a broadcasting
    `(H, lq, lk) @ (B, H, lk, dh)` would copy P B times, and its backward would build a `(B, H, lq, lk)` gradient to
    sum over the batch). `logits` `(H, lq, lk)` (sliced), or `probs` the softmax already taken.
    value `(B, H, lk, dh)` -> `(B, lq, H, dh)`, contiguous."""
    batch, heads, lk, dh = value.shape
    if probs is None:
        s = _f32(logits)  # no reshape: its view check would guard on lk == L under torch.export
        if causal:
            s = s + causal_bias(q0, slice(0, s.shape[-2]), lk, s.device)
        probs = torch.softmax(s, dim=-1)
    p = probs.to(value.dtype)
    v = value.permute(1, 2, 0, 3)  # (H, lk, B, dh)
    if key_bias is None:  # every row sees a key (under causality, key 0)
        # clone, not reshape: whether a reshape copies depends on the batch size, which export would guard on
        y = torch.matmul(p, v.clone(memory_format=torch.contiguous_format).view(heads, lk, batch * dh))
        return y.view(heads, -1, batch, dh).permute(2, 1, 0, 3).clone(memory_format=torch.contiguous_format)
    w = torch.exp(key_bias - key_bias.amax(-1, keepdim=True).clamp_min(MASKED)).to(value.dtype)  # (B, lk)
    w = w.t()[None, :, :, None].expand(heads, lk, batch, 1)
    x = torch.cat([v * w, w], dim=-1)  # (H, lk, B, dh + 1), contiguous
    y = torch.matmul(p, x.view(heads, lk, batch * (dh + 1))).view(heads, -1, batch, dh + 1)
    out = (y[..., :dh] / y[..., dh:].clamp_min(torch.finfo(y.dtype).tiny)).permute(2, 1, 0, 3)
    out = out.clone(memory_format=torch.contiguous_format)  # (B, lq, H, dh)
    empty = no_key_rows(key_bias, causal, q0, out.shape[1])[:, None]
    return uniform_rows(out, value, empty, logits=logits)


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


def shared_probabilities(r, q0, lq, lk, causal):
    """softmax(R[:, q0:q0+lq, :lk] + causal), fp32 `(H, lq, lk)`."""
    s = _f32(r[:, q0 : q0 + lq, :lk])
    if causal:
        s = s + causal_bias(q0, slice(0, lq), lk, s.device)
    return torch.softmax(s, dim=-1)


def shared_logits(alphas, shared, q0, lq, lk, causal):
    """`sum_n alphas[n] R_n[:, q0:q0+lq, :lk] + causal`, fp32 `(1, H, lq, lk)`: the input-independent part of a
    per-example route's logits."""
    return _PerExampleAttention._additive(_f32(alphas), None, shared, q0, range(0, lq), lk, causal)


# ---------------------------------------------------------------------------------- per-example route


class _PerExampleAttention(torch.autograd.Function):
    """Explicit attention over query chunks with logits `qf kf^T + sum_n alpha_n R_n + bias` per example."""

    @staticmethod
    def forward(ctx, qf, kf, value, alphas, bias, dropout, q0, lq, causal, cached, *shared):
        # qf (B, H, lq, f) / kf (B, H, lk, f) or None; shared: full (H, L, L) tensors; alphas (n, H) fp32;
        # bias: additive fp32 (B or 1, 1 or H, lq or 1, lk) or None; cached: `shared_logits(...)` or None.
        with torch.autocast(value.device.type, enabled=False):
            batch, heads, lk, dh = value.shape
            drops = []
            step = _chunk_rows(batch * heads, lk)
            if dropout == 0 and qf is not None and value.dtype in (torch.float32, torch.bfloat16):
                out, lse = _PerExampleAttention._flash_forward(
                    qf, kf, value, alphas, bias, shared, q0, lq, causal, cached
                )
            else:
                value = value.contiguous()
                out = value.new_empty(batch, heads, lq, dh)
                lse = torch.empty(batch, heads, lq, dtype=_f32(value).dtype, device=value.device)
                q3 = k3 = None
                if qf is not None:
                    q3 = qf.reshape(batch * heads, lq, qf.shape[-1])
                    k3 = kf.reshape(batch * heads, lk, kf.shape[-1])
                for start in range(0, lq, step):
                    rows = range(start, min(lq, start + step))
                    p = _PerExampleAttention._logits(q3, k3, alphas, bias, shared, q0, rows, lk, causal, batch, heads)
                    p = p.view(batch, heads, len(rows), lk)
                    m = p.amax(-1, keepdim=True)  # finite: masked logits are MASKED, not -inf
                    p.sub_(m).exp_()
                    z = p.sum(-1, keepdim=True)
                    p.div_(z)
                    lse[:, :, rows.start : rows.stop] = (m + z.log()).squeeze(-1)
                    if dropout > 0:
                        keep = torch.rand_like(p) >= dropout
                        drops.append(keep)
                        p = p * keep / (1 - dropout)
                    out[:, :, rows.start : rows.stop] = torch.matmul(p.to(value.dtype), value)
        ctx.save_for_backward(qf, kf, value, alphas, bias, lse, out, *drops, *shared)
        ctx.meta = (dropout, q0, lq, causal, len(drops), len(shared), step)
        return out

    @staticmethod
    def _flash_forward(qf, kf, value, alphas, bias, shared, q0, lq, causal, cached=None):
        """The forward on sdpa's flash CPU kernel, one call per query chunk: the chunk's shared terms, padding bias
        and causal mask become one float mask `(B or 1, H, rows, lk)` that requires no grad (so flash stays on, and
        nothing l x l outlives its chunk: a whole-length mask would be a fresh, page-faulted H*l^2 allocation every
        call); q/k/v zero-padded to one head dim. `cached` (the shared terms and causal mask, precomputed) replaces
        the shared terms: one call over all queries when there is no padding bias. Returns (out, lse)."""
        batch, heads, lk, dh = value.shape
        dtype = value.dtype
        width = max(qf.shape[-1], dh)
        qf = F.pad(qf, (0, width - qf.shape[-1])).to(dtype)
        kf = F.pad(kf, (0, width - kf.shape[-1])).to(dtype).contiguous()
        v = (F.pad(value, (0, width - dh)) if width > dh else value).contiguous()
        out = v.new_empty(batch, heads, lq, width)
        lse = torch.empty(batch, heads, lq, dtype=torch.float32, device=v.device)
        step = _chunk_rows((batch if bias is not None else 1) * heads, lk)
        if cached is not None and bias is None:
            step = lq
        for start in range(0, lq, step):
            rows = range(start, min(lq, start + step))
            if cached is None:
                mask = _PerExampleAttention._additive(alphas, bias, shared, q0, rows, lk, causal)
            else:
                mask = cached[:, :, rows.start : rows.stop]
                mask = mask if bias is None else mask + (bias if bias.shape[2] == 1 else bias[:, :, rows.start : rows.stop])
            o, m = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qf[:, :, rows.start : rows.stop], kf, v, attn_mask=None if mask is None else mask.to(dtype), scale=1.0
            )
            out[:, :, rows.start : rows.stop] = o
            lse[:, :, rows.start : rows.stop] = m
        return out[..., :dh], lse

    @staticmethod
    def _additive(alphas, bias, shared, q0, rows, lk, causal, start=None):
        """fp32 `sum_n alpha_n R_n[q0 + rows, :lk] + bias + causal + start` for query rows `rows`, broadcast to
        `(B or 1, H, rows, lk)`, a fresh tensor; None if there is no term at all. (Shared terms first, in place,
        and one broadcasting op at the end: a broadcasting addcmul is ~3x slower than these passes.)"""
        s = None
        for n, r in enumerate(shared):
            a, r_c = alphas[n].view(1, -1, 1, 1), _f32(r[None, :, q0 + rows.start : q0 + rows.stop, :lk])
            s = a * r_c if s is None else s.addcmul_(a, r_c)
        if bias is not None:
            b = bias if bias.shape[2] == 1 else bias[:, :, rows.start : rows.stop]
            s = b.clone() if s is None else s + b
        if causal:
            c = causal_bias(q0, rows, lk, alphas.device)
            s = c if s is None else s.add_(c)
        if start is not None:
            s = start if s is None else s + start
        return s

    @staticmethod
    def _logits(q3, k3, alphas, bias, shared, q0, rows, lk, causal, batch, heads, start=None):
        """fp32 logits `(B*H, rows, lk)` (plus `start`, e.g. minus the log-sum-exp); q3/k3 `(B*H, l, f)` or None."""
        shape = (batch, heads, len(rows), lk)
        s = _PerExampleAttention._additive(alphas, bias, shared, q0, rows, lk, causal, start)
        s = torch.zeros(shape, device=alphas.device) if s is None else s.expand(shape).contiguous()
        s = s.view(batch * heads, len(rows), lk)
        if q3 is not None:
            q_c, k_t = q3[:, rows.start : rows.stop], k3.transpose(1, 2)
            if q_c.dtype == s.dtype:
                s.baddbmm_(q_c, k_t)
            else:
                s.add_(torch.bmm(q_c, k_t))
        return s

    @staticmethod
    def backward(ctx, grad_out):
        qf, kf, value, alphas, bias, lse, out, *rest = ctx.saved_tensors
        dropout, q0, lq, causal, n_drops, n_shared, step = ctx.meta
        drops, shared = rest[:n_drops], rest[n_drops:]
        with torch.autocast(grad_out.device.type, enabled=False):
            batch, heads, lk, dh = value.shape
            bh = batch * heads
            g = grad_out.to(value.dtype).contiguous().view(bh, lq, dh)
            v3 = value.contiguous().view(bh, lk, dh)
            # D_i = sum_j P_ij dP_ij = dO_i . O_i (dropout included)
            d = (_f32(grad_out) * _f32(out)).sum(-1).view(bh, lq, 1)
            acc = _f32(value).dtype
            grad_v = torch.zeros(bh, lk, dh, dtype=acc, device=value.device)
            if qf is not None:
                f = qf.shape[-1]
                q3 = qf.contiguous().view(bh, lq, f)
                k3 = kf.contiguous().view(bh, lk, f)
                grad_qf = torch.empty(bh, lq, f, dtype=acc, device=qf.device)
                grad_kf = torch.zeros(bh, lk, f, dtype=acc, device=kf.device)
            else:
                q3 = k3 = grad_qf = grad_kf = None
            need_shared = any(ctx.needs_input_grad[10:]) or ctx.needs_input_grad[3]
            grad_shared = []
            for n, r in enumerate(shared):
                if ctx.needs_input_grad[10 + n]:
                    full = lq == r.shape[1] and lk == r.shape[2] and q0 == 0
                    grad_shared.append((torch.empty if full else torch.zeros)(r.shape, dtype=_f32(r).dtype, device=r.device))
                else:
                    grad_shared.append(None)
            grad_alphas = torch.zeros_like(alphas) if ctx.needs_input_grad[3] else None
            # Rows that see no key (all logits MASKED) attend uniformly, but their log-sum-exp MASKED + log(lk)
            # rounds to MASKED: recomputing exp(s - lse) would weigh each key 1 instead of 1/lk.
            dead = lse.view(bh, lq, 1) <= MASKED / 2
            dead = dead if bool(dead.any()) else None
            for c, start in enumerate(range(0, lq, step)):
                rows = range(start, min(lq, start + step))
                neg_lse = lse[:, :, rows.start : rows.stop, None].neg()
                p = _PerExampleAttention._logits(
                    q3, k3, alphas, bias, shared, q0, rows, lk, causal, batch, heads, neg_lse
                ).exp_()  # (B*H, rows, lk)
                if dead is not None:
                    p = p.masked_fill_(dead[:, rows.start : rows.stop], 1.0 / lk)
                g_c = g[:, rows.start : rows.stop]
                gp = _f32(torch.bmm(g_c, v3.transpose(1, 2)))
                if dropout > 0:
                    keep = drops[c].view(bh, len(rows), lk)
                    pd = (p * keep / (1 - dropout)).to(value.dtype)
                    grad_v.baddbmm_(pd.transpose(1, 2), g_c) if acc == value.dtype else grad_v.add_(
                        torch.bmm(pd.transpose(1, 2), g_c))
                    gp.mul_(keep).div_(1 - dropout)
                elif acc == value.dtype:
                    grad_v.baddbmm_(p.transpose(1, 2), g_c)
                else:
                    grad_v.add_(torch.bmm(p.to(value.dtype).transpose(1, 2), g_c))
                gs = gp.sub_(d[:, rows.start : rows.stop]).mul_(p)  # (B*H, rows, lk)
                if q3 is not None:
                    gs_mm = gs.to(q3.dtype)
                    grad_qf[:, rows.start : rows.stop] = torch.bmm(gs_mm, k3)
                    if acc == q3.dtype:
                        grad_kf.baddbmm_(gs_mm.transpose(1, 2), q3[:, rows.start : rows.stop])
                    else:
                        grad_kf.add_(torch.bmm(gs_mm.transpose(1, 2), q3[:, rows.start : rows.stop]))
                if n_shared and need_shared:
                    gsum = gs.view(batch, heads, len(rows), lk)
                    gsum = gsum[0] if batch == 1 else gsum.sum(0)  # (H, rows, lk)
                    for n, r in enumerate(shared):
                        if grad_shared[n] is not None:
                            torch.mul(gsum, alphas[n].view(-1, 1, 1),
                                      out=grad_shared[n][:, q0 + rows.start : q0 + rows.stop, :lk])
                        if grad_alphas is not None:  # sum_ij dS_ij R_ij per head (vecdot: no product tensor)
                            r_c = _f32(r[:, q0 + rows.start : q0 + rows.stop, :lk])
                            grad_alphas[n] += torch.linalg.vecdot(gsum.reshape(heads, -1), r_c.reshape(heads, -1))
        grads_shared = [gr.to(r.dtype) if gr is not None else None for gr, r in zip(grad_shared, shared)]
        return (
            grad_qf.view(qf.shape).to(qf.dtype) if qf is not None else None,
            grad_kf.view(kf.shape).to(kf.dtype) if kf is not None else None,
            grad_v.view(value.shape).to(value.dtype),
            grad_alphas,
            None,
            None,
            None,
            None,
            None,
            None,
            *grads_shared,
        )


def generic_per_example_attention(qf, kf, value, alphas, shared, bias, dropout, q0, lq, causal):
    """The device-generic form of `per_example_attention`: `F.scaled_dot_product_attention` with the mixed
    input-independent terms, padding and causal mask as its additive float mask (`sum_n alphas[n] R_n + bias +
    causal`, fp32 built, cast to the value dtype); autograd (or the device's sdpa kernel) does the backward. q/k
    features zero-padded to the value head dim (zeros when there are none); rows without a kept key as the reference,
    forward and backward (`uniform_rows`). Same arguments; returns `(B, lq, H, dh)`."""
    batch, heads, lk, dh = value.shape
    mix = None  # the input-independent logits
    for n, r in enumerate(shared):
        term = _f32(alphas[n]).view(1, -1, 1, 1) * _f32(take(take(r, 1, q0, lq), 2, 0, lk))
        mix = term if mix is None else mix + term
    constant = bias  # padding and causality
    if causal:
        c = causal_bias(q0, slice(0, lq), lk, value.device)
        constant = c if constant is None else constant + c
    mask = mix if constant is None else constant if mix is None else mix + constant
    q, k = (value.new_zeros(batch, heads, lq, 1), value.new_zeros(batch, heads, lk, 1)) if qf is None else (qf, kf)
    width = max(q.shape[-1], k.shape[-1], dh)
    q = F.pad(q, (0, width - q.shape[-1])).to(value.dtype)
    k = F.pad(k, (0, width - k.shape[-1])).to(value.dtype)
    v = F.pad(value, (0, width - dh))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if mask is None else mask.to(value.dtype), dropout_p=dropout, scale=1.0
    )
    out = out[..., :dh].transpose(1, 2)
    if bias is not None:  # rows without a kept key: the reference's uniform attention, forward and backward
        out = uniform_rows(out, value, keyless_rows(constant, lq), qf, kf, mix)
    # A copy in (B, lq, H, dh) order, always recorded: `.contiguous()` is dropped from an exported graph where sdpa's
    # kernel already returned that layout, and ONNX's decomposition of sdpa returns another, which the caller's
    # `reshape` (recorded as a view) then cannot view.
    return out.clone(memory_format=torch.contiguous_format)


def per_example_attention(qf, kf, value, alphas, shared, bias, dropout, q0, lq, causal, cached=None):
    """`softmax(qf kf^T + sum_n alphas[n, h] R_n[q0:q0+lq, :lk] + bias (+ causal)) V`, dropout on the
    probabilities, per example, in query chunks; returns `(B, lq, H, dh)`.

    qf (B, H, lq, f) and kf (B, H, lk, f) may be None; `shared` a list of full `(H, L, L)` tensors; `alphas`
    `(n, H)` fp32 (may require grad); `bias` an additive fp32 mask broadcastable to `(B, H, lq, lk)`. `cached`:
    `shared_logits(alphas, shared, q0, lq, lk, causal)` computed earlier (inference), or None.
    """
    heads = value.shape[1]
    if alphas is None:
        alphas = torch.zeros(0, heads, device=value.device)
    alphas = _f32(alphas).expand(len(shared), heads)
    out = _PerExampleAttention.apply(qf, kf, value, alphas, bias, float(dropout), q0, lq, causal, cached, *shared)
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------------------- feature route


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
