"""`hf-synthesizer convert|info|card`: conversions keep the source's weights, options are named like the config
fields, outputs are complete checkpoints, and bad inputs get a clear message and exit code 2 (no traceback)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from hub_fakes import BERT_CODE_FILES
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer

import hf_synthesizer
from hf_synthesizer import cli
from hf_synthesizer.modeling.configuration_synthesizer import SynthesizerFields
from hf_synthesizer.modeling.hub_mixin import GENERATED_CARD_MARKER

CODE_FILES = BERT_CODE_FILES
MINILM_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
# What else the sentence-transformers checkpoint holds besides its weights (and README.md, replaced by our card).
MINILM_SENTENCE_TRANSFORMERS_FILES = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                                      "data_config.json", "1_Pooling"}


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def config_of(path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


@pytest.fixture(scope="module")
def minilm_random(minilm_dir, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("cli") / "minilm_random"
    assert run_cli("convert", minilm_dir, dst, "--attn_implementation", "synthesizer_random",
                   "--synthesizer_length", 64, "--head", "masked-lm",
                   "--base_model", "sentence-transformers/all-MiniLM-L6-v2") == 0
    return dst


def test_convert_real_minilm_checkpoint(minilm_dir, minilm_random, capsys):
    files = {p.name for p in minilm_random.iterdir()}
    assert files == ({"config.json", "model.safetensors", "README.md"} | CODE_FILES | MINILM_TOKENIZER_FILES
                     | MINILM_SENTENCE_TRANSFORMERS_FILES)
    # sentence-transformers would feed up to 256 tokens: lowered to the converted model's limit.
    assert json.loads((minilm_random / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    config = config_of(minilm_random)
    assert config["model_type"] == "bert_synthesizer"
    assert config["synthesizer_variant"] == "random" and config["synthesizer_length"] == 64
    assert config["architectures"] == ["BertSynthesizerForMaskedLM"]
    # The source's weights are carried over unchanged; query/key are gone (a pure variant does not use them).
    source = load_file(minilm_dir / "model.safetensors")
    converted = load_file(minilm_random / "model.safetensors")
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.3.attention.self.value.weight",
                 "encoder.layer.5.output.dense.weight"):
        torch.testing.assert_close(converted["bert." + name], source[name], rtol=0, atol=0)
    assert not any(".query." in k or ".key." in k for k in converted)
    assert converted["bert.encoder.layer.0.attention.self.synthesizer.random_r"].shape == (12, 64, 64)
    # The tokenizer came along, capped at the synthesizer length.
    tokenizer = AutoTokenizer.from_pretrained(minilm_random)
    assert tokenizer.model_max_length == 64
    assert len(tokenizer("word " * 200, truncation=True)["input_ids"]) == 64
    card = ModelCard.load(minilm_random / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.pipeline_tag == "fill-mask"


def test_converted_sentence_transformer_keeps_its_modules(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 is a sentence-transformers checkpoint: Transformer -> mean Pooling -> Normalize, 256 tokens.
    Converted, it must load as the same pipeline (unit-norm embeddings, not 4.95), and --calibrate_on must bring its
    embeddings closer to the stock model's than a plain conversion."""
    from sentence_transformers import SentenceTransformer

    words = "the a cat dog sat ran on under mat house quickly slowly near big small red".split()
    generator = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (9,), generator=generator)) for _ in range(96)]
    (tmp_path / "texts.txt").write_text("\n".join(texts[:64]) + "\n")
    common = ("--attn_implementation", "synthesizer_random", "--synthesizer_length", 128)
    assert run_cli("convert", minilm_dir, tmp_path / "plain", *common) == 0
    texts_file = tmp_path / "texts.txt"
    assert run_cli("convert", minilm_dir, tmp_path / "calibrated", *common, "--calibrate_on", texts_file) == 0
    heldout = texts[64:]
    stock = SentenceTransformer(str(minilm_dir), device="cpu").encode(heldout, convert_to_tensor=True)
    cosine = {}
    for name in ("plain", "calibrated"):
        model = SentenceTransformer(str(tmp_path / name), device="cpu")
        assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Normalize"]
        assert model.max_seq_length == 128  # the source's 256, lowered to synthesizer_length
        embeddings = model.encode(heldout, convert_to_tensor=True)
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(heldout)))
        cosine[name] = (embeddings * stock).sum(-1).mean().item()
    print(cosine)
    assert cosine["calibrated"] > cosine["plain"] + 0.05, cosine


def test_every_synthesizer_field_is_an_option_with_its_name():
    configs = [hf_synthesizer.BertSynthesizerConfig, hf_synthesizer.T5SynthesizerConfig]
    fields = {f.name for c in configs for f in dataclasses.fields(c) if f.name.startswith("synthesizer_")}
    fields.discard("synthesizer_variant")  # chosen with --attn_implementation
    assert {f.name for f in dataclasses.fields(SynthesizerFields)} - {"synthesizer_variant"} <= fields
    options = cli.build_parser()._subparsers._group_actions[0].choices["convert"]._option_string_actions
    assert all(f"--{name}" in options and options[f"--{name}"].dest == name for name in fields)
    # Help comes from the config's documentation of the field.
    assert options["--synthesizer_factorized_rank"].help == "Rank `k` of factorized random: `R = R1 R2^T` with `R1, R2` of shape `L x k`."


def test_convert_options_reach_the_config(stock_bert_dir, tmp_path):
    assert run_cli("convert", stock_bert_dir, tmp_path / "a", "--attn_implementation", "synthesizer_vanilla+dense",
                   "--synthesizer_length", 12, "--synthesizer_dense_shared_w2", "--synthesizer_layers", 1,
                   "--synthesizer_mixture", "gate", "--synthesizer_vanilla_backend", "eager",
                   "--head", "token-classification", "--num_labels", 5) == 0
    config = config_of(tmp_path / "a")
    assert config["synthesizer_variant"] == "dense+vanilla"
    assert (config["synthesizer_length"], config["synthesizer_dense_shared_w2"], config["synthesizer_layers"]) == (
        12, True, [1])
    assert (config["synthesizer_mixture"], config["synthesizer_vanilla_backend"]) == ("gate", "eager")
    assert config["architectures"] == ["BertSynthesizerForTokenClassification"] and len(config["id2label"]) == 5
    assert run_cli("convert", stock_bert_dir, tmp_path / "b", "--attn_implementation", "synthesizer_factorized_dense",
                   "--synthesizer_factorized_dense_split", 4, 6, "--synthesizer_factorized_rank", 3) == 0
    config = config_of(tmp_path / "b")
    assert config["synthesizer_factorized_dense_split"] == [4, 6] and config["synthesizer_factorized_rank"] == 3
    # Default head: the source's architecture (the stock fixture is BertForPreTraining).
    assert config["architectures"] == ["BertSynthesizerForPreTraining"]


def test_convert_synthesizer_checkpoint_to_another_variant_and_head(stock_bert_dir, tmp_path, capsys):
    assert run_cli("convert", stock_bert_dir, tmp_path / "random", "--attn_implementation", "synthesizer_random",
                   "--head", "masked-lm") == 0
    capsys.readouterr()
    assert run_cli("convert", tmp_path / "random", tmp_path / "mixed", "--attn_implementation",
                   "synthesizer_random+vanilla", "--head", "sequence-classification", "--num_labels", 3) == 0
    out = capsys.readouterr().out
    source, mixed = load_file(tmp_path / "random" / "model.safetensors"), load_file(tmp_path / "mixed" / "model.safetensors")
    key = "bert.encoder.layer.1.attention.self.synthesizer.random_r"
    torch.testing.assert_close(mixed[key], source[key], rtol=0, atol=0)  # learned R carried over
    assert "bert.encoder.layer.1.attention.self.query.weight" in mixed  # new, reported as initialised
    assert "initialised 2 synthesizer parameters" in out  # the mixture weights (R came along)
    assert "8 query/key weights (new: the vanilla term of random+vanilla)" in out
    assert config_of(tmp_path / "mixed")["synthesizer_variant"] == "random+vanilla"
    # Without --attn_implementation a synthesizer checkpoint keeps its variant (here: re-saved as another head).
    assert run_cli("convert", tmp_path / "random", tmp_path / "same", "--head", "base") == 0
    assert config_of(tmp_path / "same")["synthesizer_variant"] == "random"
    assert config_of(tmp_path / "same")["architectures"] == ["BertSynthesizerModel"]


def test_cli_errors_are_clear(stock_bert_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "file.txt").write_text("x")
    ok = tmp_path / "ok"
    assert run_cli("convert", stock_bert_dir, ok, "--attn_implementation", "synthesizer_random") == 0
    cases = [
        (("info", tmp_path / "missing"), "does not exist"),
        (("info", tmp_path / "file.txt"), "is a file, not a checkpoint folder"),
        (("info", tmp_path / "empty"), "has no config.json"),
        (("info", tmp_path / "gpt2"), "holds a 'gpt2' checkpoint; hf-synthesizer works on BERT and T5"),
        (("card", tmp_path / "gpt2"), "'gpt2'"),
        (("card", stock_bert_dir), "is a vanilla bert checkpoint; convert it first"),
        (("convert", tmp_path / "gpt2", tmp_path / "x", "--attn_implementation", "synthesizer_random"), "'gpt2'"),
        (("convert", stock_bert_dir, tmp_path / "x"), "choose the variant with --attn_implementation"),
        (("convert", stock_bert_dir, tmp_path / "x", "--attn_implementation", "synthesizer_bogus"),
         "Unknown synthesizer component(s) ['bogus']"),
        (("convert", stock_bert_dir, tmp_path / "x", "--attn_implementation", "sdpa"), "synthesizer_<variant>"),
        (("convert", stock_bert_dir, tmp_path / "x", "--attn_implementation", "synthesizer_factorized_dense",
          "--synthesizer_factorized_dense_split", 5, 5), "a * b == synthesizer_length (24)"),
        (("convert", stock_bert_dir, tmp_path / "x", "--attn_implementation", "synthesizer_random",
          "--synthesizer_layers", 7), "outside the model's 2 layers"),
        (("convert", stock_bert_dir, ok, "--attn_implementation", "synthesizer_random"), "pass --overwrite"),
        (("convert", ok, tmp_path / "x", "--calibrate_on", tmp_path / "file.txt"), "already a synthesizer checkpoint"),
    ]
    for argv, message in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # failed conversions leave nothing half-written


def test_info_reports_variant_layers_and_parameter_counts(stock_bert_dir, tmp_path, capsys):
    assert run_cli("convert", stock_bert_dir, tmp_path / "fr", "--attn_implementation", "synthesizer_fixed_random",
                   "--synthesizer_layers", 0, "--synthesizer_length", 16) == 0
    capsys.readouterr()
    assert run_cli("info", tmp_path / "fr", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "fixed_random" and info["synthesizer_length"] == 16
    assert info["layers"] == {"encoder": [["fixed_random"], ["vanilla"]]}
    assert info["weight_files"] == ["model.safetensors"] and set(info["code_files"]) == CODE_FILES
    assert info["auto_map_complete"] is True
    # Counts agree with the real model (the source's head: pretraining); fixed random is a frozen heads*L*L buffer.
    assert info["head"] == "pretraining"
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "fr")
    assert info["parameters"]["synthesizer"] == 0
    assert info["parameters"]["synthesizer_buffers"] == 4 * 16 * 16
    assert info["parameters"]["total"] == info["parameters"]["rest"] == sum(p.numel() for p in model.parameters())
    assert run_cli("info", tmp_path / "fr") == 0
    text = capsys.readouterr().out
    assert "variant: fixed_random" in text and "layer 0: fixed_random" in text and "layer 1: vanilla" in text
    assert "1,024 frozen" in text


def test_info_counts_trainable_synthesizer_parameters(stock_bert_dir, tmp_path, capsys):
    assert run_cli("convert", stock_bert_dir, tmp_path / "f", "--attn_implementation", "synthesizer_factorized_random",
                   "--synthesizer_factorized_rank", 2, "--head", "base") == 0
    capsys.readouterr()
    assert run_cli("info", tmp_path / "f", "--json") == 0
    params = json.loads(capsys.readouterr().out)["parameters"]
    model = AutoModel.from_pretrained(tmp_path / "f")
    assert params["synthesizer"] == 2 * 2 * (4 * 24 * 2)  # layers * (R1, R2) * heads * L * k
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["rest"] == params["total"] - params["synthesizer"]


def test_card_command_writes_and_respects_cards(stock_bert_dir, tmp_path, capsys):
    path = tmp_path / "c"
    assert run_cli("convert", stock_bert_dir, path, "--attn_implementation", "synthesizer_dense",
                   "--head", "sequence-classification") == 0
    (path / "eval_results.json").write_text(json.dumps(
        {"epoch": 3.0, "eval_accuracy": 0.625, "eval_loss": 0.7, "eval_runtime": 1.2, "eval_samples_per_second": 9.0}))
    assert run_cli("card", path, "--base_model", "google-bert/bert-base-uncased", "--dataset", "imdb",
                   "--model_name", "me/dense-imdb") == 0
    card = ModelCard.load(path / "README.md")
    assert card.data.base_model == "google-bert/bert-base-uncased" and card.data.datasets == ["imdb"]
    metrics = card.data.to_dict()["model-index"][0]["results"]
    assert sorted((m["type"], m["value"]) for r in metrics for m in r["metrics"]) == [
        ("accuracy", 0.625), ("loss", 0.7)]
    assert "# me/dense-imdb" in card.text
    # Regenerating keeps what only the card knew.
    assert run_cli("card", path) == 0
    assert ModelCard.load(path / "README.md").data.base_model == "google-bert/bert-base-uncased"
    # A user's card is not overwritten without --force.
    (path / "README.md").write_text("my card")
    capsys.readouterr()
    assert run_cli("card", path) == 2 and "--force" in capsys.readouterr().err
    assert (path / "README.md").read_text() == "my card"
    assert run_cli("card", path, "--force") == 0
    assert GENERATED_CARD_MARKER in (path / "README.md").read_text()


def test_console_command_runs_as_a_module(stock_bert_dir, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "hf_synthesizer", "info", str(stock_bert_dir)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stock checkpoint" in result.stdout and "variant: vanilla" in result.stdout
    help_text = cli.build_parser().format_help()
    assert all(name in help_text for name in ("convert", "info", "card"))
    assert hf_synthesizer.__file__.startswith(str(repo))


def test_convert_resizes_a_saved_synthesizer_to_a_new_length(stock_bert_dir, tmp_path):
    src = tmp_path / "random24"
    assert run_cli("convert", stock_bert_dir, src, "--attn_implementation", "synthesizer_random") == 0
    assert run_cli("convert", src, tmp_path / "random12", "--synthesizer_length", 12) == 0
    assert config_of(tmp_path / "random12")["synthesizer_length"] == 12
    before = load_file(src / "model.safetensors")["bert.encoder.layer.0.attention.self.synthesizer.random_r"]
    after = load_file(tmp_path / "random12" / "model.safetensors")["bert.encoder.layer.0.attention.self.synthesizer.random_r"]
    assert after.shape == (4, 12, 12)
    # interpolated from the saved matrix (its corners are kept), not re-initialised
    torch.testing.assert_close(after[:, 0, 0], before[:, 0, 0])
    torch.testing.assert_close(after[:, -1, -1], before[:, -1, -1])


def test_convert_calibrate_on_initialises_from_the_stock_attention(minilm_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"sentence number {i} talks about attention and synthesizers." for i in range(16)))
    plain, calibrated = tmp_path / "plain", tmp_path / "calibrated"
    common = ("--attn_implementation", "synthesizer_random", "--synthesizer_length", 32)
    assert run_cli("convert", minilm_dir, plain, *common) == 0
    assert run_cli("convert", minilm_dir, calibrated, *common, "--calibrate_on", texts) == 0
    key = "encoder.layer.0.attention.self.synthesizer.random_r"
    r_plain = load_file(plain / "model.safetensors")[key]
    r_calibrated = load_file(calibrated / "model.safetensors")[key]
    assert r_plain.std() < 0.05  # near-uniform plain initialisation
    assert r_calibrated.std() > 0.5  # log of the teacher's (peaked) mean attention
