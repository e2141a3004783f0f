"""The shared route: logits the same for every example (random, fixed random, factorized random, their mixtures, T5's
position bias) computed once per batch and applied to all examples with one matmul `(H, lq, lk) @ (H, lk, B*dh)`.

A per-example key-padding mask does not break this: with `P = softmax(S)` and key weights `w_b` (1 kept / 0 padded, or
`exp(m - max m)` for an additive mask), `softmax(S + m_b) V_b = (P @ (w_b * V_b)) / (P @ w_b)`, so the kept-key sums
ride along as one extra value column. Causal masks are shared by all examples and applied to `P` itself. Logits are
recomputed in query chunks in backward (nothing of size l x l is saved). `generic_shared_attention` is the same math
in public ops (the device-generic route, and what the Function is tested against).

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

import torch

from .synthesizer_fast import CHUNK_ELEMENTS, MASKED, _f32, causal_bias, no_key_rows, uniform_rows, uniform_where_no_key

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


def shared_probabilities(r, q0, lq, lk, causal):
    """softmax(R[:, q0:q0+lq, :lk] + causal), fp32 `(H, lq, lk)`."""
    s = _f32(r[:, q0 : q0 + lq, :lk])
    if causal:
        s = s + causal_bias(q0, slice(0, lq), lk, s.device)
    return torch.softmax(s, dim=-1)
