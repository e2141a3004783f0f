"""Each route's Function against the plain math beside it, forward and backward, float64 (issue 25 item 5):
factorized dense (route_factorized_dense) over several query chunks, with padding, causality, rows that see no key,
columns cut below L, and dropout (the reference applies the same keep-masks)."""

import pytest
import torch

from hf_synthesizer.modeling.route_factorized_dense import FactorizedDenseAttention, factorized_dense_reference
from hf_synthesizer.modeling.synthesizer_fast import MASKED
from hf_synthesizer.modeling.synthesizer_math import factor_logits, factorized_dense_logits


def inputs(lq=10, lk=10, fa=3, fb=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 3, lq, fa, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 3, lq, fb, generator=g, dtype=torch.float64).requires_grad_()
    value = torch.randn(2, 3, lk, 5, generator=g, dtype=torch.float64).requires_grad_()
    return a, b, value


def test_factor_logits_is_the_tiled_outer_product():
    """Column `q a + p` holds `B[q] A[p]` (A tiled, B repeated: each pair once), cut to lk; the model's logits (heads
    split from the linear maps' outputs) are the same product."""
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 100.0])
    assert factor_logits(a, b, 6).tolist() == [10, 20, 30, 100, 200, 300]
    assert factor_logits(a, b, 4).tolist() == [10, 20, 30, 100]
    fa, fb = torch.randn(2, 5, 2 * 3), torch.randn(2, 5, 2 * 4)  # 2 heads, a = 3, b = 4
    heads = factorized_dense_logits(fa, fb, 2, 10)
    torch.testing.assert_close(heads[:, 1], factor_logits(fa[..., 3:], fb[..., 4:], 10))


def bias_of(kind, lq, lk):
    if kind == "none":
        return None
    keep = torch.ones(2, 1, 1, lk, dtype=torch.bool)
    keep[1, ..., :3] = False  # left padding
    if kind == "causal":
        keep = keep & (torch.arange(lq)[:, None] >= torch.arange(lk)[None, :])  # rows 0-2 of example 1 see no key
    return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, MASKED)


@pytest.mark.parametrize("lk", [12, 9])  # a * b = 12: every column, and columns cut below L
@pytest.mark.parametrize("mask", ["none", "padding", "causal"])
def test_factorized_dense_function_equals_reference_forward_and_backward(mask, lk):
    a, b, value = inputs(lq=lk, lk=lk)
    bias = bias_of(mask, lk, lk)
    proj = torch.randn(2, 3, lk, 5, dtype=torch.float64)
    results = []
    for run in (lambda: FactorizedDenseAttention.apply(a, b, value, bias, 0.0, 4),  # 3 chunks of 4 rows
                lambda: factorized_dense_reference(a, b, value, bias)):
        out = run()
        grads = torch.autograd.grad((out * proj).sum(), (a, b, value))
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_factorized_dense_function_dropout_uses_its_keep_masks_in_backward():
    """One chunk: the Function and the reference draw the same keep-mask from the same seed."""
    a, b, value = inputs()
    proj = torch.randn(2, 3, 10, 5, dtype=torch.float64)
    results = []
    for apply in (lambda: FactorizedDenseAttention.apply(a, b, value, None, 0.3, 10),
                  lambda: factorized_dense_reference(
                      a, b, value, None, torch.rand(2, 3, 10, 10, dtype=torch.float64) >= 0.3, 0.3)):
        torch.manual_seed(7)
        out = apply()
        results.append((out, torch.autograd.grad((out * proj).sum(), (a, b, value))))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_factorized_dense_function_gradcheck():
    """Against finite differences (padding: every row keeps a key; a row without one follows the reference's
    convention, checked above, which finite differences cannot see through the rounding)."""
    a, b, value = inputs(lq=5, lk=5, fa=2, fb=3)
    bias = bias_of("padding", 5, 5)
    assert torch.autograd.gradcheck(lambda a, b, v: FactorizedDenseAttention.apply(a, b, v, bias, 0.0, 2), (a, b, value))


# ------------------------------------------------------------------------------------------------ choose_route

from hf_synthesizer.modeling.synthesizer_attention import ROUTES, choose_route  # noqa: E402

BASE = dict(batch=4, tuned=True, low_precision=False, dropout=0.0, mask_kind="key", keyless=False, position_bias=None,
            batch_times_head_dim=256)
TRUTH_TABLE = [
    # (components, changes to BASE, route)
    (("random",), {}, "shared"),
    (("fixed_random",), {"mask_kind": "none"}, "shared"),
    (("random", "factorized_random"), {}, "shared"),
    (("random",), {"dropout": 0.1}, "per_example"),
    (("random",), {"mask_kind": "general"}, "per_example"),
    (("random",), {"keyless": True}, "per_example"),
    (("random",), {"position_bias": "shared"}, "shared"),
    (("random",), {"position_bias": "per_example"}, "reference"),
    (("random",), {"position_bias": "shared", "keyless": True}, "reference"),
    (("random",), {"batch": 0}, "reference"),
    (("factorized_random",), {}, "shared"),
    (("factorized_random",), {"batch_times_head_dim": 64}, "features"),  # below the measured crossover
    (("factorized_random",), {"batch_times_head_dim": 64, "tuned": False}, "shared"),  # no batch test off CPU eager
    (("factorized_random",), {"dropout": 0.1}, "features"),
    (("dense",), {}, "features"),
    (("dense",), {"mask_kind": "general"}, "features"),
    (("dense",), {"keyless": True}, "per_example"),
    (("dense",), {"position_bias": "shared"}, "reference"),
    (("random", "vanilla"), {}, "per_example"),
    (("random", "vanilla"), {"low_precision": True}, "reference"),
    (("random",), {"low_precision": True}, "shared"),
    (("random",), {"low_precision": True, "dropout": 0.1}, "reference"),
    (("dense", "vanilla"), {"low_precision": True}, "features"),
    (("dense", "random"), {}, "per_example"),
    (("factorized_random", "vanilla"), {}, "features"),
    (("factorized_dense",), {}, "factorized_dense"),
    (("factorized_dense",), {"tuned": False}, "chunked_reference"),
    (("factorized_dense",), {"position_bias": "shared"}, "chunked_reference"),
    (("factorized_dense", "vanilla"), {}, "chunked_reference"),
]


@pytest.mark.parametrize("components, changes, route", TRUTH_TABLE)
def test_choose_route_truth_table(components, changes, route):
    """The route of a call is a pure function of its description: asked without running anything."""
    assert choose_route(components, **{**BASE, **changes}) == route
    assert route in ROUTES
