"""The per-example route: logits that differ per example *and* contain a full-rank input-independent term
(random+vanilla, dense+random, ...), or attention dropout. An explicit query-chunked attention with its own backward
that recomputes each chunk from the saved log-sum-exp, so the full-rank term's gradient `sum_b dS_b` is accumulated
chunk by chunk instead of going through sdpa's slow math path (a float mask that requires grad), and no l x l tensor
per example is kept. `generic_per_example_attention` is the same math in public ops (device-generic route).

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

import torch
from torch.nn import functional as F

from .synthesizer_fast import MASKED, _chunk_rows, _f32, causal_bias, keyless_rows, uniform_rows
from .synthesizer_math import take

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


def shared_logits(alphas, shared, q0, lq, lk, causal):
    """`sum_n alphas[n] R_n[:, q0:q0+lq, :lk] + causal`, fp32 `(1, H, lq, lk)`: the input-independent part of a
    per-example route's logits."""
    return _PerExampleAttention._additive(_f32(alphas), None, shared, q0, range(0, lq), lk, causal)
