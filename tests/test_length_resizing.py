"""resize_synthesizer_length: interpolation round trips, exact 'extend' behaviour on short inputs, the config
and error messages following the new limit, and a saved resized model reloading at the new length."""

import pytest
import torch
from torch.nn import functional as F

import hf_synthesizer
from hf_synthesizer.modeling.length_resizing import resize_synthesizer_length

from conftest import tiny_bert_config

LENGTH_SIZED = "random+fixed_random+factorized_random+dense+vanilla"


def model_for(variant, length=16, positions=64, **kwargs):
    torch.manual_seed(0)
    config = hf_synthesizer.BertSynthesizerConfig(
        **tiny_bert_config(max_position_embeddings=positions).to_dict(),
        synthesizer_variant=variant, synthesizer_length=length, **kwargs,
    )
    model = hf_synthesizer.BertSynthesizerForMaskedLM(config).eval()
    with torch.no_grad():  # larger than the near-uniform init, so resampling errors would show
        for module in model.modules():
            if isinstance(module, hf_synthesizer.SynthesizerLogits):
                for name in ("random_r", "fixed_random_r", "factorized_random_r1", "factorized_random_r2",
                             "dense_w2", "dense_b2"):
                    if not hasattr(module, name):
                        continue
                    tensor = getattr(module, name)
                    tensor.copy_(smooth_like(tensor, square=name.endswith("random_r")))
    return model


def smooth_like(tensor, square):
    """Random values varying smoothly along the length axes (as learned or calibrated patterns do), so that
    resampling errors are interpolation errors, not aliasing of white noise."""
    if square:  # (H, L, L)
        coarse = torch.randn(tensor.shape[0], 1, 4, 4)
        return F.interpolate(coarse, size=tensor.shape[-2:], mode="bicubic", align_corners=True)[:, 0]
    if tensor.shape[-1] < tensor.shape[-2]:  # (H, L, k): length on the middle axis
        return smooth_like(tensor.transpose(1, 2), False).transpose(1, 2)
    coarse = torch.randn(1, tensor[..., 0].numel(), 4)
    return F.interpolate(coarse, size=tensor.shape[-1], mode="linear", align_corners=True).view(tensor.shape)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("grown", [31, 23])
def test_grow_then_shrink_returns_close_to_original(grown):
    model = model_for(LENGTH_SIZED)
    before = snapshot(model)
    ids = torch.randint(5, 100, (2, 12))
    out = model(ids).logits
    resize_synthesizer_length(model, grown)
    assert model.config.synthesizer_length == grown
    assert model.bert.encoder.layer[0].attention.self.synthesizer.random_r.shape == (4, grown, grown)
    resize_synthesizer_length(model, 16)
    after = model.state_dict()
    # (L-1) | (L'-1): exact; otherwise linear interpolation there and back loses a little (relative norm).
    tol = 1e-5 if grown == 31 else 0.05
    for key, value in before.items():
        assert after[key].shape == value.shape
        assert (after[key] - value).norm() <= tol * value.norm().clamp_min(1e-6), key
    assert (model(ids).logits - out).norm() <= tol * out.norm()


def test_extend_keeps_short_inputs_exactly():
    model = model_for(LENGTH_SIZED)
    before = snapshot(model)
    ids = torch.randint(5, 100, (2, 12))
    out = model(ids).logits
    resize_synthesizer_length(model, 40, method="extend")
    torch.testing.assert_close(model(ids).logits, out)
    synthesizer = model.bert.encoder.layer[0].attention.self.synthesizer
    r = synthesizer.random_r
    torch.testing.assert_close(r[:, 20, 22], r[:, 15, 17])  # continued along the diagonal
    assert model(torch.randint(5, 100, (2, 40))).logits.shape == (2, 40, 101)
    resize_synthesizer_length(model, 16, method="extend")
    for key, value in before.items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_saved_model_reloads_at_new_length_and_error_names_new_limit(tmp_path):
    model = model_for(LENGTH_SIZED)
    resize_synthesizer_length(model, 20)
    with pytest.raises(ValueError, match=r"Sequence length 21 exceeds the synthesizer length 20"):
        model(torch.randint(5, 100, (1, 21)))
    model.save_pretrained(tmp_path)
    reloaded = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.synthesizer_length == 20
    ids = torch.randint(5, 100, (2, 20))
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match=r"synthesizer length 20 \(config.synthesizer_length\)"):
        reloaded(torch.randint(5, 100, (1, 21)))


def factorized_dense_logits_of(model, hidden):
    from hf_synthesizer.modeling.synthesizer_math import factorized_dense_logits

    synthesizer = model.bert.encoder.layer[1].attention.self.synthesizer
    fa, fb = synthesizer.factorized_dense_a, synthesizer.factorized_dense_b
    return factorized_dense_logits(fa(hidden), fb(hidden), 4, synthesizer.length)


def test_factorized_dense_refuses_resampling_and_extends_exactly():
    """S_ij = A_i[j mod a] B_i[j // a] has no resampled form along the key axis j: interpolation (and a length that is
    not a multiple of a) raise and say what to do; 'extend' to a multiple of a keeps every key below min(L, L')."""
    model = model_for("factorized_dense+vanilla", length=16).double()  # split [4, 4]
    before = snapshot(model)
    for length, method in ((24, "interpolate"), (17, "interpolate"), (18, "extend"), (17, "extend")):
        with pytest.raises(ValueError, match=r"cannot be resampled along the key axis j.*method='extend' to a multiple "
                                             r"of a=4 \(e\.g\. (24|16 or 20)\)"):
            resize_synthesizer_length(model, length, method=method)
    for key, value in before.items():  # a refused resize changes nothing
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    hidden = torch.randn(2, 5, 32, dtype=torch.float64)
    original = factorized_dense_logits_of(model, hidden)
    ids = torch.randint(5, 100, (2, 16))
    out = model(ids).logits
    resize_synthesizer_length(model, 24, method="extend")
    assert model.config.factorized_dense_split == [4, 6] and model.config.synthesizer_factorized_dense_split is None
    torch.testing.assert_close(factorized_dense_logits_of(model, hidden)[..., :16], original, rtol=0, atol=0)
    torch.testing.assert_close(model(ids).logits, out, rtol=0, atol=0)
    assert model(torch.randint(5, 100, (2, 24))).logits.shape == (2, 24, 101)
    resize_synthesizer_length(model, 12, method="extend")
    assert model.config.synthesizer_factorized_dense_split == [4, 3]  # not the default [3, 4]: a stays 4
    torch.testing.assert_close(factorized_dense_logits_of(model, hidden), original[..., :12], rtol=0, atol=0)
    torch.testing.assert_close(model(ids[:, :12]).logits, model_for("factorized_dense+vanilla", length=16).double()(
        ids[:, :12]).logits, rtol=0, atol=0)


def causal_pair(variant, family):
    """Two float64 causal models equal everywhere except above the diagonal of R (never attended to in a causal
    model; std 3 there). Factorized random with rank L: R1 = I, R2 = R^T, so its R is any matrix."""
    length = 16
    torch.manual_seed(0)
    if family == "bert":
        config = hf_synthesizer.BertSynthesizerConfig(
            **tiny_bert_config(max_position_embeddings=64, is_decoder=True).to_dict(), synthesizer_variant=variant,
            synthesizer_length=length, synthesizer_factorized_rank=length,
        )
        model = hf_synthesizer.BertSynthesizerLMHeadModel(config)
    else:
        config = hf_synthesizer.T5SynthesizerConfig(
            vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4, dropout_rate=0.0,
            synthesizer_variant=variant, synthesizer_length=length, synthesizer_stacks=["decoder"],
        )
        model = hf_synthesizer.T5SynthesizerForConditionalGeneration(config)
    models = []
    for upper_seed in (1, 2):
        copy = type(model)(config).double().eval()
        copy.load_state_dict(model.state_dict())
        torch.manual_seed(0)  # the same lower triangle in both
        upper = torch.ones(length, length).triu(1).bool()
        with torch.no_grad():
            for module in copy.modules():
                if not isinstance(module, hf_synthesizer.SynthesizerLogits) or module.is_vanilla:
                    continue
                r = torch.randn(module.num_heads, length, length, dtype=torch.float64)
                r[:, upper] = torch.randn(module.num_heads, int(upper.sum()), dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(upper_seed)) * 3
                for name in ("random_r", "fixed_random_r"):
                    if hasattr(module, name):
                        getattr(module, name).copy_(r)
                if hasattr(module, "factorized_random_r1"):
                    module.factorized_random_r1.copy_(torch.eye(length, dtype=torch.float64).expand_as(r))
                    module.factorized_random_r2.copy_(r.transpose(1, 2))
        models.append(copy)
    return models


def causal_outputs(model, ids):
    if isinstance(model, hf_synthesizer.BertSynthesizerLMHeadModel):
        return model(ids).logits
    return model(input_ids=ids, decoder_input_ids=ids).logits


@pytest.mark.parametrize(
    "variant, family",
    [("random", "bert"), ("fixed_random", "bert"), ("factorized_random", "bert"), ("random", "t5")],
)
def test_causal_resize_reads_only_the_attended_triangle(variant, family):
    """A causal model never reads R above the diagonal, so two causal models that differ only there must stay equal
    after any resize (bilinear interpolation across the diagonal once moved up to 0.36 of attention probability).
    Growing then shrinking back with (L-1) | (L'-1) still returns the used triangle exactly."""
    first, second = causal_pair(variant, family)
    ids = torch.randint(5, 100, (2, 16))
    torch.testing.assert_close(causal_outputs(first, ids), causal_outputs(second, ids), rtol=0, atol=1e-12)
    original = causal_outputs(first, ids)
    for length in (23, 11, 31, 16):
        for model in (first, second):
            resize_synthesizer_length(model, length)
        ids_new = torch.randint(5, 100, (2, length))
        torch.testing.assert_close(
            causal_outputs(first, ids_new), causal_outputs(second, ids_new), rtol=0, atol=1e-12,
            msg=lambda m, n=length: f"after resizing to {n}: {m}",
        )
    round_trip, _ = causal_pair(variant, family)
    resize_synthesizer_length(round_trip, 31)
    resize_synthesizer_length(round_trip, 16)
    torch.testing.assert_close(causal_outputs(round_trip, ids), original, rtol=0, atol=1e-10)


def test_cannot_grow_past_absolute_position_embeddings():
    model = model_for("random", length=16, positions=24)
    with pytest.raises(ValueError, match="max_position_embeddings=24"):
        resize_synthesizer_length(model, 25)
    resize_synthesizer_length(model, 24)
    assert model.config.synthesizer_length == 24


def test_resize_is_a_model_method(tmp_path):
    from conftest import tiny_bert_config

    from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerModel

    model = BertSynthesizerModel(BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant="random"))
    assert model.resize_synthesizer_length(12) is model
    assert model.config.synthesizer_length == 12
    assert model.encoder.layer[0].attention.self.synthesizer.random_r.shape == (4, 12, 12)
