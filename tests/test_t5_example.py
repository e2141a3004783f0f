"""examples/run_seq2seq.py runs offline on CSV/JSON files, converts a stock T5 checkpoint, trains with
Seq2SeqTrainer, scores generated text and writes its metrics as JSON; and a tiny reversal task learnt by a
vanilla+synthesizer mixture with Seq2SeqTrainer reaches clearly better than chance exact match."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from hf_synthesizer import T5SynthesizerForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
DIGITS = 4  # digits per example: chance exact match of a reversal is 10**-4


pytestmark = pytest.mark.usefixtures("one_thread")


def load_example():
    spec = importlib.util.spec_from_file_location("run_seq2seq", ROOT / "examples" / "run_seq2seq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digit_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over space-separated digits that appends </s>, like T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{str(d): 3 + d for d in range(10)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def reversal_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        digits = [str(rng.randrange(10)) for _ in range(DIGITS)]
        rows.append({"source": " ".join(digits), "target": " ".join(reversed(digits))})
    return rows


def write_csv(path: Path, rows: list[dict]) -> str:
    path.write_text("source,target\n" + "".join(f"{r['source']},{r['target']}\n" for r in rows))
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stock_digits_t5(tmp_path_factory) -> Path:
    """A tiny stock T5 checkpoint (random weights) with the digit tokenizer saved beside it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stock_digits_t5")
    config = T5Config(
        vocab_size=13, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
        relative_attention_max_distance=32, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    digit_tokenizer().save_pretrained(path)
    return path


def test_help_lists_the_synthesizer_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model_name_or_path", "--attn_implementation", "--synthesizer_length", "--synthesizer_stacks",
                   "--synthesizer_position_bias", "--train_file", "--dataset_name", "--predict_with_generate"):
        assert option in text, option


def test_example_converts_trains_and_writes_metrics(stock_digits_t5, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(stock_digits_t5),
        "--attn_implementation", "synthesizer_dense+vanilla",
        "--synthesizer_length", "8",
        "--synthesizer_stacks", "encoder", "decoder",
        "--synthesizer_position_bias", "false",
        "--train_file", write_csv(tmp_path / "train.csv", reversal_rows(64, seed=0)),
        "--validation_file", write_csv(tmp_path / "dev.csv", reversal_rows(16, seed=1)),
        "--test_file", write_csv(tmp_path / "test.csv", reversal_rows(16, seed=2)),
        "--output_dir", str(out),
        "--do_train", "--do_eval", "--do_predict", "--predict_with_generate",
        "--max_steps", "4", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
        "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        "--disable_tqdm", "true",
    ]
    metrics = load_example().main(argv)
    printed = capsys.readouterr().out  # each pass prints its metrics, as the other examples do (issue 26 item 8)
    for block, key in (("train", "train_loss"), ("eval", "eval_exact_match"), ("predict", "predict_exact_match")):
        assert f"***** {block} metrics *****" in printed and key in printed, block
    written = json.loads((out / "all_results.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for key in ("train_loss", "eval_loss", "eval_exact_match", "predict_exact_match"):
        assert key in written, key
    assert 0.0 <= written["eval_exact_match"] <= 1.0
    assert len((out / "generated_predictions.txt").read_text().splitlines()) == 16
    # the saved model is the converted synthesizer and reloads as itself without attn_implementation
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert type(reloaded) is T5SynthesizerForConditionalGeneration
    assert reloaded.config.synthesizer_variant == "dense+vanilla"
    assert reloaded.config.synthesizer_length == 8 and reloaded.config.synthesizer_position_bias is False
    # synthesizer options are refused for an already converted checkpoint
    with pytest.raises(ValueError, match="already a synthesizer checkpoint"):
        load_example().main(["--model_name_or_path", str(out), "--synthesizer_length", "16",
                             "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(tmp_path / "x")])
