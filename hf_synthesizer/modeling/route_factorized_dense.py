"""Factorized dense attention (Tay et al. 2021, section 3.1.2) as one autograd Function beside its plain reference.

The logits of query i are the outer product of its two factors, `S_ij = A_i[j mod a] * B_i[j // a]` (`a * b = L`,
columns cut to `lk`): an `(lq, lk)` table per example and head with no low-dimensional form, so no fused kernel
applies. `factorized_dense_attention` runs it in query chunks: forward keeps only the output (plus the dropout
keep-mask), backward recomputes each chunk's probabilities from the factors (one fused softmax) and turns `dS` back
into `dA`, `dB` by two contractions, `dA_i[p] = sum_q dS_i[q a + p] B_i[q]`, `dB_i[q] = sum_p dS_i[q a + p] A_i[p]`.
Against the chunked reference under activation checkpointing (its previous route) it skips the second forward in
backward (a second dropout draw and softmax per chunk) and every autograd copy of the logits (docs/attention_core.md,
"Factorized dense"). `factorized_dense_reference` is the plain math it is tested against (tests/test_routes.py),
forward and backward.

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its siblings synthesizer_fast
(the chunk size every chunked route shares) and synthesizer_math (the factor product, `factor_logits`).
"""

import torch

from .synthesizer_fast import CHUNK_ELEMENTS
from .synthesizer_math import factor_logits


def factorized_dense_reference(a, b, value, bias, dropout_keep=None, dropout=0.0):
    """The plain math: `softmax(S + bias) V` with `S = factor_logits(a, b, lk)`, dropout applied with the given keep
    mask. a `(B, H, lq, a)`, b `(B, H, lq, b)`, value `(B, H, lk, dh)`, bias additive broadcastable to
    `(B, H, lq, lk)` or None -> `(B, H, lq, dh)`."""
    s = factor_logits(a, b, value.shape[2])
    p = torch.softmax(s if bias is None else s + bias, dim=-1)
    if dropout_keep is not None:
        p = p * dropout_keep / (1 - dropout)
    return torch.matmul(p.to(value.dtype), value)


def _chunk_logits(a, b, bias, rows: range, lk: int) -> torch.Tensor:
    """fp32 (fp64 stays) logits plus bias of query rows `rows`: `(B, H, len(rows), lk)`, a fresh tensor."""
    s = factor_logits(a[:, :, rows.start : rows.stop], b[:, :, rows.start : rows.stop], lk)
    s = s.float() if s.dtype not in (torch.float32, torch.float64) else s
    if bias is not None:
        s = s + (bias if bias.shape[2] == 1 else bias[:, :, rows.start : rows.stop])
    return s


class FactorizedDenseAttention(torch.autograd.Function):
    """`factorized_dense_reference` in query chunks, probabilities recomputed in backward (see module doc)."""

    @staticmethod
    def forward(ctx, a, b, value, bias, dropout: float, step: int):
        with torch.autocast(value.device.type, enabled=False):
            batch, heads, lk, dh = value.shape
            lq = a.shape[2]
            out = value.new_empty(batch, heads, lq, dh)
            keeps = []
            for start in range(0, lq, step):
                rows = range(start, min(lq, start + step))
                p = torch.softmax(_chunk_logits(a, b, bias, rows, lk), dim=-1)
                if dropout > 0:
                    keep = torch.rand_like(p) >= dropout
                    keeps.append(keep)
                    p.mul_(keep).div_(1 - dropout)
                out[:, :, rows.start : rows.stop] = torch.matmul(p.to(value.dtype), value)
        ctx.save_for_backward(a, b, value, bias, out, *keeps)
        ctx.meta = (dropout, step)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, b, value, bias, out, *keeps = ctx.saved_tensors
        dropout, step = ctx.meta
        with torch.autocast(grad_out.device.type, enabled=False):
            lk, lq = value.shape[2], a.shape[2]
            acc = torch.float64 if a.dtype == torch.float64 else torch.float32
            g = grad_out.to(value.dtype)
            d = (g.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # D_i = sum_j P_ij dP_ij
            grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
            grad_v = torch.zeros(value.shape, dtype=acc, device=value.device)
            width = a.shape[-1] * b.shape[-1]
            for c, start in enumerate(range(0, lq, step)):
                rows = range(start, min(lq, start + step))
                # the probabilities again (one fused softmax; a row with every key masked is uniform, as in forward)
                p = torch.softmax(_chunk_logits(a, b, bias, rows, lk), dim=-1)
                g_c = g[:, :, rows.start : rows.stop]
                gp = torch.matmul(g_c, value.transpose(-1, -2)).to(p.dtype)  # dP
                pd = p
                if dropout > 0:
                    keep = keeps[c]
                    pd = p * keep / (1 - dropout)
                    gp.mul_(keep).div_(1 - dropout)
                grad_v += torch.matmul(pd.transpose(-1, -2), g_c.to(pd.dtype))
                ds = gp.sub_(d[:, :, rows.start : rows.stop]).mul_(p)  # dS, (B, H, rows, lk)
                if lk < width:
                    ds = torch.nn.functional.pad(ds, (0, width - lk))
                ds = ds.unflatten(-1, (b.shape[-1], a.shape[-1]))  # (B, H, rows, b, a): [q, p] is column q a + p
                a_c, b_c = a[:, :, rows.start : rows.stop], b[:, :, rows.start : rows.stop]
                grad_a[:, :, rows.start : rows.stop] = torch.matmul(b_c[..., None, :].to(ds.dtype), ds).squeeze(-2)
                grad_b[:, :, rows.start : rows.stop] = torch.matmul(ds, a_c[..., :, None].to(ds.dtype)).squeeze(-1)
        return grad_a, grad_b, grad_v.to(value.dtype), None, None, None


def factorized_dense_attention(a, b, value, bias=None, dropout: float = 0.0) -> torch.Tensor:
    """Factorized dense attention: a `(B, H, lq, a)`, b `(B, H, lq, b)` (the factors, `a * b = L >= lk`), value
    `(B, H, lk, dh)`, bias an additive fp32 mask `(B or 1, 1, lq or 1, lk)` (MASKED where masked, causal part
    included) or None, dropout on the probabilities (pass 0.0 outside training). Returns `(B, lq, H, dh)`."""
    batch, heads, lk, _ = value.shape
    step = max(16, CHUNK_ELEMENTS // max(1, batch * heads * lk))
    return FactorizedDenseAttention.apply(a, b, value, bias, float(dropout), step).transpose(1, 2)
