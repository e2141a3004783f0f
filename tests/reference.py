"""Slow, obviously-correct synthesizer attention written independently of the package: explicit loops over
batch, head and query, straight from the formulas of Tay et al. 2021 (docs/attention_core.md, "The variants"). Tests compare the
package's modules against it in forward and backward."""

import torch


def _head_rows(linear, h, size):
    return linear.weight[h * size : (h + 1) * size], linear.bias[h * size : (h + 1) * size]


def component_row(name, syn, attn, x, b, h, i, q0, lk, dh):
    """Logits of query `i` (at position q0 + i) of example `b`, head `h`, for component `name`: a vector of lk."""
    p = q0 + i
    if name == "vanilla":
        wq, bq = _head_rows(attn.query, h, dh)
        wk, bk = _head_rows(attn.key, h, dh)
        q = wq @ x[b, i] + bq
        keys = x[b, :lk] @ wk.T + bk  # keys of the (uncached) sequence
        return keys @ q / dh**0.5
    if name == "dense":
        w1, b1 = _head_rows(syn.dense_w1, h, dh)
        hidden = torch.relu(w1 @ x[b, i] + b1)
        hw = h if syn.dense_w2.shape[0] > 1 else 0
        row = hidden @ syn.dense_w2[hw] + syn.dense_b2[hw]  # length L
        return row[:lk]
    if name in ("random", "fixed_random"):
        r = syn.random_r if name == "random" else syn.fixed_random_r
        return r[h, p, :lk]
    if name == "factorized_random":
        r1, r2 = syn.factorized_random_r1[h], syn.factorized_random_r2[h]
        return torch.stack([torch.dot(r1[p], r2[j]) for j in range(lk)])
    if name == "factorized_dense":
        a_size = syn.factorized_dense_a.out_features // attn.num_attention_heads
        b_size = syn.factorized_dense_b.out_features // attn.num_attention_heads
        wa, ba = _head_rows(syn.factorized_dense_a, h, a_size)
        wb, bb = _head_rows(syn.factorized_dense_b, h, b_size)
        fa, fb = wa @ x[b, i] + ba, wb @ x[b, i] + bb
        return torch.stack([fa[j % a_size] * fb[j // a_size] for j in range(lk)])
    raise AssertionError(name)


def mixture_weight(syn, n, h):
    if len(syn.components) == 1:
        return 1.0
    if syn.mixture == "gate":
        g = torch.sigmoid(syn.mixture_gate[0])
        return g if n == 0 else 1 - g
    return torch.softmax(syn.mixture_logits[:, h], dim=0)[n]


def reference_self_attention(attn, x, keep=None, causal=False):
    """Output (B, l, H*dh) and probabilities (B, H, l, l) of a BertSynthesizerSelfAttention on x (B, l, d).

    keep: (B, l) bool, False for padding keys. Masked keys get probability exactly 0.
    """
    syn = attn.synthesizer
    batch, length, _ = x.shape
    heads, dh = attn.num_attention_heads, attn.attention_head_size
    wv, bv = attn.value.weight, attn.value.bias
    values = x @ wv.T + bv  # (B, l, H*dh)
    outputs, probabilities = [], []
    for b in range(batch):
        out_b, prob_b = [], []
        for h in range(heads):
            out_h, prob_h = [], []
            for i in range(length):
                row = sum(
                    mixture_weight(syn, n, h) * component_row(name, syn, attn, x, b, h, i, 0, length, dh)
                    for n, name in enumerate(syn.components)
                )
                allowed = torch.ones(length, dtype=torch.bool)
                if keep is not None:
                    allowed &= keep[b]
                if causal:
                    allowed &= torch.arange(length) <= i
                e = torch.where(allowed, torch.exp(row - row[allowed].max()), torch.zeros(()))
                prob = e / e.sum()
                prob_h.append(prob)
                out_h.append(prob @ values[b, :, h * dh : (h + 1) * dh])
            out_b.append(torch.stack(out_h))
            prob_b.append(torch.stack(prob_h))
        outputs.append(torch.cat(out_b, dim=-1))
        probabilities.append(torch.stack(prob_b))
    return torch.stack(outputs), torch.stack(probabilities)
