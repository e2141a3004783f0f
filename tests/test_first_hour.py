"""What a new user hits in the first hour (issue 17), one section per item: a checkpoint of the wrong family, a
tokenizer that maps everything to <unk>, tokenizers saved beside a synthesizer, calibration feedback, load reports,
the model card's loading code, attention maps of a stock or untrained checkpoint, and the small errors.
Item 5 (`hf-synthesizer compare`) is in test_compare.py; item 8 (every snippet of the docs runs) in test_docs.py."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fakes import run_without_package
from test_t5_example import digit_tokenizer, write_csv
from conftest import with_wordpiece_tokenizer
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

import hf_synthesizer
from hf_synthesizer import cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"first_hour_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture
def transformers_log():
    """What transformers logs, at its default verbosity (warnings), as a user sees it; the suite runs at "error"."""
    import io
    import logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    hf_logging.add_handler(handler)
    yield stream
    hf_logging.remove_handler(handler)
    hf_logging.set_verbosity(verbosity)


@pytest.fixture(scope="module")
def stock_t5_dir(tmp_path_factory) -> Path:
    """A tiny stock T5 checkpoint without tokenizer files (as `save_pretrained` of a model alone leaves it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stock_t5")
    config = T5Config(vocab_size=13, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_with_tokenizer(stock_bert_dir, tmp_path_factory) -> Path:
    """The tiny stock BERT with a WordPiece tokenizer whose model_max_length (24) is the position limit."""
    words = ["good", "bad", "red", "blue", "cat", "dog", "the", "a"]
    return with_wordpiece_tokenizer(stock_bert_dir, tmp_path_factory.mktemp("bert_tok"), words)


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("first_hour_data") / "train.csv"
    rows = ["text,label"] + [f"the {w} cat,{int(w == 'good')}" for w in ["good", "bad"] * 8]
    path.write_text("\n".join(rows) + "\n")
    return path


def classification_args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--train_file", str(data), "--validation_file", str(data),
            "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "8", "--save_strategy",
            "no", "--disable_tqdm", "true", "--use_cpu", "true", *extra]


# --------------------------------------------------------------------------------- 1. a checkpoint of the wrong family
def test_wrong_family_checkpoint_is_an_error_naming_the_class_that_loads_it(stock_bert_dir, stock_t5_dir,
                                                                            sentiment_csv, tmp_path):
    with pytest.raises(ValueError, match=r"holds a T5 checkpoint .* none of its weights would load. "
                                         r"Use T5SynthesizerForSequenceClassification.from_pretrained\(path\)"):
        hf_synthesizer.BertSynthesizerForSequenceClassification.from_pretrained(
            stock_t5_dir, attn_implementation="synthesizer_random")
    with pytest.raises(ValueError, match=r"holds a BERT checkpoint .*Use BertSynthesizerModel.from_pretrained"):
        hf_synthesizer.T5SynthesizerModel.from_pretrained(stock_bert_dir)
    with pytest.raises(ValueError, match=r"BertSynthesizerConfig reads BERT checkpoints.*T5SynthesizerConfig"):
        hf_synthesizer.BertSynthesizerConfig.from_pretrained(stock_t5_dir)
    # The BERT classification example names the T5 classification class and the T5 example, instead of an
    # AttributeError deep inside.
    with pytest.raises(ValueError, match=r"holds a T5 checkpoint; this script fine-tunes BERT.*run_seq2seq.py.*"
                                         r"T5SynthesizerForSequenceClassification"):
        load_example("run_classification").main(classification_args(stock_t5_dir, sentiment_csv, tmp_path / "o"))
    # The right family still loads.
    assert type(hf_synthesizer.T5SynthesizerModel.from_pretrained(stock_t5_dir)).__name__ == "T5SynthesizerModel"


# ------------------------------------------------------------------- 2. a tokenizer that maps every word to <unk>
def test_seq2seq_refuses_a_tokenizer_that_cannot_represent_the_data(stock_t5_dir, tmp_path):
    """A T5 folder without tokenizer files: transformers builds a placeholder tokenizer mapping every word to <unk>.
    Before, one epoch on it reported eval_exact_match 1.0."""
    rows = [{"source": "hello world", "target": "bonjour monde"}, {"source": "good morning", "target": "bon matin"}]
    data = write_csv(tmp_path / "data.csv", rows * 4)
    with pytest.raises(ValueError, match=r"maps 100% of the words of column 'source' to '<unk>'.*holds no tokenizer "
                                         r"files.*--tokenizer_name_or_path"):
        load_example("run_seq2seq").main([
            "--model_name_or_path", str(stock_t5_dir), "--train_file", data, "--validation_file", data,
            "--output_dir", str(tmp_path / "out"), "--do_train", "--do_eval", "--predict_with_generate",
            "--max_steps", "1", "--report_to", "none", "--disable_tqdm", "true"])


def test_exact_match_is_not_fooled_by_unknown_tokens():
    """Decoding drops <unk>: a prediction and a reference made of <unk> both decode to "" and used to match."""
    tokenizer = digit_tokenizer()  # <pad> 0, </s> 1, <unk> 2, digits 3..12
    metric = load_example("run_seq2seq").exact_match_metric(tokenizer)
    unk = tokenizer.unk_token_id
    labels = np.array([[unk, unk, 1], [5, 6, 1], [5, 7, 1], [5, 6, 1]])
    preds = np.array([[unk, 1, 0], [5, 6, 1], [5, 6, 1], [5, unk, 6]])
    # only the second is a match: the first reference is unknown text, the fourth prediction holds <unk>
    assert metric((preds, labels)) == {"exact_match": 0.25}


# ------------------------------------------------------- 3. tokenizers saved beside a synthesizer keep its length
def test_every_saved_tokenizer_cuts_where_the_model_accepts(bert_with_tokenizer, sentiment_csv, tmp_path):
    # run_classification (Trainer.save_model saves the tokenizer): model_max_length 24 -> the synthesizer length 20
    out = tmp_path / "cls"
    load_example("run_classification").main(classification_args(
        bert_with_tokenizer, sentiment_csv, out, "--attn_implementation", "synthesizer_random",
        "--synthesizer_length", "20"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 20
    assert len(tokenizer("the cat " * 40, truncation=True)["input_ids"]) == 20
    # convert, then resize up and down with convert: the tokenizer follows the model both ways
    assert run_cli("convert", bert_with_tokenizer, tmp_path / "l12", "--attn_implementation", "synthesizer_random",
                   "--synthesizer_length", 12, "--head", "base") == 0
    assert run_cli("convert", tmp_path / "l12", tmp_path / "l20", "--synthesizer_length", 20) == 0
    assert run_cli("convert", tmp_path / "l20", tmp_path / "l8", "--synthesizer_length", 8) == 0
    for name, length in (("l12", 12), ("l20", 20), ("l8", 8)):
        assert AutoTokenizer.from_pretrained(tmp_path / name).model_max_length == length, name
    # Python API: resizing a live model, then the helper
    from hf_synthesizer.conversion.loading import set_model_max_length

    model = hf_synthesizer.BertSynthesizerModel.from_pretrained(tmp_path / "l12")
    model.resize_synthesizer_length(16)
    assert set_model_max_length(AutoTokenizer.from_pretrained(tmp_path / "l12"), model).model_max_length == 16


# ----------------------------------------------------------------------------------------- 4. calibration feedback
def test_calibration_says_what_was_calibrated_how_well_and_what_was_not(minilm_dir, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    assert run_cli("convert", minilm_dir, tmp_path / "x", "--attn_implementation", "synthesizer_random",
                   "--calibrate_on", blank) == 2
    assert f"The file {blank} has no text" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"the {w} cat sat on mat number {i}." for i, w in enumerate(["red", "big"] * 6)))
    assert run_cli("convert", minilm_dir, tmp_path / "rv", "--attn_implementation", "synthesizer_random+vanilla",
                   "--synthesizer_length", 32, "--calibrate_on", texts) == 0
    out = capsys.readouterr().out
    # the load line no longer reports R as merely "newly initialised"
    assert "12 synthesizer parameters (new in synthesizer_random+vanilla: calibrated from the stock model's" in out
    # 12 texts: every 5th (2) is held out, and the agreement is measured on those, as the output says (issue 26)
    match = re.search(r"Calibration on 10 texts: calibrated random in 6 layers: attention agreement with the stock "
                      r"model (\d\.\d\d) \(near-uniform start: (\d\.\d\d)\); calibrated mixture weights \(vanilla "
                      r"starts at 0\.9\) in 6 layers: mixed attention agreement with the stock model (\d\.\d\d) "
                      r"\(near-uniform start: \d\.\d\d\); agreement measured on 2 held-out texts \(not used for "
                      r"calibration", out)
    assert match, out
    calibrated, uniform, mixed = map(float, match.groups())
    assert calibrated > uniform + 0.2 and mixed > calibrated

    assert run_cli("convert", minilm_dir, tmp_path / "fd", "--attn_implementation", "synthesizer_factorized_dense",
                   "--synthesizer_length", 32, "--calibrate_on", texts) == 0
    out = capsys.readouterr().out
    assert "not calibrated: factorized_dense in 6 layers (bilinear in its parameters" in out
    assert "(new in synthesizer_factorized_dense: near-uniform start)" in out
    assert "agreement measured" not in out  # nothing calibrated, no agreement figure to qualify

    (tmp_path / "few.txt").write_text("the red cat sat.\nthe big dog ran.\n")  # too few texts to hold any out
    assert run_cli("convert", minilm_dir, tmp_path / "few", "--attn_implementation", "synthesizer_random",
                   "--synthesizer_length", 32, "--calibrate_on", tmp_path / "few.txt") == 0
    out = capsys.readouterr().out
    assert "Calibration on 2 texts: " in out
    assert "agreement measured on the calibration texts themselves (an upper bound: text the calibration did not see " \
           "scores lower; with 10 or more texts, convert holds some out to measure it)" in out


# ---------------------------------------------------------------------------------------- 6. one line per load
def test_commands_print_one_load_line_and_keep_transformers_report_for_verbose(minilm_dir, stock_bert_dir, tmp_path,
                                                                               capfd, transformers_log):
    assert run_cli("convert", minilm_dir, tmp_path / "mlm", "--attn_implementation", "synthesizer_random",
                   "--synthesizer_length", 32, "--head", "masked-lm") == 0
    out, err = capfd.readouterr()
    err += transformers_log.getvalue()
    assert out.splitlines() == [
        f"Converted {minilm_dir} to {tmp_path / 'mlm'} (BertSynthesizerForMaskedLM, variant random, synthesizer_length "
        f"32): loaded 78 of 90 weights; initialised 6 synthesizer parameters (new in synthesizer_random: near-uniform "
        f"start), 6 head/pooler weights of BertSynthesizerForMaskedLM (the source has none); ignored 24 query/key "
        f"weights (synthesizer_random has no dot-product term), 2 head/pooler weights BertSynthesizerForMaskedLM does "
        f"not have."]
    for noise in ("LOAD REPORT", "MISSING", "UNEXPECTED", "seem corrupted", "Loading weights"):
        assert noise not in out + err, noise
    # attention-maps reloads a masked-LM checkpoint as the head it was saved with: nothing to report
    assert run_cli("convert", stock_bert_dir, tmp_path / "tiny", "--attn_implementation", "synthesizer_random",
                   "--head", "masked-lm") == 0
    assert run_cli("attention-maps", tmp_path / "tiny", "-o", tmp_path / "maps", "--length", 8) == 0
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err + transformers_log.getvalue()
    # --verbose keeps transformers' own report
    assert run_cli("convert", stock_bert_dir, tmp_path / "verbose", "--attn_implementation", "synthesizer_random",
                   "--verbose") == 0
    assert "LOAD REPORT" in transformers_log.getvalue() and "MISSING" in transformers_log.getvalue()


# ------------------------------------------------------------------------------ 7. the card's loading code runs
def test_card_names_the_checkpoint_and_its_code_loads_it_without_a_prompt(minilm_dir, tmp_path):
    model = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(
        minilm_dir, attn_implementation="synthesizer_random", synthesizer_length=32)
    model.save_pretrained(tmp_path / "my-synth")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "my-synth")
    card = (tmp_path / "my-synth" / "README.md").read_text()
    assert "\n# my-synth\n" in card and "path/to/this/checkpoint" not in card
    [code] = [b for b in re.findall(r"```python\n(.*?)```", card, re.S) if "from_pretrained" in b]
    assert code.count(f'"{tmp_path / "my-synth"}", trust_remote_code=True') == 2
    # Without hf_synthesizer, stdin closed (a trust_remote_code prompt would fail), warnings shown.
    result = run_without_package(code + "\nprint(type(model).__name__, tokenizer('a b')['input_ids'])\n", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("BertSynthesizerForMaskedLM [101, 1037, 1038, 102]")
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- 9. smaller first-hour errors
def test_attention_maps_of_a_stock_checkpoint_is_a_clear_error_and_writes_nothing(stock_bert_dir, tmp_path, capsys):
    assert run_cli("attention-maps", stock_bert_dir, "-o", tmp_path / "maps") == 2
    err = capsys.readouterr().err
    assert "is a stock bert checkpoint (dot-product attention): it has no synthesized attention to draw" in err
    assert "hf-synthesizer convert" in err and "Traceback" not in err
    assert not (tmp_path / "maps").exists()


def test_an_untrained_random_map_says_why_it_is_one_flat_colour(stock_bert_dir, tmp_path, caplog):
    assert run_cli("convert", stock_bert_dir, tmp_path / "plain", "--attn_implementation", "synthesizer_random") == 0
    assert run_cli("attention-maps", tmp_path / "plain", "-o", tmp_path / "maps") == 0
    [note] = [r.getMessage() for r in caplog.records if "near-uniform" in r.getMessage()]
    assert note.startswith("layer_00.png, layer_01.png: near-uniform attention") and "--calibrate_on" in note
    from hf_synthesizer.conversion.attention_maps import is_near_uniform

    assert is_near_uniform(torch.full((2, 4, 4), 0.25))
    assert not is_near_uniform(torch.softmax(torch.randn(2, 4, 4) * 3, -1))


def test_missing_label_column_names_the_flag(bert_with_tokenizer, sentiment_csv, tmp_path):
    with pytest.raises(ValueError, match=r"Label column 'sentiment' not in the data .*; name it with --label_column"):
        load_example("run_classification").main(classification_args(
            bert_with_tokenizer, sentiment_csv, tmp_path / "o", "--label_column", "sentiment"))


def test_misspelled_variant_gets_a_did_you_mean(stock_bert_dir, capsys):
    with pytest.raises(ValueError, match=r"\['randon'\] in variant 'randon' \(did you mean 'random'\?\)"):
        hf_synthesizer.BertSynthesizerModel.from_pretrained(stock_bert_dir, attn_implementation="synthesizer_randon")
    with pytest.raises(ValueError, match=r'"synthesiser_random"` is not supported .* \(did you mean '
                                         r"'synthesizer_random'\?\)"):
        hf_synthesizer.BertSynthesizerConfig().resolve_attn_implementation("synthesiser_random")
    assert run_cli("compare", "--variants", "vanila,dense") == 2
    assert "(did you mean 'vanilla'?)" in capsys.readouterr().err
