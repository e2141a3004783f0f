"""Attention maps: PNG files per synthesizer layer (+ mixture weights), exact softmax(R) for random variants,
averaged probabilities for input-dependent ones, and the CLI subcommand."""

import argparse

import pytest
import torch

import hf_synthesizer
from hf_synthesizer.conversion import attention_maps
from hf_synthesizer.conversion.attention_maps import mixture_weight_table, synthesized_attention, write_attention_maps

from conftest import tiny_bert_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def model_for(variant, **kwargs):
    torch.manual_seed(0)
    config = hf_synthesizer.BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant=variant,
                                                  **kwargs)
    return hf_synthesizer.BertSynthesizerModel(config).eval()


def assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000


@pytest.mark.parametrize(
    "variant, extra", [("random", []), ("dense+vanilla", ["mixture_weights.png"]),
                       ("factorized_random+random", ["mixture_weights.png"])]
)
def test_writes_one_png_per_synthesizer_layer(tmp_path, variant, extra):
    paths = write_attention_maps(model_for(variant), tmp_path, length=16)
    assert_pngs(paths, ["layer_00.png", "layer_01.png", *extra])


def test_only_synthesized_layers_are_drawn(tmp_path):
    paths = write_attention_maps(model_for("random", synthesizer_layers=[1]), tmp_path)
    assert_pngs(paths, ["layer_00.png"])


def test_random_maps_are_softmax_of_r():
    model = model_for("random")
    maps = synthesized_attention(model, length=10)
    r = model.encoder.layer[1].attention.self.synthesizer.random_r
    probs, how = maps["encoder.layer.1.attention.self.synthesizer"]
    torch.testing.assert_close(probs, torch.softmax(r[:, :10, :10], -1))
    assert "input-independent" in how


def test_dense_maps_average_real_positions_only():
    model = model_for("dense")
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    probs, how = synthesized_attention(model, 12, ids, mask)["encoder.layer.0.attention.self.synthesizer"]
    assert probs.shape == (4, 12, 12) and "mean over 3 inputs" in how
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 12))  # every query row averages distributions
    single, _ = synthesized_attention(model, 12, ids[:1, :8], mask[:1, :8])["encoder.layer.0.attention.self.synthesizer"]
    assert not torch.allclose(probs[:, :8, :8], single)  # the other two inputs count too


def test_mixture_weight_table():
    model = model_for("random+vanilla")
    names, components, weights = mixture_weight_table(model)
    assert components == ("random", "vanilla") and weights.shape == (2, 2, 4)
    torch.testing.assert_close(weights, torch.full((2, 2, 4), 0.5))
    assert mixture_weight_table(model_for("dense")) is None


def test_cli_subcommand(tmp_path, stock_bert_dir):
    model = hf_synthesizer.BertSynthesizerModel.from_pretrained(stock_bert_dir,
                                                                attn_implementation="synthesizer_dense+vanilla")
    model.save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    attention_maps.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attention-maps", str(tmp_path / "model"), "-o", str(tmp_path / "maps"),
                              "--length", "12", "--num-inputs", "2"])
    assert args.func(args) == 0
    assert_pngs(sorted((tmp_path / "maps").iterdir()), ["layer_00.png", "layer_01.png", "mixture_weights.png"])
