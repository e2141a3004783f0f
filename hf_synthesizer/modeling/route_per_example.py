"""The per-example route: logits that differ per example *and* contain a full-rank input-independent term
(random+vanilla, dense+random, ...), or attention dropout. An explicit query-chunked attention with its own backward
that recomputes each chunk from the saved log-sum-exp, so the full-rank term's gradient `sum_b dS_b` is accumulated
chunk by chunk instead of going through sdpa's slow math path (a float mask that requires grad), and no l x l tensor
per example is kept. `generic_per_example_attention` is the same math in public ops (device-generic route).

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .synthesizer_fast import MASKED, _chunk_rows, _f32, causal_bias, keyless_rows, uniform_rows
from .synthesizer_math import take

class Terms(NamedTuple):
    """The parts of a per-example route's logits besides the features `qf kf^T`: `alphas` `(n, H)` fp32 weights of
    the full-rank `shared` terms (full `(H, L, L)` tensors, rows from `q0`), an additive fp32 `bias` broadcastable to
    `(B, H, lq, lk)` or None, and whether to add the `causal` mask."""

    alphas: torch.Tensor
    bias: torch.Tensor | None
    shared: tuple
    q0: int
    causal: bool


def additive_terms(terms: Terms, rows: range, lk: int, start=None) -> torch.Tensor | None:
    """fp32 `sum_n alpha_n R_n[q0 + rows, :lk] + bias + causal + start` for query rows `rows`, broadcast to
    `(B or 1, H, rows, lk)`, a fresh tensor; None if there is no term at all. (Shared terms first, in place, and one
    broadcasting op at the end: a broadcasting addcmul is ~3x slower than these passes.)"""
    s, q0 = None, terms.q0
    for n, r in enumerate(terms.shared):
        a, r_c = terms.alphas[n].view(1, -1, 1, 1), _f32(r[None, :, q0 + rows.start : q0 + rows.stop, :lk])
        s = a * r_c if s is None else s.addcmul_(a, r_c)
    if terms.bias is not None:
        bias = terms.bias
        b = bias if bias.shape[2] == 1 else bias[:, :, rows.start : rows.stop]
        s = b.clone() if s is None else s + b
    if terms.causal:
        c = causal_bias(q0, rows, lk, terms.alphas.device)
        s = c if s is None else s.add_(c)
    if start is not None:
        s = start if s is None else s + start
    return s


def chunk_logits(q3, k3, terms: Terms, rows: range, shape, start=None) -> torch.Tensor:
    """fp32 logits `(B*H, rows, lk)` of query rows `rows` (plus `start`, e.g. minus the log-sum-exp); q3/k3
    `(B*H, l, f)` or None; shape `(B, H, len(rows), lk)`."""
    batch, heads, _, lk = shape
    s = additive_terms(terms, rows, lk, start)
    s = torch.zeros(shape, device=terms.alphas.device) if s is None else s.expand(shape).contiguous()
    s = s.view(batch * heads, len(rows), lk)
    if q3 is not None:
        q_c, k_t = q3[:, rows.start : rows.stop], k3.transpose(1, 2)
        if q_c.dtype == s.dtype:
            s.baddbmm_(q_c, k_t)
        else:
            s.add_(torch.bmm(q_c, k_t))
    return s


class _PerExampleAttention(torch.autograd.Function):
    """Explicit attention over query chunks with logits `qf kf^T + sum_n alpha_n R_n + bias` per example; forward
    keeps the output and the log-sum-exp, backward recomputes each chunk's probabilities from them."""

    @staticmethod
    def forward(ctx, qf, kf, value, alphas, bias, dropout, q0, lq, causal, cached, *shared):
        # qf (B, H, lq, f) / kf (B, H, lk, f) or None; shared: full (H, L, L) tensors; alphas (n, H) fp32;
        # bias: additive fp32 (B or 1, 1 or H, lq or 1, lk) or None; cached: `shared_logits(...)` or None.
        terms = Terms(alphas, bias, shared, q0, causal)
        with torch.autocast(value.device.type, enabled=False):
            batch, heads, lk, _ = value.shape
            step = _chunk_rows(batch * heads, lk)
            if dropout == 0 and qf is not None and value.dtype in (torch.float32, torch.bfloat16):
                (out, lse), drops = flash_forward(qf, kf, value, terms, lq, cached), []
            else:
                out, lse, drops = chunked_forward(qf, kf, value.contiguous(), terms, lq, dropout, step)
        ctx.save_for_backward(qf, kf, value, alphas, bias, lse, out, *drops, *shared)
        ctx.meta = (dropout, q0, lq, causal, len(drops), len(shared), step)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qf, kf, value, alphas, bias, lse, out, *rest = ctx.saved_tensors
        dropout, q0, lq, causal, n_drops, n_shared, step = ctx.meta
        drops, shared = rest[:n_drops], rest[n_drops:]
        terms = Terms(alphas, bias, shared, q0, causal)
        with torch.autocast(grad_out.device.type, enabled=False):
            batch, heads, lk, dh = value.shape
            bh = batch * heads
            g = grad_out.to(value.dtype).contiguous().view(bh, lq, dh)
            v3 = value.contiguous().view(bh, lk, dh)
            d = (_f32(grad_out) * _f32(out)).sum(-1).view(bh, lq, 1)  # D_i = sum_j P_ij dP_ij = dO_i . O_i
            grads = gradient_buffers(ctx.needs_input_grad, qf, kf, value, terms, lq)
            # Rows that see no key (all logits MASKED) attend uniformly, but their log-sum-exp MASKED + log(lk)
            # rounds to MASKED: recomputing exp(s - lse) would weigh each key 1 instead of 1/lk.
            dead = lse.view(bh, lq, 1) <= MASKED / 2
            dead = dead if bool(dead.any()) else None
            for c, start in enumerate(range(0, lq, step)):
                rows = range(start, min(lq, start + step))
                neg_lse = lse[:, :, rows.start : rows.stop, None].neg()
                p = chunk_logits(grads["q3"], grads["k3"], terms, rows, (batch, heads, len(rows), lk), neg_lse).exp_()
                if dead is not None:
                    p = p.masked_fill_(dead[:, rows.start : rows.stop], 1.0 / lk)
                keep = drops[c].view(bh, len(rows), lk) if dropout > 0 else None
                gs = value_gradient_and_ds(p, g[:, rows.start : rows.stop], v3, d[:, rows.start : rows.stop], keep,
                                           dropout, grads["value"])
                feature_gradients(gs, rows, grads)
                if n_shared:
                    shared_gradients(gs.view(batch, heads, len(rows), lk), terms, rows, grads)
        grad_qf, grad_kf, grad_value, grads_shared = input_gradients(grads, qf, kf, value, shared)
        return (grad_qf, grad_kf, grad_value, grads["alphas"], None, None, None, None, None, None, *grads_shared)


def chunked_forward(qf, kf, value, terms: Terms, lq: int, dropout: float, step: int):
    """The forward in query chunks of `step` rows, softmax by hand (fp32, or fp64), dropout keep-masks drawn per
    chunk. Returns `(out (B, H, lq, dh), lse (B, H, lq), keep-masks)`."""
    batch, heads, lk, dh = value.shape
    out = value.new_empty(batch, heads, lq, dh)
    lse = torch.empty(batch, heads, lq, dtype=_f32(value).dtype, device=value.device)
    q3 = k3 = None
    if qf is not None:
        q3 = qf.reshape(batch * heads, lq, qf.shape[-1])
        k3 = kf.reshape(batch * heads, lk, kf.shape[-1])
    drops = []
    for start in range(0, lq, step):
        rows = range(start, min(lq, start + step))
        p = chunk_logits(q3, k3, terms, rows, (batch, heads, len(rows), lk)).view(batch, heads, len(rows), lk)
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
    return out, lse, drops
def flash_forward(qf, kf, value, terms: Terms, lq: int, cached=None):
    """The forward on sdpa's flash CPU kernel, one call per query chunk: the chunk's shared terms, padding bias and
    causal mask become one float mask `(B or 1, H, rows, lk)` that requires no grad (so flash stays on, and nothing
    l x l outlives its chunk: a whole-length mask would be a fresh, page-faulted H*l^2 allocation every call); q/k/v
    zero-padded to one head dim. `cached` (the shared terms and causal mask, precomputed) replaces the shared terms:
    one call over all queries when there is no padding bias. Returns (out, lse)."""
    batch, heads, lk, dh = value.shape
    dtype, bias = value.dtype, terms.bias
    width = max(qf.shape[-1], dh)
    qf = F.pad(qf, (0, width - qf.shape[-1])).to(dtype)
    kf = F.pad(kf, (0, width - kf.shape[-1])).to(dtype).contiguous()
    v = (F.pad(value, (0, width - dh)) if width > dh else value).contiguous()
    out = v.new_empty(batch, heads, lq, width)
    lse = torch.empty(batch, heads, lq, dtype=torch.float32, device=v.device)
    step = lq if cached is not None and bias is None else _chunk_rows((batch if bias is not None else 1) * heads, lk)
    for start in range(0, lq, step):
        rows = range(start, min(lq, start + step))
        if cached is None:
            mask = additive_terms(terms, rows, lk)
        else:
            mask = cached[:, :, rows.start : rows.stop]
            mask = mask if bias is None else mask + (bias if bias.shape[2] == 1 else bias[:, :, rows.start : rows.stop])
        o, m = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qf[:, :, rows.start : rows.stop], kf, v, attn_mask=None if mask is None else mask.to(dtype), scale=1.0
        )
        out[:, :, rows.start : rows.stop] = o
        lse[:, :, rows.start : rows.stop] = m
    return out[..., :dh], lse


def gradient_buffers(needs_input_grad, qf, kf, value, terms: Terms, lq: int) -> dict:
    """What backward accumulates into, by name: "value", "qf", "kf" (`(B*H, l, f)`, with the features themselves as
    "q3", "k3"; None without features), "shared" (one per full-rank term, None where no gradient is needed: whole
    when the call covers all of R, so `empty` suffices), "alphas" (or None); "acc" the accumulation dtype."""
    batch, heads, lk, dh = value.shape
    bh, acc = batch * heads, _f32(value).dtype
    grads = {"acc": acc, "q3": None, "k3": None, "qf": None, "kf": None}
    grads["value"] = torch.zeros(bh, lk, dh, dtype=acc, device=value.device)
    if qf is not None:
        f = qf.shape[-1]
        grads["q3"], grads["k3"] = qf.contiguous().view(bh, lq, f), kf.contiguous().view(bh, lk, f)
        grads["qf"] = torch.empty(bh, lq, f, dtype=acc, device=qf.device)
        grads["kf"] = torch.zeros(bh, lk, f, dtype=acc, device=kf.device)
    grads["shared"] = []
    for n, r in enumerate(terms.shared):
        whole = lq == r.shape[1] and lk == r.shape[2] and terms.q0 == 0
        new = torch.empty if whole else torch.zeros
        grads["shared"].append(new(r.shape, dtype=_f32(r).dtype, device=r.device) if needs_input_grad[10 + n] else None)
    grads["alphas"] = torch.zeros_like(terms.alphas) if needs_input_grad[3] else None
    return grads


def value_gradient_and_ds(p, g_c, v3, d_c, keep, dropout: float, grad_v):
    """One chunk of backward: adds `P^T dO` (dropout applied) into `grad_v` `(B*H, lk, dh)` and returns the logits'
    gradient `dS = P * (dP - D)` `(B*H, rows, lk)`. p: the chunk's probabilities; g_c: its `dO`; d_c: its `D`; keep:
    its dropout keep-mask or None."""
    gp = _f32(torch.bmm(g_c, v3.transpose(1, 2)))  # dP
    pd = p
    if keep is not None:
        pd = p * keep / (1 - dropout)
        gp.mul_(keep).div_(1 - dropout)
    pd = pd.to(v3.dtype)
    if grad_v.dtype == v3.dtype:
        grad_v.baddbmm_(pd.transpose(1, 2), g_c)
    else:
        grad_v.add_(torch.bmm(pd.transpose(1, 2), g_c))
    return gp.sub_(d_c).mul_(p)


def feature_gradients(gs, rows: range, grads: dict) -> None:
    """Adds one chunk's `dS` into the features' gradients: `dqf = dS kf`, `dkf += dS^T qf`."""
    q3, k3 = grads["q3"], grads["k3"]
    if q3 is None:
        return
    gs_mm = gs.to(q3.dtype)
    grads["qf"][:, rows.start : rows.stop] = torch.bmm(gs_mm, k3)
    if grads["acc"] == q3.dtype:
        grads["kf"].baddbmm_(gs_mm.transpose(1, 2), q3[:, rows.start : rows.stop])
    else:
        grads["kf"].add_(torch.bmm(gs_mm.transpose(1, 2), q3[:, rows.start : rows.stop]))


def shared_gradients(gs, terms: Terms, rows: range, grads: dict) -> None:
    """One chunk's `dS` `(B, H, rows, lk)` into the full-rank terms (`alpha_n sum_b dS_b`, written into their rows)
    and their weights (`sum_ij dS_ij R_ij` per head)."""
    if grads["alphas"] is None and all(g is None for g in grads["shared"]):
        return
    batch, heads, _, lk = gs.shape
    gsum = gs[0] if batch == 1 else gs.sum(0)  # (H, rows, lk)
    q0 = terms.q0
    for n, r in enumerate(terms.shared):
        if grads["shared"][n] is not None:
            rows_of_r = grads["shared"][n][:, q0 + rows.start : q0 + rows.stop, :lk]
            torch.mul(gsum, terms.alphas[n].view(-1, 1, 1), out=rows_of_r)
        if grads["alphas"] is not None:  # (vecdot: no product tensor)
            r_c = _f32(r[:, q0 + rows.start : q0 + rows.stop, :lk])
            grads["alphas"][n] += torch.linalg.vecdot(gsum.reshape(heads, -1), r_c.reshape(heads, -1))


def input_gradients(grads: dict, qf, kf, value, shared):
    """`(grad_qf, grad_kf, grad_value, [grad of each shared term])` in the inputs' shapes and dtypes."""
    grad_qf = grads["qf"].view(qf.shape).to(qf.dtype) if qf is not None else None
    grad_kf = grads["kf"].view(kf.shape).to(kf.dtype) if kf is not None else None
    grads_shared = [gr.to(r.dtype) if gr is not None else None for gr, r in zip(grads["shared"], shared)]
    return grad_qf, grad_kf, grads["value"].view(value.shape).to(value.dtype), grads_shared


def generic_per_example_attention(qf, kf, value, terms: Terms, lq: int, dropout: float):
    """The device-generic form of `per_example_attention`: `F.scaled_dot_product_attention` with the mixed
    input-independent terms, padding and causal mask as its additive float mask (`sum_n alphas[n] R_n + bias +
    causal`, fp32 built, cast to the value dtype); autograd (or the device's sdpa kernel) does the backward. q/k
    features zero-padded to the value head dim (zeros when there are none); rows without a kept key as the reference,
    forward and backward (`uniform_rows`). Same arguments; returns `(B, lq, H, dh)`."""
    batch, heads, lk, dh = value.shape
    alphas, bias, shared, q0, causal = terms
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


def per_example_attention(qf, kf, value, terms: Terms, lq: int, dropout: float, cached=None):
    """`softmax(qf kf^T + sum_n alphas[n, h] R_n[q0:q0+lq, :lk] + bias (+ causal)) V`, dropout on the
    probabilities, per example, in query chunks; returns `(B, lq, H, dh)`.

    qf (B, H, lq, f) and kf (B, H, lk, f) may be None; `terms` (see `Terms`): `shared` full `(H, L, L)` tensors,
    `alphas` `(n, H)` (may require grad; None without shared terms), `bias` an additive fp32 mask broadcastable to
    `(B, H, lq, lk)`. `cached`: `shared_logits(alphas, shared, q0, lq, lk, causal)` computed earlier (inference), or
    None.
    """
    heads, shared = value.shape[1], tuple(terms.shared)
    alphas = terms.alphas if terms.alphas is not None else torch.zeros(0, heads, device=value.device)
    alphas = _f32(alphas).expand(len(shared), heads)
    out = _PerExampleAttention.apply(
        qf, kf, value, alphas, terms.bias, float(dropout), terms.q0, lq, terms.causal, cached, *shared
    )
    return out.transpose(1, 2)


def shared_logits(alphas, shared, q0, lq, lk, causal):
    """`sum_n alphas[n] R_n[:, q0:q0+lq, :lk] + causal`, fp32 `(1, H, lq, lk)`: the input-independent part of a
    per-example route's logits."""
    return additive_terms(Terms(_f32(alphas), None, tuple(shared), q0, causal), range(0, lq), lk)
