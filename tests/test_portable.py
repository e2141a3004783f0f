"""Where users train (issue 18): device dispatch (CPU-tuned kernels on CPU only, device-generic routes elsewhere),
one graph under torch.compile (fullgraph, no recompilation, dynamic lengths), tracing on `meta`, and the device-generic
routes against the reference in float64, forward and backward, static-cache decoding in one graph. Tiny configs;
`aot_eager` (no C++ compile). The default run keeps every variant with padding and causal masks, forward and
backward, fullgraph; repeats of a route already covered (encoder compiles, export of every variant, ONNX) run with
`-m slow`."""

import pytest
import torch
from conftest import spread_synthesizer
from test_fast_paths import VARIANTS, make_model, set_fast
from torch.utils._python_dispatch import TorchDispatchMode

import hf_synthesizer.modeling.synthesizer_attention as sa
from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerLMHeadModel, BertSynthesizerModel


def tiny_config(variant, **kwargs):
    return BertSynthesizerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        synthesizer_variant=variant, **kwargs,
    )


def padded_batch(batch=3, length=16, causal=False, seed=0):
    """Right padding in one example, left padding (first rows see no kept key under causality) in another."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 5 :] = 0
    mask[-1, :3] = 0
    return ids, mask


def outputs(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_cpu_only_op_for_non_cpu_tensors(variant, causal):
    """A model on `meta` (a non-CPU device, and what tracing tools use) runs forward and backward with a padding
    mask, in training (with attention dropout) and eval, and never reaches an op that exists for CPU only: the routes
    are chosen per device. (On the starting commit this raised in `torch.autocast("meta", ...)` or reached
    `_scaled_dot_product_flash_attention_for_cpu`.)"""
    config = tiny_config(variant, is_decoder=causal)
    with torch.device("meta"):
        model = (BertSynthesizerLMHeadModel if causal else BertSynthesizerModel)(config)
    ids, mask = padded_batch()
    for training, dropout in ((True, 0.0), (True, 0.1), (False, 0.0)):
        model.train(training)
        for module in model.modules():
            if isinstance(module, sa.SynthesizerAttentionMixin):
                module.dropout = torch.nn.Dropout(dropout) if hasattr(module, "dropout") else dropout
        recorder = OpRecorder()
        with recorder:
            out = outputs(model, ids.to("meta"), mask.to("meta"))
            if training:
                out.sum().backward()
        assert out.device.type == "meta"
        cpu_only = sorted(op for op in recorder.ops if op.endswith("_for_cpu") or "for_cpu_" in op)
        assert not cpu_only, (training, dropout, cpu_only)


def keyless_batch(length=16, seed=0):
    """Right padding, left padding (under causality its first rows see no kept key) and an example that is all
    padding (every row sees no kept key)."""
    ids, mask = padded_batch(4, length, seed=seed)
    mask[2] = 0
    return ids, mask


@pytest.mark.parametrize("route", ["generic", "tuned"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_routes_match_reference_on_rows_without_keys(variant, causal, route, monkeypatch):
    """The device-generic routes (what CUDA and any other device run; forced here with the device check) and the
    CPU-tuned ones equal the plain reference in float64, forward and backward, with synthesizer weights far from
    uniform, on a batch with rows that see no kept key (left padding under causality, an all-padding example) and a
    loss that reads every row, padded ones included: those rows attend uniformly over all keys, and their gradient is
    the reference's (the softmax's at uniform probabilities) -- not zero, not `lk` times too large (the log-sum-exp a
    fused kernel saves for them rounds to the mask value)."""
    cls = BertSynthesizerLMHeadModel if causal else BertSynthesizerModel
    model = spread_synthesizer(make_model(variant, cls, is_decoder=causal)).double()
    ids, mask = keyless_batch()
    results = {}
    for name, fast in ((route, True), ("reference", False)):
        if route == "generic":
            monkeypatch.setattr(sa, "cpu_tuned", lambda t: not fast)
        set_fast(model, fast)
        model.zero_grad()
        out = outputs(model, ids, mask)
        proj = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * proj).sum().backward()
        results[name] = out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    (out, grads), (ref, ref_grads) = results[route], results["reference"]
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-7, atol=1e-9, msg=name)


# The default run compiles every variant as a causal decoder with padding on both sides (its masks hold everything an
# encoder's do, plus rows without a kept key); encoders compile fullgraph in the export and T5 tests, and here with
# `-m slow`.
@pytest.mark.parametrize(
    "variant, causal", [(v, True) for v in VARIANTS] + [pytest.param(v, False, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_torch_compile_fullgraph_no_recompile(variant, causal):
    """`torch.compile(model, fullgraph=True)` -- no graph break, as stock BERT -- with padding (and a causal decoder
    with left padding), forward and backward equal to eager; a second batch of the same shape reuses the graph
    (`error_on_recompile`)."""
    cls = BertSynthesizerLMHeadModel if causal else BertSynthesizerModel
    model = make_model(variant, cls, is_decoder=causal)
    ids, mask = padded_batch(causal=causal)
    keep = mask[..., None]
    expected = outputs(model, ids, mask) * keep
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = outputs(compiled, ids, mask) * keep
    out.sum().backward()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=2e-5, rtol=1e-4, msg=name)
    ids2, _ = padded_batch(causal=causal, seed=1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        outputs(compiled, ids2, mask).sum().backward()
    torch._dynamo.reset()


DYNAMIC = [("random", True)]


@pytest.mark.parametrize(
    "variant, causal",
    DYNAMIC + [pytest.param(v, c, marks=pytest.mark.slow) for v in VARIANTS for c in (False, True) if (v, c) not in DYNAMIC],
)
def test_torch_compile_dynamic_lengths(variant, causal):
    """`dynamic=True`: batches of other sizes and lengths run on the first graph, no recompilation."""
    cls = BertSynthesizerLMHeadModel if causal else BertSynthesizerModel
    model = make_model(variant, cls, is_decoder=causal)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for n, (batch, length) in enumerate([(3, 12), (4, 16)]):
        ids, mask = padded_batch(batch, length, causal=causal)
        with torch._dynamo.config.patch(error_on_recompile=n > 0):
            out = outputs(compiled, ids, mask)
            out.sum().backward()
        torch.testing.assert_close(out * mask[..., None], outputs(model, ids, mask) * mask[..., None], atol=2e-5, rtol=1e-4)
    torch._dynamo.reset()


def _export_inputs():
    ids, mask = padded_batch(3, 16)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=24)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    other = padded_batch(2, 24, seed=1)  # another batch size, and the full synthesizer_length
    return dict(input_ids=ids, attention_mask=mask), shapes, dict(zip(("input_ids", "attention_mask"), other))


# One variant per route by default (shared, per-example with R, sdpa on features, chunked reference); all with -m slow.
EXPORT_DEFAULT = ("random", "random+vanilla", "dense", "factorized_dense")


@pytest.mark.parametrize(
    "variant", [v if v in EXPORT_DEFAULT else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_torch_export_dynamic_batch_and_length(variant):
    """`torch.export` of a converted encoder for inference (the README's command), dynamic batch and length up to
    `synthesizer_length`: the exported program matches eager on another batch size and length."""
    model = make_model(variant).eval()
    inputs, shapes, other = _export_inputs()
    program = torch.export.export(model, (), inputs, dynamic_shapes=shapes)
    with torch.no_grad():
        expected = model(**other).last_hidden_state
    out = program.module()(**other).last_hidden_state
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


ONNX_DEFAULT = ("random+vanilla",)


@pytest.mark.parametrize(
    "variant", [v if v in ONNX_DEFAULT else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_onnx_export_runs_in_onnxruntime(variant, tmp_path):
    """`torch.onnx.export(..., dynamo=True)` with dynamic batch and length; ONNX Runtime runs the file and matches
    eager within 1e-4 (every variant with `-m slow`)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = make_model(variant).eval()
    inputs, shapes, other = _export_inputs()
    program = torch.onnx.export(model, (), kwargs=inputs, dynamic_shapes=shapes, dynamo=True)
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {k: v.numpy() for k, v in other.items()})[0]
    with torch.no_grad():
        expected = model(**other).last_hidden_state
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["random", pytest.param("dense+vanilla", marks=pytest.mark.slow)])
def test_t5_torch_compile_fullgraph(variant):
    """T5 (encoder + causal decoder with the relative position bias, padding on both sides): one graph, as stock T5,
    forward and backward equal to eager."""
    from hf_synthesizer import T5SynthesizerConfig, T5SynthesizerForConditionalGeneration

    torch.manual_seed(0)
    config = T5SynthesizerConfig(
        vocab_size=50, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, synthesizer_variant=variant, synthesizer_length=16,
    )
    model = T5SynthesizerForConditionalGeneration(config)
    ids, mask = padded_batch(3, 12)
    labels, decoder_mask = padded_batch(3, 7, seed=1)
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=decoder_mask)
    expected = model(**kwargs).loss
    torch._dynamo.reset()
    loss = torch.compile(model, fullgraph=True, backend="aot_eager")(**kwargs).loss
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_dynamic_cache_decoding_compiles_to_one_graph():
    """A decoding step with a DynamicCache (the offset is the cache's length, a Python int) compiles fullgraph and
    gives eager's logits. (A StaticCache: see test_static_cache_decoding_step_compiles_to_one_graph.)"""
    from transformers import DynamicCache

    model = make_model("random+vanilla", BertSynthesizerLMHeadModel, is_decoder=True).eval()
    ids, mask = padded_batch(2, 6)

    def step(model, ids, mask, cache):
        return model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    logits = {}
    with torch.no_grad():
        for name, fn in (("compiled", compiled), ("eager", step)):
            cache = DynamicCache()
            first = fn(model, ids, mask, cache)
            next_ids = first[:, -1:].argmax(-1)
            logits[name] = fn(model, next_ids, torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), cache)
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=2e-5, rtol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["random+vanilla", pytest.param("dense", marks=pytest.mark.slow)])
def test_static_cache_decoding_step_compiles_to_one_graph(variant):
    """A T5 decoding step with a StaticCache compiles fullgraph: the cache's offset stays an on-device tensor (no
    host read, no graph break; CUDA graphs possible) and the steps give eager's logits. (A BERT decoder's own
    embeddings slice positions by the offset, a host read in transformers.)"""
    from test_decoding import CACHE, build
    from transformers import EncoderDecoderCache, StaticCache

    model = build("t5", variant).float()
    ids, mask = padded_batch(2, 6)
    ids = ids % 40
    targets = torch.randint(2, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)

    def step(tokens, cache):
        out = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tokens, use_cache=True,
                    **{CACHE: cache})
        return out.logits

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    logits = {}
    with torch.no_grad():
        for name, fn in (("eager", step), ("compiled", compiled)):
            cache = EncoderDecoderCache(
                StaticCache(config=model.config, max_cache_len=12), StaticCache(config=model.config, max_cache_len=6)
            )
            logits[name] = torch.cat([fn(targets[:, :2], cache)] + [fn(targets[:, i : i + 1], cache) for i in (2, 3)], 1)
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=2e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_relu_matches_aten():
    """Dense's activation `relu` (a custom backward, so that inductor saves no boolean mask) against `F.relu` in
    float64: the same values and the same gradient, exactly, at exact zeros too (aten's gradient there is 0, whatever
    the sign of the zero) -- eager (`relu` is `F.relu` there, `_ReLU` is what it compiles to), compiled with inductor's
    decompositions and partitioner, and under `torch.func`."""
    from torch.nn import functional as F

    from hf_synthesizer.modeling.synthesizer_math import _ReLU, relu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 8, dtype=torch.float64, generator=g)
    x[0, 0, :4] = torch.tensor([0.0, -0.0, 1e-300, -1e-300], dtype=torch.float64)
    x[1, :, :3] = 0.0
    grad = torch.randn(x.shape, dtype=torch.float64, generator=g)
    expected_x = x.clone().requires_grad_()
    expected = F.relu(expected_x)
    expected.backward(grad)
    torch._dynamo.reset()
    for fn in (relu, _ReLU.apply, torch.compile(relu, fullgraph=True, backend="aot_eager_decomp_partition")):
        xs = x.clone().requires_grad_()
        out = fn(xs)
        out.backward(grad)
        assert torch.equal(out, expected) and torch.equal(xs.grad, expected_x.grad)
    torch._dynamo.reset()
    per_example = torch.func.vmap(torch.func.grad(lambda t: (_ReLU.apply(t) * t.sin()).sum()))(x)
    assert torch.equal(per_example, torch.func.vmap(torch.func.grad(lambda t: (F.relu(t) * t.sin()).sum()))(x))
    with torch.no_grad():
        assert torch.equal(relu(x), F.relu(x))


def test_relu_forward_mode_ad():
    """Forward-mode AD (`torch.autograd.forward_ad`, `torch.func.jvp`/`jacfwd`/`hessian`) goes through dense's `relu`
    as through `F.relu`: the same tangents and second derivatives in float64, exact zeros included. `_ReLU` has no
    `jvp` (Dynamo cannot trace one), so when eager `relu` went through it, a primal that requires grad (a parameter, or
    the output of a layer with parameters) raised NotImplementedError where `F.relu` works, e.g. forward AD through a
    dense model's reference route."""
    import torch.autograd.forward_ad as fwAD
    from torch.nn import functional as F

    from hf_synthesizer.modeling.synthesizer_math import relu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g)
    x[0, :3] = torch.tensor([0.0, -0.0, 1e-300], dtype=torch.float64)
    tangent = torch.randn(x.shape, dtype=torch.float64, generator=g)
    tangents = []
    for fn in (relu, F.relu):
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(x.clone().requires_grad_(), tangent))
            tangents.append(fwAD.unpack_dual(out).tangent)
    assert torch.equal(tangents[0], tangents[1])
    hessians = [torch.func.hessian(lambda t, fn=fn: (fn(t) * t.sin()).sum())(x[0]) for fn in (relu, F.relu)]
    assert torch.equal(hessians[0], hessians[1])

    model = make_model("dense+random").double()
    set_fast(model, False)  # the reference route, dense_logits: no sdpa kernel, which has no forward AD
    ids, mask = padded_batch()
    embeds = model.get_input_embeddings()(ids).detach()
    with fwAD.dual_level():
        out = model(inputs_embeds=fwAD.make_dual(embeds, torch.ones_like(embeds)), attention_mask=mask)
        assert torch.isfinite(fwAD.unpack_dual(out.last_hidden_state).tangent).all()


def saved_boolean_shapes(model, ids, mask):
    """Shapes of the boolean tensors a compiled training step saves for its backward, with inductor's decompositions
    and partitioner (what `torch.compile` does by default), without inductor's C++ compile."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    shapes = []

    def forward_compiler(gm, example_inputs):
        (outputs,) = [node.args[0] for node in gm.graph.nodes if node.op == "output"]
        shapes.extend(tuple(v.shape) for v in (o.meta.get("val") for o in outputs) if v is not None and v.dtype == torch.bool)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(
        fw_compiler=forward_compiler, bw_compiler=lambda gm, _: make_boxed_func(gm.forward),
        partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table(),
    )
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True, backend=backend)(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    torch._dynamo.reset()
    return shapes


@pytest.mark.parametrize(
    "variant", [v if v in ("dense", "dense+random") else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_compiled_training_saves_no_large_boolean(variant):
    """Inductor's CPU code writes boolean tensors about 20x slower than eager (torch 2.13), so a compiled training step
    that saves a hidden-sized boolean for its backward -- aten's ReLU backward does, dense's W1 activation -- trains
    slower than eager (benchmarks/RESULTS.md, "Compiled dense"). Only masks the size of the padding mask may be saved."""
    model = make_model(variant)
    ids, mask = padded_batch()
    for m in (None, mask):
        shapes = saved_boolean_shapes(model, ids, m)
        assert all(torch.Size(s).numel() <= mask.numel() for s in shapes), (m is not None, shapes)
