"""Fast paths (the route_*.py files) against the plain reference implementation (synthesizer_math.py):
forward and gradients, with and without padding, causal with cache offsets, the softmax(R) cache, autocast,
gradcheck of the custom backward passes, and torch.compile on a tiny config. Tiny shapes only."""

import pytest
import torch
from transformers import DynamicCache

import hf_synthesizer.modeling.synthesizer_attention as sa
from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerLMHeadModel, BertSynthesizerModel
import hf_synthesizer.modeling.route_chunked_reference as chunked_reference
from hf_synthesizer.modeling.route_per_example import Terms, per_example_attention
from hf_synthesizer.modeling.route_shared import generic_shared_attention, shared_logits_attention
from hf_synthesizer.modeling.synthesizer_attention import Mask
from hf_synthesizer.modeling.synthesizer_math import additive_mask

VARIANTS = [
    "random",
    "fixed_random",
    "factorized_random",
    "dense",
    "factorized_dense",
    "random+vanilla",
    "dense+vanilla",
    "dense+random",
    "factorized_random+vanilla",
    "random+factorized_random",
    "random+fixed_random+vanilla",
]


def make_model(variant, cls=BertSynthesizerModel, **kwargs):
    torch.manual_seed(0)
    config = BertSynthesizerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        synthesizer_variant=variant, **kwargs,
    )
    model = cls(config)
    with torch.no_grad():  # away from the near-uniform init, so that errors would show
        for module in model.modules():
            for name in ("random_r", "fixed_random_r", "mixture_logits", "dense_w2"):
                if hasattr(module, name):
                    getattr(module, name).normal_()
    return model


def set_fast(model, fast):
    for module in model.modules():
        if isinstance(module, sa.SynthesizerLogits):
            module.use_fast_paths = fast


def run(model, ids, mask, fast, proj):
    set_fast(model, fast)
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask[..., None] if mask is not None else 1
    (out * keep * proj).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach() * keep, grads


def assert_close_grads(fast, ref):
    assert fast.keys() == ref.keys()
    for name in ref:
        scale = ref[name].abs().max().clamp_min(1e-3)  # key.bias grads are 0 in theory (softmax shift)
        assert ((fast[name] - ref[name]).abs().max() / scale) < 1e-4, name


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_matches_reference(variant, padding):
    model = make_model(variant)
    ids = torch.randint(0, 50, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    if padding:
        mask[1, 12:] = 0
        mask[2, 5:] = 0
    proj = torch.randn(3, 20, 32)
    out_fast, g_fast = run(model, ids, mask, True, proj)
    out_ref, g_ref = run(model, ids, mask, False, proj)
    torch.testing.assert_close(out_fast, out_ref, atol=2e-5, rtol=1e-4)
    assert_close_grads(g_fast, g_ref)


@pytest.mark.parametrize("shared_route", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_factorized_random_routes_by_batch_times_head_dim(shared_route, causal, monkeypatch):
    """Factorized random runs batch-shared or on flash features depending on batch x head dim; both equal the
    reference (forward and gradients, padding, causal)."""
    monkeypatch.setattr(sa, "SHARED_ROUTE_MIN_BATCH_HEAD_DIM", 0 if shared_route else 10**9)
    calls = []
    for name in ("shared_logits_attention", "feature_attention"):
        original = getattr(sa, name)
        monkeypatch.setattr(sa, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    cls = BertSynthesizerLMHeadModel if causal else BertSynthesizerModel
    model = make_model("factorized_random", cls=cls, is_decoder=causal)
    ids = torch.randint(0, 50, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = 0
    proj = torch.randn(3, 20, 50 if causal else 32)

    def run_any(fast):
        set_fast(model, fast)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask)
        out = out.logits if causal else out.last_hidden_state
        (out * mask[..., None] * proj).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_fast, g_fast = run_any(True)
    assert set(calls) == {"shared_logits_attention" if shared_route else "feature_attention"}
    out_ref, g_ref = run_any(False)
    torch.testing.assert_close(out_fast * mask[..., None], out_ref * mask[..., None], atol=2e-5, rtol=1e-4)
    assert_close_grads(g_fast, g_ref)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", ["factorized_dense+vanilla", "factorized_dense+random"])
def test_chunked_reference_route_matches_reference(variant, causal, monkeypatch):
    """Factorized dense's mixtures run the reference math in query chunks, recomputed in backward (pure factorized
    dense has its own Function: tests/test_routes.py): equal to
    the whole-length reference in forward and gradients, with padding and causal masks, across 7 chunks."""
    monkeypatch.setattr(chunked_reference, "CHUNK_ELEMENTS", 3 * 4 * 20 * 3)  # 3 query rows per chunk
    calls = []
    original = chunked_reference._reference_chunk
    monkeypatch.setattr(chunked_reference, "_reference_chunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    cls = BertSynthesizerLMHeadModel if causal else BertSynthesizerModel
    model = make_model(variant, cls=cls, is_decoder=causal, synthesizer_factorized_dense_split=[4, 6])
    ids = torch.randint(0, 50, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[2, 13:] = 0
    proj = torch.randn(3, 20, 50 if causal else 32)
    results = {}
    for fast in (True, False):
        set_fast(model, fast)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask)
        out = out.logits if causal else out.last_hidden_state
        (out * mask[..., None] * proj).sum().backward()
        results[fast] = out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if fast:
            assert len(calls) >= 2 * 7  # 2 layers x 7 chunks (plus recomputation in backward)
    torch.testing.assert_close(results[True][0] * mask[..., None], results[False][0] * mask[..., None], atol=2e-5,
                               rtol=1e-4)
    assert_close_grads(results[True][1], results[False][1])


def test_chunked_reference_route_recomputes_the_same_dropout(monkeypatch):
    """With attention dropout, backward's recomputation of each chunk draws the same dropout masks as the forward:
    gradients equal those of the same chunks kept in memory (no recomputation). (A factorized dense mixture: pure
    factorized dense has a Function of its own, tests/test_routes.py.)"""
    monkeypatch.setattr(chunked_reference, "CHUNK_ELEMENTS", 3 * 4 * 20 * 3)
    torch.manual_seed(0)
    config = BertSynthesizerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5,
        synthesizer_variant="factorized_dense+random", synthesizer_factorized_dense_split=[4, 6],
    )
    model = BertSynthesizerModel(config).train()
    calls = []
    original = chunked_reference._reference_chunk
    monkeypatch.setattr(chunked_reference, "_reference_chunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids = torch.randint(0, 50, (3, 20))
    results = []
    for recompute in (True, False):
        if not recompute:
            monkeypatch.setattr(chunked_reference, "checkpoint", lambda fn, *args, **kwargs: fn(*args))
        torch.manual_seed(1)
        model.zero_grad()
        out = model(input_ids=ids).last_hidden_state
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert len(calls) > 2 * 2 * 7  # the chunks ran, and again in backward
    torch.testing.assert_close(results[0][0], results[1][0])
    assert_close_grads(results[0][1], results[1][1])


@pytest.mark.parametrize("variant", ["random", "fixed_random", "factorized_random", "random+vanilla", "dense"])
def test_causal_with_padding_and_cache(variant):
    """Decoder: causal + padding masks, and cached decoding (query offset q0 = cache length) equal to uncached."""
    model = make_model(variant, cls=BertSynthesizerLMHeadModel, is_decoder=True).eval()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    outs = {}
    for fast in (True, False):
        set_fast(model, fast)
        with torch.no_grad():
            outs[fast] = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(outs[True] * mask[..., None], outs[False] * mask[..., None], atol=2e-5, rtol=1e-4)
    cached = {}
    for fast in (True, False):  # cached decoding: query offset q0 = cache length
        set_fast(model, fast)
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            first = model(input_ids=ids[:1, :7], past_key_values=cache, use_cache=True).logits
            rest = [model(input_ids=ids[:1, i : i + 1], past_key_values=cache, use_cache=True).logits for i in range(7, 12)]
        cached[fast] = torch.cat([first, *rest], dim=1)
    torch.testing.assert_close(cached[True], cached[False], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(cached[True], outs[True][:1], atol=2e-5, rtol=1e-4)


def test_causal_training_gradients():
    model = make_model("random+vanilla", cls=BertSynthesizerLMHeadModel, is_decoder=True)
    ids = torch.randint(0, 50, (2, 10))
    grads = {}
    for fast in (True, False):
        set_fast(model, fast)
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads[fast] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_close_grads(grads[True], grads[False])


def test_softmax_cache_invalidated_when_weights_change():
    model = make_model("fixed_random").eval()
    ids = torch.randint(0, 50, (2, 16))
    layer = model.encoder.layer[0].attention.self.synthesizer
    with torch.no_grad():
        first = model(input_ids=ids).last_hidden_state
        assert layer.input_independent_cache.value is not None
        cached = layer.input_independent_cache.value
        again = model(input_ids=ids).last_hidden_state
        assert layer.input_independent_cache.value is cached  # reused
        torch.testing.assert_close(first, again)
        layer.fixed_random_r.mul_(3.0)  # in-place change: _version bumps
        changed = model(input_ids=ids).last_hidden_state
        set_fast(model, False)
        reference = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, reference, atol=2e-5, rtol=1e-4)
    # load_state_dict copies in place as well
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.layer.0.attention.self.synthesizer.fixed_random_r"].normal_()
    model.load_state_dict(state)
    set_fast(model, True)
    with torch.no_grad():
        fast = model(input_ids=ids).last_hidden_state
    set_fast(model, False)
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["random", "fixed_random", "random+vanilla"])
def test_cache_sees_every_supported_weight_change(variant):
    """The supported ways to change weights each invalidate the softmax(R) / mixed-R cache (RESULTS.md, "Input-
    independent cache"): an in-place op on the parameter, through `.detach()` (EMA/SWA tools), a new tensor assigned
    to `.data` even at the old address (storage identity, not the address), and a write through `.data` (which
    PyTorch does not version) followed by `model.eval()` -- what evaluation loops call."""
    model = make_model(variant).eval()
    ids = torch.randint(0, 50, (2, 16))
    layer = model.encoder.layer[0].attention.self.synthesizer
    r = layer.random_r if hasattr(layer, "random_r") else layer.fixed_random_r

    def check():
        with torch.no_grad():
            fast = model(input_ids=ids).last_hidden_state
            set_fast(model, False)
            ref = model(input_ids=ids).last_hidden_state
            set_fast(model, True)
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)
        assert layer.input_independent_cache.value is not None

    check()
    with torch.no_grad():
        r.detach().mul_(2.0)
    check()
    storage_copy = r.detach().clone()
    with torch.no_grad():
        r.data = storage_copy.neg()  # a new storage; the old one is held by the cache key, so it cannot be reused
    check()
    r.data.normal_()  # not versioned by PyTorch ...
    model.eval()  # ... seen from the next evaluation on
    check()
    model.train()
    assert layer.input_independent_cache.value is None


@pytest.mark.parametrize("variant", ["random+vanilla", "fixed_random+vanilla", "dense+random"])
def test_mixture_cache_of_shared_logits(variant):
    """Inference caches the mixed R terms of a mixture with per-example terms; padding rides on top of the cache;
    a change of R or of the mixture weights invalidates it; training (gradients needed) does not use it."""
    model = make_model(variant).eval()
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    layer = model.encoder.layer[0].attention.self.synthesizer
    r = layer.random_r if hasattr(layer, "random_r") else layer.fixed_random_r

    def fast_and_reference():
        with torch.no_grad():
            set_fast(model, True)
            fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
            set_fast(model, False)
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(fast * mask[..., None], ref * mask[..., None], atol=2e-5, rtol=1e-4)
        return fast

    first = fast_and_reference()
    cached = layer.input_independent_cache.value
    assert cached is not None and cached.shape == (1, 4, 16, 16)
    fast_and_reference()
    assert layer.input_independent_cache.value is cached  # reused across batches with different padding
    with torch.no_grad():
        layer.mixture_logits.mul_(-2.0)
    assert not torch.allclose(fast_and_reference(), first)
    assert layer.input_independent_cache.value is not cached
    with torch.no_grad():
        r.mul_(3.0)  # not a constant shift: softmax would hide that
    fast_and_reference()
    layer.input_independent_cache.clear()
    model.train()
    set_fast(model, True)
    model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert layer.input_independent_cache.value is None
    assert layer.mixture_logits.grad is not None and layer.mixture_logits.grad.abs().sum() > 0


def test_fixed_random_without_cache_matches_reference():
    model = make_model("fixed_random")
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 11:] = 0
    for module in model.modules():
        if isinstance(module, sa.SynthesizerLogits):
            module.cache_input_independent = False
    proj = torch.randn(2, 16, 32)
    out_fast, g_fast = run(model, ids, mask, True, proj)
    assert model.encoder.layer[0].attention.self.synthesizer.input_independent_cache.value is None
    out_ref, g_ref = run(model, ids, mask, False, proj)
    torch.testing.assert_close(out_fast, out_ref, atol=2e-5, rtol=1e-4)
    assert_close_grads(g_fast, g_ref)


def test_random_cache_not_used_when_grad_needed_and_survives_inference_mode():
    model = make_model("random")
    ids = torch.randint(0, 50, (2, 16))
    layer = model.encoder.layer[0].attention.self.synthesizer
    with torch.inference_mode():
        model(input_ids=ids)
    assert layer.input_independent_cache.value is not None and layer.input_independent_cache.value.is_inference()
    model.zero_grad()
    model(input_ids=ids).last_hidden_state.sum().backward()  # must not touch the inference-mode cache
    assert layer.random_r.grad is not None and layer.random_r.grad.abs().sum() > 0


def test_optimizer_step_invalidates_cache():
    model = make_model("random")
    ids = torch.randint(0, 50, (2, 16))
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    with torch.no_grad():
        model.eval()
        before = model(input_ids=ids).last_hidden_state
    model.train()
    model(input_ids=ids).last_hidden_state.pow(3).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        fast = model(input_ids=ids).last_hidden_state
        set_fast(model, False)
        ref = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(before, fast)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["random", "factorized_random", "dense", "random+vanilla"])
def test_bf16_autocast_close_to_reference(variant):
    model = make_model(variant).eval()
    ids = torch.randint(0, 50, (2, 16))
    outs = {}
    for fast in (True, False):
        set_fast(model, fast)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[fast] = model(input_ids=ids).last_hidden_state.float()
    torch.testing.assert_close(outs[True], outs[False], atol=0.1, rtol=0.05)


def test_mask_kinds_and_forms():
    """Masks are classified by shape alone: a query dim of 1 is key padding (+ the module's causal flag); a full mask
    is general (it already holds its causal part: the caller passes causal=False), so are per-head masks. Every form
    derives from the one description: the key bias, the full mask with the causal part, its additive form, and
    whether some row sees no kept key."""
    assert Mask(None, True, 0, 5, 5).kind == "none" and Mask(None, False, 0, 5, 5).full() is None
    assert torch.equal(Mask(None, True, 0, 3, 3).full()[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[1, ..., :3] = False  # left padding: under the causal mask, rows 0-2 of example 1 see no kept key
    mask = Mask(keep, True, 0, 5, 5)
    assert mask.kind == "key" and mask.key_bias[1, 2] < -1e29 and mask.key_bias[0].abs().sum() == 0
    full = mask.full()
    assert full.shape == (2, 1, 5, 5) and torch.equal(full[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    assert not full[1, 0, :3].any() and full[1, 0, 4, 3:].all()
    assert torch.equal(mask.full_bias < -1e29, ~full) and mask.keyless
    assert not Mask(keep, False, 0, 5, 5).keyless and Mask(keep, True, 3, 2, 5).keyless is False  # (rows 3, 4)
    assert Mask(keep.expand(2, 1, 5, 5), False, 0, 5, 5).kind == "general"
    assert Mask(keep.expand(2, 3, 1, 5), False, 0, 5, 5).kind == "general"  # per-head
    assert Mask(keep.float().requires_grad_(), False, 0, 5, 5).kind == "general"
    additive = torch.zeros(2, 1, 1, 5).masked_fill(~keep, torch.finfo(torch.float32).min)
    assert torch.equal(Mask(additive, True, 0, 5, 5).full_bias < -1e29, ~full)


def test_rows_without_a_kept_key_attend_uniformly():
    """Computed on-device (no host read): with causal + left padding the first query rows see no kept key, and the
    reference attends uniformly there; so does a fully padded example."""
    torch.manual_seed(0)
    v = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[False, False, True, True, True], [False] * 5])
    bias = torch.zeros(2, 5, dtype=torch.float64).masked_fill(~keep, -1e30)
    full = keep[:, None, None, :] & torch.ones(5, 5, dtype=torch.bool).tril()[None, None]

    def reference():  # in fp64
        return torch.matmul(torch.softmax(r[None, :, :5, :5] + additive_mask(full, torch.float64), -1), v).transpose(1, 2)

    ref = reference()
    proj = torch.randn(ref.shape, dtype=torch.float64)
    rows = full.any(-1).transpose(1, 2)[..., None]  # (B, lq, 1, 1): rows with a kept key
    for route in (lambda: shared_logits_attention(v, bias, True, 0, 5, r=r),
                  lambda: generic_shared_attention(v, bias, True, 0, logits=r[:, :5, :5])):
        out, ref = route(), reference()
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad((out * proj).sum(), v, retain_graph=True)[0],
                                   torch.autograd.grad((ref * proj).sum(), v, retain_graph=True)[0])
        # R's gradient from rows without a kept key is left to the fully-masked-rows work (issue 13): rows with one
        torch.testing.assert_close(torch.autograd.grad((out * proj * rows).sum(), r)[0],
                                   torch.autograd.grad((ref * proj * rows).sum(), r)[0])


def test_gradcheck_shared_route():
    torch.manual_seed(0)
    v = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    r1 = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    r2 = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, 5, dtype=torch.float64)
    bias[1, 3:] = -1e30
    for causal in (False, True):
        assert torch.autograd.gradcheck(lambda v, r: shared_logits_attention(v, bias, causal, 1, 4, r=r), (v, r))
        assert torch.autograd.gradcheck(
            lambda v, a, b: shared_logits_attention(v, None, causal, 1, 4, r1=a, r2=b), (v, r1, r2)
        )


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradcheck_per_example_route(dropout):
    torch.manual_seed(0)
    qf = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    kf = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    alphas = torch.rand(1, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, 1, 1, 5, dtype=torch.float64)
    bias[1, ..., 4:] = -1e30

    def fn(qf, kf, v, r, alphas):
        torch.manual_seed(1)  # the same dropout mask on every call
        return per_example_attention(qf, kf, v, Terms(alphas, bias, (r,), 1, True), 4, dropout)

    assert torch.autograd.gradcheck(fn, (qf, kf, v, r, alphas))


def test_dropout_route_trains():
    model = make_model("random")
    model.config.attention_probs_dropout_prob = 0.5
    for layer in model.encoder.layer:
        layer.attention.self.dropout.p = 0.5
    model.train()
    ids = torch.randint(0, 50, (2, 16))
    a = model(input_ids=ids).last_hidden_state
    b = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(a, b)  # dropout is active
    a.sum().backward()
    assert model.encoder.layer[0].attention.self.synthesizer.random_r.grad.abs().sum() > 0


def _compile_and_compare(variant, backend):
    model = make_model(variant)
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    out.sum().backward()
    torch.testing.assert_close(out * mask[..., None], expected * mask[..., None], atol=2e-5, rtol=1e-4)
    synthesizer_params = [p for n, p in model.named_parameters() if ".synthesizer." in n]
    assert all(p.grad is not None for p in synthesizer_params), "a synthesizer parameter got no gradient"
    torch._dynamo.reset()


@pytest.mark.slow  # ~4 min on 2 cores: ~45 s for the first inductor compile, 5-20 s per further variant
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_compile_inductor(variant):
    """The default inductor backend (aot_eager, every variant, padded and causal: tests/test_portable.py).
    Run with `pytest -m slow`."""
    _compile_and_compare(variant, "inductor")


def far_from_uniform(model, std=0.7):
    """Every synthesizer weight (R, R1/R2, W2/b2, mixture logits, factorized dense factors) drawn with `std`, so that a
    wrong weighting of keys shows in the outputs and gradients."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, sa.SynthesizerLogits):
                for tensor in [*module.parameters(), *module.buffers()]:
                    tensor.normal_(0.0, std)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_that_see_no_key_match_reference(variant, dtype):
    """A fully padded example (once also left padding + a causal mask) leaves queries seeing no key at all; the reference
    (synthesizer_math.attention_probabilities) attends uniformly there. The fast routes must give the same outputs and
    gradients on those rows too (a loss over every position, as token classification with unmasked labels or MLM on
    padding has): their saved log-sum-exp `MASKED + log lk` rounds to `MASKED`, which once weighed each key 1 instead
    of 1/lk in backward. float64: the reference is then exact."""
    model = far_from_uniform(
        make_model(variant, cls=BertSynthesizerLMHeadModel, is_decoder=True, synthesizer_vanilla_backend="eager",
                   synthesizer_factorized_dense_split=[4, 6])
    ).to(dtype)
    ids = torch.randint(0, 50, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding (shifted to the end since issue 14: its queries see kept keys)
    mask[2] = 0  # nothing kept: every query of example 2 sees no kept key
    proj = torch.randn(3, 8, 50, dtype=dtype)
    results = {}
    for fast in (True, False):
        set_fast(model, fast)
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * proj).sum().backward()  # every position, padded ones included
        results[fast] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(results[True][0], results[False][0], **tol)
    assert results[True][1].keys() == results[False][1].keys()
    for name, ref in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], ref, **tol, msg=lambda m, n=name: f"{n}: {m}")
