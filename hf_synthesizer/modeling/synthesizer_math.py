"""The math of every synthesizer variant, as small pure functions (Tay et al. 2021, arXiv 2005.00743).

Shapes: `B` batch, `H` heads, `lq`/`lk` query/key lengths, `L` configured maximum length, `d` hidden size,
`dh` head size. Logits are `(B or 1, H, lq, lk)`: input-independent variants return a batch dimension of 1
that broadcasts over the batch. `q0` is the position of the first query (the cache length when decoding):
query `i` uses row `q0 + i` of a length-sized parameter.

This file ships with saved checkpoints (trust_remote_code): it imports only torch.
"""

import torch
from torch.nn import functional as F


def check_length(needed: int, limit: int, where: str = "") -> None:
    """A clear error instead of an index error or silent truncation when the input outgrows `L`."""
    if needed > limit:
        raise ValueError(
            f"Sequence length {needed} exceeds the synthesizer length {limit} (config.synthesizer_length){where}: "
            f"the synthesizer parameters are sized by it. Truncate the inputs (e.g. tokenizer(..., truncation=True, "
            f"max_length={limit})); when generating, the prompt and the generated tokens count together, so keep "
            f"prompt length + max_new_tokens within {limit} (a T5 decoder: max_new_tokens <= {limit}); or use a model "
            f"converted with a larger synthesizer_length."
        )


def check_input_length(length: int, past: int, position_ids, synthesizer_length: int | None, max_positions: int):
    """Before BERT's embeddings: a clear `ValueError` for an input the model cannot take, whichever limit it hits
    first, instead of a shape error in the position lookup or an index error in the position embeddings.

    length: tokens in this call; past: tokens already in the cache; position_ids: `(B or 1, length)` or None
    (positions `past .. past + length - 1`); synthesizer_length: `L` when some layer is synthesized, else None;
    max_positions: `config.max_position_embeddings`.
    """
    if synthesizer_length is not None:
        check_length(past + length, synthesizer_length)
    needed = past + length if position_ids is None or position_ids.numel() == 0 else int(position_ids.max()) + 1
    if needed > max_positions:
        raise ValueError(
            f"The input needs {needed} positions but the model has max_position_embeddings={max_positions} "
            f"(config.max_position_embeddings): its absolute position embeddings end there. Truncate the inputs "
            f"(e.g. tokenizer(..., truncation=True, max_length={max_positions}))."
        )


def take(t: torch.Tensor, dim: int, start, length) -> torch.Tensor:
    """`t.narrow(dim, start, length)` as a gather (`index_select`): the rows/columns `start:start+length` of a
    length-sized parameter. A strided slice would do, but its contiguity depends on whether `length == L`, so
    `torch.export` with a dynamic length guards on `length != L` and rejects the range up to `L`; a gather's result is
    contiguous whatever the length (one small copy; compiled graphs fuse it into its consumer). `start` may be a 0-dim
    tensor (a static cache's offset): it stays on the device.

    In eager mode with an int `start` a view (`narrow`): a gather copies, and on per-example logits (factorized
    dense's `(B, H, lq, L)` table) that copy and its backward cost a quarter of a training step (issue 25 item 7)."""
    if isinstance(start, int) and not _tracing(t):
        return t if start == 0 and length == t.shape[dim] else t.narrow(dim, start, length)
    return t.index_select(dim, torch.arange(length, device=t.device) + start)


def _tracing(t: torch.Tensor) -> bool:
    """Whether `t` is being traced: torch.compile / torch.export (strict or not: fake tensors), or TorchScript."""
    return (
        torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
        or type(t) not in (torch.Tensor, torch.nn.Parameter)
    )


class _ReLU(torch.autograd.Function):
    """`F.relu` with aten's gradient (the incoming gradient where the output is > 0, 0 elsewhere), computed from the
    saved output as `grad * sign(out)`, without a comparison. Under torch.compile aten's ReLU backward makes inductor
    save a boolean mask from the forward, and inductor's CPU code writes boolean tensors about 20x slower than eager
    (torch 2.13: `a > 0` over 8 x 128 x 384 floats, 5.7 ms compiled vs 0.28 ms eager), which made a compiled dense
    layer train slower than an eager one (benchmarks/RESULTS.md, "Compiled dense"). Differs from aten only where the
    incoming gradient is inf or NaN at a zero output (NaN here, 0 there), a step AMP's grad scaler skips either way,
    and at a NaN input (gradient 0 here, the incoming gradient there). No `jvp` (forward-mode AD): Dynamo cannot trace
    an autograd.Function that defines one, so `relu` uses this Function only while compiling."""

    generate_vmap_rule = True  # torch.func transforms work through it

    @staticmethod
    def forward(x):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out.sign()


def relu(x: torch.Tensor) -> torch.Tensor:
    """`F.relu(x)`, same values and gradients, any shape. Under torch.compile, where a gradient is recorded, through
    `_ReLU` (compiles without a boolean mask); elsewhere (eager, inference, no-grad export) plain `F.relu`, which
    eager autograd saves no mask for and which keeps forward-mode AD (`torch.func.jvp`, `hessian`, `forward_ad`)."""
    if torch.compiler.is_compiling() and torch.is_grad_enabled() and x.requires_grad:
        return _ReLU.apply(x)
    return F.relu(x)


def vanilla_logits(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Dot-product logits `Q K^T * scaling` (BERT: 1/sqrt(dh); T5: 1)."""
    return torch.matmul(query, key.transpose(-1, -2)) * scaling


def dense_logits(projected, w2, b2, num_heads: int, key_length: int) -> torch.Tensor:
    """Dense synthesizer: `S_i = W2 relu(W1 x_i + b1) + b2`, one row of length `L` per token, sliced to `lk`.

    projected: `W1 x + b1`, (B, lq, H*dh), computed by calling the layer (so that a wrapper's weight, e.g. LoRA, is
    the one used); w2: (H or 1, dh, L); b2: (H or 1, L). A leading 1 in `w2`/`b2` shares the output layer across
    heads (as the reference code does).
    """
    hidden = relu(projected).unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, H, lq, dh)
    return torch.matmul(hidden, take(w2, -1, 0, key_length)) + take(b2, -1, 0, key_length)[:, None]


def random_logits(r: torch.Tensor, q0: int, query_length: int, key_length: int) -> torch.Tensor:
    """Random synthesizer: `R_h[q0:q0+lq, :lk]`, the same for every example. r: (H, L, L) -> (1, H, lq, lk)."""
    return take(take(r, 1, q0, query_length), 2, 0, key_length)[None]


def factorized_random_logits(r1, r2, q0: int, query_length: int, key_length: int) -> torch.Tensor:
    """Factorized random: the rank-k product `(R1_h R2_h^T)[q0:q0+lq, :lk]`. r1, r2: (H, L, k) -> (1, H, lq, lk)."""
    return torch.matmul(take(r1, 1, q0, query_length), take(r2, 1, 0, key_length).transpose(-1, -2))[None]


def factor_logits(a: torch.Tensor, b: torch.Tensor, key_length: int) -> torch.Tensor:
    """Factorized dense logits from the factors: `S_ij = A_i[j mod a] * B_i[j // a]` (A tiled b times, B repeated a
    times: each (p, q) pair once, column `q a + p` holds `B[q] A[p]`), sliced to `lk`. a `(.., rows, a)`, b
    `(.., rows, b)` -> `(.., rows, lk)`. The one place the product is written (the reference and
    route_factorized_dense both use it)."""
    return take((b[..., :, None] * a[..., None, :]).flatten(-2), -1, 0, key_length)


def factorized_dense_logits(a, b, num_heads: int, key_length: int) -> torch.Tensor:
    """Factorized dense: `A = F_A(x_i)` in R^a, `B = F_B(x_i)` in R^b with `a*b = L` (`factor_logits`).
    F_A, F_B are one linear map per head, applied by the caller: a (B, lq, H*a), b (B, lq, H*b) -> (B, H, lq, lk)."""
    a = a.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, H, lq, a)
    b = b.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, H, lq, b)
    return factor_logits(a, b, key_length)


def mixture_weights(mixture: str, logits: torch.Tensor) -> torch.Tensor:
    """Weights `(n, H or 1)` of a mixture's components, summing to 1 over components.

    "softmax": `logits` (n, H), softmax over components (paper). "gate": `logits` a scalar `a`,
    weights `(sigmoid(a), 1 - sigmoid(a))` (Mesh-TF).
    """
    if mixture == "gate":
        gate = torch.sigmoid(logits).reshape(1, 1)
        return torch.cat([gate, 1 - gate])
    return torch.softmax(logits, dim=0)


def mix_logits(components: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """`S = sum_n alpha_{n,h} S_n`: mixing happens before the softmax."""
    mixed = None
    for n, logits in enumerate(components):
        term = weights[n].view(1, -1, 1, 1).to(logits.dtype) * logits
        mixed = term if mixed is None else mixed + term
    return mixed


def additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean keep-mask (True = attend) or an additive float mask, as an additive float mask."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    return torch.zeros((), dtype=dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, torch.finfo(dtype).min
    )


def causal_mask(q0: int, query_length: int, key_length: int, device) -> torch.Tensor:
    """Boolean keep-mask (1, 1, lq, lk) where query `q0 + i` sees keys `0..q0 + i` (`q0` an int or a 0-dim tensor)."""
    rows = torch.arange(query_length, device=device)[:, None] + q0
    return (rows >= torch.arange(key_length, device=device)[None, :])[None, None]


def attention_probabilities(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """`softmax(S + mask)` computed in (at least) fp32 whatever the autocast dtype; padding and causal masks apply
    to synthesized logits exactly as to dot-product ones. Fully masked rows come out uniform, not NaN.
    float64 stays float64 (exact comparisons in tests)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    mask = additive_mask(attention_mask, logits.dtype)
    if mask is not None:
        logits = logits + mask.to(logits.dtype)
    return torch.softmax(logits, dim=-1)


# ------------------------------------------------------------------------------------------------- positions
# Synthesized rows and columns are indexed by position. From a key mask, a token's position is its slot minus the
# example's left padding (the slots before its first kept one), as transformers' `generate` counts `position_ids` on
# left-padded prompts (`attention_mask.cumsum(-1) - 1`); right padding and gaps after the first kept token leave
# the slots as they are, as they leave BERT's own positions (docs/attention_core.md, "Positions").


def left_padding(keep: torch.Tensor) -> torch.Tensor:
    """`(B,)` long: the number of slots before each example's first kept one (0 when none is kept). keep: `(B, lk)`
    bool, True where a token is kept. On-device, no host read."""
    return keep.int().argmax(-1)  # the first maximum: the first kept slot


def padded_positions(keep: torch.Tensor) -> torch.Tensor:
    """`(B, lk)` long: the position of each slot, `slot - left_padding`, clamped at 0 for the padded slots before the
    first kept one (their logits are masked or their outputs unused). keep: `(B, lk)` bool."""
    return (torch.arange(keep.shape[-1], device=keep.device) - left_padding(keep)[:, None]).clamp_min(0)


def rotation_order(keep: torch.Tensor) -> torch.Tensor:
    """`(B, lk)` long: a permutation of each example's slots rotating it left by its left padding: reordered by it
    (`reorder_slots`), every kept token sits at the slot equal to its `padded_positions`, so routes that index by slot
    give it its position; the padding moves to the end. keep: `(B, lk)` bool. Modulo without `%` (ONNX export cannot
    take a remainder by a symbolic length)."""
    length = keep.shape[-1]
    order = torch.arange(length, device=keep.device) + left_padding(keep)[:, None]
    return torch.where(order >= length, order - length, order)


def _inverse(permutation: torch.Tensor) -> torch.Tensor:
    slots = torch.arange(permutation.shape[-1], device=permutation.device).expand_as(permutation)
    return torch.empty_like(permutation).scatter(-1, permutation, slots)


def reorder_slots(t: torch.Tensor, order: torch.Tensor, dim: int, undo: bool = False) -> torch.Tensor:
    """`t` `(B or 1, ...)` with the slots along `dim` (>= 1) taken in `order` `(B or 1, length)` (`rotation_order`),
    or, with `undo`, put back where they came from: `reorder_slots(reorder_slots(t, o, d), o, d, undo=True)` is `t`.
    Whole slots (all other dims) move, in `t`'s own memory layout (routes wanting a query-major layout keep it)."""
    order = _inverse(order) if undo else order
    rows = torch.arange(t.shape[0], device=t.device)[:, None]
    return t.movedim(dim, 1)[rows, order].movedim(1, dim)


def at_positions(table: torch.Tensor, query_positions: torch.Tensor | None, key_positions: torch.Tensor):
    """Logits by position: `out[b, h, i, j] = table[b, h, query_positions[b, i], key_positions[b, j]]`.

    table: `(B or 1, H, L or lq, L)`, rows by query position (None: rows are already the queries, e.g. dense
    logits), columns by key position; query_positions `(B, lq)`, key_positions `(B, lk)` (the same B, see
    `SynthesizerLogits.forward`) -> `(B, H, lq, lk)`.
    Positions must be below the table's size (positions of lengths `check_length` accepted): a larger one is
    an IndexError on CPU and a device-side assert on CUDA."""
    batch, heads = key_positions.shape[0], table.shape[1]
    table = table.expand(batch, -1, -1, -1)  # (explicit gathers: take_along_dim's broadcast specialises the batch)
    if query_positions is not None:
        index = query_positions[:, None, :, None].expand(batch, heads, query_positions.shape[1], table.shape[3])
        table = table.gather(2, index)
    index = key_positions[:, None, None, :].expand(batch, heads, table.shape[2], key_positions.shape[1])
    return table.gather(3, index)


def factorized_random_logits_at(r1, r2, query_positions, key_positions) -> torch.Tensor:
    """Factorized random by position: `R1_h[query_positions[b, i]] . R2_h[key_positions[b, j]]`. r1, r2: (H, L, k)
    -> (B, H, lq, lk)."""
    batch, (heads, _, rank) = key_positions.shape[0], r1.shape
    lq, lk = query_positions.shape[1], key_positions.shape[1]
    rows = r1[None].expand(batch, -1, -1, -1).gather(2, query_positions[:, None, :, None].expand(batch, heads, lq, rank))
    cols = r2[None].expand(batch, -1, -1, -1).gather(2, key_positions[:, None, :, None].expand(batch, heads, lk, rank))
    return torch.matmul(rows, cols.transpose(-1, -2))  # (B, H, lq, lk)
