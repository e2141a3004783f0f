"""The Trainer example scripts, run in-process on tiny checkpoints and data the tests create (no Hub), and the
classification example under `accelerate launch --num_processes 2 --cpu` against a single-process run."""

import importlib.util
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import with_wordpiece_tokenizer
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from hf_synthesizer.conversion.loading import load_synthesizer_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad", "red", "blue", "cat", "dog", "sat", "ran", "the", "a", "on", "mat", "big", "small", "very"]


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="session")
def tiny_bert_with_tokenizer(stock_bert_dir, tmp_path_factory) -> Path:
    """The stock tiny BERT (vocab 101) with a WordPiece tokenizer whose vocabulary fits it."""
    return with_wordpiece_tokenizer(stock_bert_dir, tmp_path_factory.mktemp("tiny_bert_tok"), WORDS)


def sentence(rng, n=None):
    return " ".join(rng.choice(WORDS[2:]) for _ in range(n or rng.randint(3, 7)))


@pytest.fixture(scope="session")
def pair_csv(tmp_path_factory):
    """Sentence pairs labelled by string labels: is the second sentence the first one?"""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs")
    for split, n in (("train", 96), ("dev", 32)):
        rows = ["sentence1,sentence2,label"]
        for _ in range(n):
            a = sentence(rng)
            same = rng.random() < 0.5
            rows.append(f"{a},{a if same else sentence(rng)},{'same' if same else 'different'}")
        (path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return path / "train.csv", path / "dev.csv"


@pytest.fixture(scope="session")
def sentiment_jsonl(tmp_path_factory):
    """Single sentences; label 1 when the sentence says "good", 0 when it says "bad"."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("sentiment")
    for split, n in (("train", 128), ("dev", 32)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = sentence(rng).split()
            words.insert(rng.randint(0, len(words)), "good" if label else "bad")
            rows.append(json.dumps({"text": " ".join(words), "label": label}))
        (path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return path / "train.jsonl", path / "dev.jsonl"


def common_args(output_dir, **extra):
    args = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": "true",
        "use_cpu": "true",
        **extra,
    }
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def test_classification_metrics_values():
    """The example's metrics on a case worked by hand: 3 classes, one never predicted (its F1 counts as 0)."""
    import numpy as np

    metrics = load_example("run_classification").classification_metrics
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 0, 1]]  # predictions 0, 1, 1, 1, 0, 1
    result = metrics((logits, labels), is_regression=False)
    # class 0: P 1/2, R 1/2, F1 1/2; class 1: P 2/4, R 2/2, F1 2/3; class 2: never predicted, F1 0
    assert result == {"accuracy": pytest.approx(3 / 6), "macro_f1": pytest.approx((1 / 2 + 2 / 3 + 0) / 3)}
    predictions, targets = np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 3.0, 3.0])
    result = metrics((predictions, targets), is_regression=True)
    assert result["mse"] == pytest.approx((0 + 1 + 1) / 3)
    assert result["pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 3, 3])[0, 1])


def test_loading_helper_dispatches_on_model_type(tiny_bert_with_tokenizer, tmp_path):
    """The one helper the examples and compare share: stock bert + synthesizer choice -> synthesizer classes;
    stock with no choice -> stock transformers; saved synthesizer -> itself; nonsense -> clear errors."""
    path = str(tiny_bert_with_tokenizer)
    converted = load_synthesizer_model(AutoModelForSequenceClassification, path, "synthesizer_dense",
                                       config_kwargs={"num_labels": 3}, synthesizer_length=12,
                                       synthesizer_dense_shared_w2=True, synthesizer_factorized_rank=None)
    assert type(converted).__name__ == "BertSynthesizerForSequenceClassification"
    assert converted.config.synthesizer_dense_shared_w2 and converted.config.synthesizer_length == 12
    assert converted.config.num_labels == 3
    # an option alone (no attn_implementation) also goes through the synthesizer config, staying vanilla
    option_only = load_synthesizer_model(AutoModelForMaskedLM, path, synthesizer_vanilla_backend="eager")
    assert type(option_only).__name__ == "BertSynthesizerForMaskedLM"
    assert option_only.config.synthesizer_variant == "vanilla" and option_only.config._attn_implementation == "eager"
    assert type(load_synthesizer_model(AutoModelForMaskedLM, path)).__name__ == "BertForMaskedLM"
    converted.save_pretrained(tmp_path)
    reloaded = load_synthesizer_model(AutoModelForSequenceClassification, str(tmp_path))
    assert reloaded.config.synthesizer_variant == "dense"
    with pytest.raises(ValueError, match="attn_implementation='synthesizer_<variant>'"):
        load_synthesizer_model(AutoModelForMaskedLM, path, synthesizer_variant="random")
    with pytest.raises(ValueError, match="Unknown synthesizer option"):
        load_synthesizer_model(AutoModelForMaskedLM, path, synthesizer_lenght=12)


def test_examples_help():
    for name in ("run_classification", "run_mlm"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--help"],
            capture_output=True, text=True, env=subprocess_env(), timeout=120,
        )
        assert out.returncode == 0, out.stderr
        for flag in ("--model_name_or_path", "--attn_implementation", "--synthesizer_length",
                     "--synthesizer_factorized_rank", "--synthesizer_factorized_dense_split",
                     "--synthesizer_dense_shared_w2", "--synthesizer_layers", "--synthesizer_mixture",
                     "--synthesizer_vanilla_backend", "--output_dir", "--max_seq_length"):
            assert flag in out.stdout, (name, flag)
        specific = ("--text_columns", "--label_column", "--dataset_config") if name == "run_classification" else (
            "--line_by_line", "--mlm_probability")
        assert all(flag in out.stdout for flag in specific), name


def test_classification_pairs_converts_trains_and_reloads(tiny_bert_with_tokenizer, pair_csv, tmp_path):
    """Stock BERT -> synthesizer_random on sentence pairs from CSV: metrics written, the saved checkpoint reloads
    as synthesizer_random and evaluates to the same metrics without repeating --attn_implementation."""
    example = load_example("run_classification")
    train, dev = pair_csv
    out = tmp_path / "random"
    metrics = example.main(
        ["--model_name_or_path", str(tiny_bert_with_tokenizer), "--attn_implementation", "synthesizer_random",
         "--synthesizer_length", "20", "--train_file", str(train), "--validation_file", str(dev),
         "--text_columns", "sentence1", "sentence2", "--label_column", "label"]
        + common_args(out, max_steps=12)
    )
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and 0.0 <= results["eval_macro_f1"] <= 1.0
    assert math.isfinite(results["eval_loss"]) and results["eval_samples"] == 32
    train_results = json.loads((out / "train_results.json").read_text())
    assert math.isfinite(train_results["train_loss"]) and train_results["train_samples"] == 96
    assert metrics["eval_accuracy"] == results["eval_accuracy"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert_synthesizer" and config["synthesizer_variant"] == "random"
    assert config["synthesizer_length"] == 20 and config["id2label"] == {"0": "different", "1": "same"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(reloaded).__name__ == "BertSynthesizerForSequenceClassification"
    assert (reloaded.config.synthesizer_variant, reloaded.config._attn_implementation) == ("random", "sdpa")
    assert reloaded.bert.encoder.layer[0].attention.self.synthesizer.random_r.shape == (4, 20, 20)

    again = example.main(
        ["--model_name_or_path", str(out), "--do_eval", "--validation_file", str(dev),
         "--text_columns", "sentence1", "sentence2"] + common_args(tmp_path / "reeval")
    )
    assert again["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], rel=1e-5)


def test_classification_single_sentence_learns_with_options(tiny_bert_with_tokenizer, sentiment_jsonl, tmp_path):
    """Single sentences from JSON lines, a factorized-dense+vanilla mixture with every kind of option flag; the
    options land in the saved config and the loss falls on an easy task."""
    example = load_example("run_classification")
    train, dev = sentiment_jsonl
    out = tmp_path / "fd"
    example.main(
        ["--model_name_or_path", str(tiny_bert_with_tokenizer),
         "--attn_implementation", "synthesizer_factorized_dense+vanilla", "--synthesizer_length", "16",
         "--synthesizer_factorized_dense_split", "2", "8", "--synthesizer_layers", "1",
         "--synthesizer_mixture", "gate", "--train_file", str(train), "--validation_file", str(dev)]
        + common_args(out, max_steps=32)
    )
    config = json.loads((out / "config.json").read_text())
    assert config["synthesizer_variant"] == "factorized_dense+vanilla"
    assert config["synthesizer_factorized_dense_split"] == [2, 8] and config["synthesizer_layers"] == [1]
    assert config["synthesizer_mixture"] == "gate" and config["synthesizer_length"] == 16
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 32
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8  # it learns
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_accuracy"] >= 0.75  # "good" vs "bad" is in the input: well above chance (0.5)
    model = load_synthesizer_model(AutoModelForSequenceClassification, str(out))
    assert model.config.synthesizer_variant == "factorized_dense+vanilla"


def test_classification_vanilla_stock_checkpoint_stays_stock(tiny_bert_with_tokenizer, sentiment_jsonl, tmp_path):
    example = load_example("run_classification")
    train, dev = sentiment_jsonl
    out = tmp_path / "vanilla"
    example.main(
        ["--model_name_or_path", str(tiny_bert_with_tokenizer), "--train_file", str(train),
         "--validation_file", str(dev), "--max_train_samples", "32"] + common_args(out, max_steps=2)
    )
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert 0.0 <= json.loads((out / "eval_results.json").read_text())["eval_accuracy"] <= 1.0


def test_mlm_converts_trains_and_reloads(tiny_bert_with_tokenizer, tmp_path):
    rng = random.Random(2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentence(rng, 8) + " ." for _ in range(200)) + "\n")
    example = load_example("run_mlm")
    out = tmp_path / "mlm"
    metrics = example.main(
        ["--model_name_or_path", str(tiny_bert_with_tokenizer), "--attn_implementation", "synthesizer_random+vanilla",
         "--synthesizer_length", "16", "--max_seq_length", "16", "--train_file", str(corpus),
         "--validation_split_percentage", "10"] + common_args(out, max_steps=10)
    )
    results = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(results["eval_loss"])
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["perplexity"] < 101  # below a uniform guess over the vocabulary
    assert 0.0 <= results["eval_masked_accuracy"] <= 1.0 and results["eval_samples"] > 0
    assert math.isfinite(json.loads((out / "train_results.json").read_text())["train_loss"])
    assert metrics["perplexity"] == results["perplexity"]
    assert (out / "model.safetensors").exists()
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "BertSynthesizerForMaskedLM"
    assert model.config.synthesizer_variant == "random+vanilla" and model.config.synthesizer_length == 16
    assert model.config._attn_implementation == "sdpa"  # the backend of the synthesizer's fast routes


# accelerate: 2 processes x batch 4 against 1 process x batch 8, same seed, no dropout (the tiny config has 0).
ACCELERATE_STEPS = 8
# Stated tolerance on every logged training loss and on the final train_loss. The runs differ only in float
# summation order (per-process batches of 4 plus a gradient all-reduce vs one batch of 8); measured max difference
# 1e-7 (losses printed with -s).
ACCELERATE_ATOL = 1e-5


def _losses(out: Path):
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h], state["log_history"][-1]["train_loss"]


def _total_batch(stdout: str) -> list[int]:
    """Trainer's "Total train batch size (w. parallel, distributed & accumulation) = N", once per process."""
    return [int(line.rsplit("=", 1)[1]) for line in stdout.splitlines() if "Total train batch size" in line]


def test_accelerate_two_processes_matches_single_process(tiny_bert_with_tokenizer, pair_csv, tmp_path):
    """`accelerate launch --num_processes 2 --cpu` completes, but accelerate 1.15 runs it as ONE process: with
    `--cpu` it uses its simple launcher, which starts several CPU processes only through mpirun
    (`--mpirun_hostfile`), and mpirun is not installed. That run (batch 8) is the single-process reference. Two
    real CPU processes (gloo DDP) come from `accelerate launch --multi_gpu --num_processes 2` plus the script's
    `--use_cpu true` (torchrun underneath); at 2 x batch 4 their losses match the reference."""
    if shutil.which("accelerate") is None:
        pytest.fail("the accelerate launcher is not on PATH")
    train, dev = pair_csv
    script = str(ROOT / "examples" / "run_classification.py")

    def launch(launcher_args, out, per_device):
        args = [
            "--model_name_or_path", str(tiny_bert_with_tokenizer), "--attn_implementation", "synthesizer_random",
            "--synthesizer_length", "20", "--train_file", str(train), "--validation_file", str(dev),
            "--text_columns", "sentence1", "sentence2", "--do_train",
            "--log_level", "info", "--log_level_replica", "info",
        ] + common_args(out, max_steps=ACCELERATE_STEPS, per_device_train_batch_size=per_device)
        with socket.socket() as sock:  # a port no other session on this machine holds right now
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        result = subprocess.run(
            ["accelerate", "launch", *launcher_args, "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", port, script, *args],
            capture_output=True, text=True, env=subprocess_env(), timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    cpu_stdout = launch(["--num_processes", "2", "--cpu"], tmp_path / "cpu", 8)
    # --cpu without mpirun never starts a 2-process group: at per-device batch 8 the total is 8, one process
    # training the whole batch, so its losses are the single-process reference.
    assert _total_batch(cpu_stdout) and set(_total_batch(cpu_stdout)) == {8}
    assert "Running process 0 of 1 " in cpu_stdout and " of 2 " not in cpu_stdout  # the script says so itself
    ddp_stdout = launch(["--multi_gpu", "--num_processes", "2"], tmp_path / "ddp", 4)
    # Per-device batch 4 and a total of 8: a 2-process group. (Counting log lines is not a process count: the
    # same line can reach both stdout and stderr, as it did in CI's clean run.)
    assert _total_batch(ddp_stdout) and set(_total_batch(ddp_stdout)) == {8}
    assert "Running process 0 of 2 " in ddp_stdout and "Running process 1 of 2 " in ddp_stdout

    single_losses, single_final = _losses(tmp_path / "cpu")
    ddp_losses, ddp_final = _losses(tmp_path / "ddp")
    assert len(single_losses) == len(ddp_losses) == ACCELERATE_STEPS
    diff = max(abs(a - b) for a, b in zip(single_losses, ddp_losses))
    message = f"single {single_losses} vs 2 processes {ddp_losses}: max |diff| {diff:.2e}"
    print(message)
    assert diff <= ACCELERATE_ATOL, message
    assert abs(single_final - ddp_final) <= ACCELERATE_ATOL, message
    assert single_losses[0] != single_losses[-1]  # training moved the weights


def test_classification_example_documents_a_launch_that_runs_two_processes():
    """The docstring's 2-process command is the one the test above measures as two processes, not `--cpu` (one)."""
    doc = (ROOT / "examples" / "run_classification.py").read_text()
    doc = doc.split('"""')[1]
    launch = next(line.strip() for line in doc.splitlines() if line.strip().startswith("accelerate launch"))
    assert launch.startswith("accelerate launch --multi_gpu --num_processes 2 examples/run_classification.py")
    assert "--use_cpu true" in launch and "--cpu " not in launch


def test_classification_test_file_predicts_and_reports_test_metrics(tiny_bert_with_tokenizer, sentiment_jsonl,
                                                                   tmp_path, caplog):
    """--test_file with a real test pass (metrics prefixed test_, predictions written, as transformers' run_glue);
    --do_predict without a test file is refused, not ignored; evaluating a saved model on another file reports no
    epoch; a test file without labels gives predictions only, in the saved model's label names."""
    example = load_example("run_classification")
    train, dev = sentiment_jsonl
    out = tmp_path / "model"
    trained = example.main(["--model_name_or_path", str(tiny_bert_with_tokenizer), "--attn_implementation",
                            "synthesizer_random", "--synthesizer_length", "20", "--train_file", str(train),
                            "--validation_file", str(dev), "--test_file", str(dev)] + common_args(out, max_steps=24))
    results = json.loads((out / "test_results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(trained["eval_accuracy"]) and results["test_samples"] == 32
    assert set(results) >= {"test_accuracy", "test_macro_f1", "test_loss"}
    rows = (out / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "index,prediction" and len(rows) == 33 and {r.split(",")[1] for r in rows[1:]} <= {"0", "1"}
    with pytest.raises(ValueError, match="--do_predict was given .* pass --test_file"):
        example.main(["--model_name_or_path", str(out), "--do_predict", "--validation_file", str(dev)]
                     + common_args(tmp_path / "none"))
    # A saved model on another file: test metrics only, no epoch, equal to the evaluation above.
    again = example.main(["--model_name_or_path", str(out), "--do_predict", "--test_file", str(dev)]
                         + common_args(tmp_path / "again"))
    assert {"test_accuracy", "test_macro_f1", "test_loss", "test_samples"} <= set(again) and "epoch" not in again
    assert not any(k.startswith("eval_") for k in again)
    assert again["test_accuracy"] == pytest.approx(results["test_accuracy"])
    reeval = example.main(["--model_name_or_path", str(out), "--do_eval", "--validation_file", str(dev)]
                          + common_args(tmp_path / "reeval"))
    assert "epoch" not in reeval and reeval["eval_accuracy"] == pytest.approx(results["test_accuracy"])
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("\n".join(json.dumps({"text": r["text"]}) for r in map(json.loads, dev.read_text().split("\n")[:5])))
    assert example.main(["--model_name_or_path", str(out), "--do_predict", "--test_file", str(unlabelled)]
                        + common_args(tmp_path / "blind")) == {}
    blind = (tmp_path / "blind" / "test_predictions.csv").read_text().splitlines()
    assert blind[1:] == rows[1:6]
