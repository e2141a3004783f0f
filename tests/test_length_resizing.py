"""resize_synthesizer_length: interpolation round trips, exact 'extend' behaviour on short inputs, the config
and error messages following the new limit, and a saved resized model reloading at the new length."""

import pytest
import torch
from torch.nn import functional as F

import hf_synthesizer
from hf_synthesizer.length_resizing import resize_synthesizer_length

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


def test_factorized_dense_split_is_recomputed():
    model = model_for("factorized_dense+vanilla", length=16)
    resize_synthesizer_length(model, 24)
    assert model.config.factorized_dense_split == [4, 6] and model.config.synthesizer_factorized_dense_split is None
    synthesizer = model.bert.encoder.layer[1].attention.self.synthesizer
    assert synthesizer.factorized_dense_a.out_features == 4 * 4 and synthesizer.factorized_dense_b.out_features == 4 * 6
    assert model(torch.randint(5, 100, (2, 24))).logits.shape == (2, 24, 101)
    resize_synthesizer_length(model, 24 * 1, factorized_dense_split=[3, 8])  # same length: split unchanged
    resize_synthesizer_length(model, 12, factorized_dense_split=[2, 6])
    assert model.config.synthesizer_factorized_dense_split == [2, 6]
    with pytest.raises(ValueError, match="a \\* b == new_length"):
        resize_synthesizer_length(model, 10, factorized_dense_split=[2, 6])
    with pytest.raises(ValueError, match="only be resized with method='interpolate'"):
        resize_synthesizer_length(model, 10, method="extend")


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
