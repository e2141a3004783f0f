"""Metrics through `evaluate` where a module loads, the local computation otherwise (issue 26 item 11): a metric
module written here and loaded from its path (offline) runs through evaluate, in the library and in the
classification example; names evaluate cannot load offline fall back to the local computation, and say so."""

import json
import logging

import numpy as np
import pytest

from hf_synthesizer.conversion.metrics import LOCAL_METRICS, load_metric

pytest.importorskip("evaluate")

METRIC_SCRIPT = '''
import datasets
import evaluate


class AgreementShare(evaluate.Metric):
    """The share of predictions equal to their reference, under another name (a stand-in for any custom metric)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="share of equal predictions", citation="", inputs_description="predictions, references",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        same = [p == r for p, r in zip(predictions, references)]
        return {"agreement_share": sum(same) / len(same)}
'''


@pytest.fixture
def metric_script(tmp_path):
    path = tmp_path / "agreement_share.py"
    path.write_text(METRIC_SCRIPT)
    return path


def test_a_local_metric_module_runs_through_evaluate(metric_script, caplog):
    with caplog.at_level(logging.INFO):
        metric = load_metric(str(metric_script))
    assert metric.source == f"evaluate: {metric_script}" and metric.name == "agreement_share"
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2]) == {"agreement_share": 0.75}
    # Success is news, not a problem: INFO, where the fallback below is a WARNING.
    assert [r.levelno for r in caplog.records if "evaluate.load" in r.getMessage()] == [logging.INFO]


def test_names_evaluate_cannot_load_fall_back_to_the_local_computation(monkeypatch, tmp_path, caplog):
    """HF_HUB_OFFLINE: evaluate cannot fetch `accuracy`; the local one runs, says so, and matches a hand count."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no ./accuracy/ module for evaluate to find
    with caplog.at_level(logging.WARNING):
        accuracy, f1 = load_metric("accuracy"), load_metric("f1")
    assert accuracy.source == "local (numpy): accuracy" and "computed locally" in caplog.text
    assert accuracy.compute(predictions=np.array([0, 1, 2]), references=np.array([0, 2, 2])) == {
        "accuracy": pytest.approx(2 / 3)}
    # classes 0, 1, 2: F1 1, 0, 2/3 -> macro 5/9
    assert f1.compute(predictions=[0, 1, 2], references=[0, 2, 2], average="macro")["f1"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="no local computation .* path of an evaluate metric"):
        load_metric("no_such_metric_anywhere")
    assert set(LOCAL_METRICS) == {"accuracy", "f1", "mse", "pearsonr", "exact_match"}


def test_classification_example_takes_an_evaluate_metric(metric_script, tmp_path, caplog):
    """examples/run_classification.py --metrics PATH accuracy: the module's result lands in eval_results.json beside
    the fallback's accuracy, with the same value (both count equal predictions)."""
    from conftest import tiny_bert_config, with_wordpiece_tokenizer
    from test_examples import common_args, load_example
    from transformers import BertForPreTraining

    rows = [{"text": f"{'good' if i % 2 else 'bad'} cat sat", "label": i % 2} for i in range(16)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stock, model_dir = tmp_path / "stock", tmp_path / "tiny"
    BertForPreTraining(tiny_bert_config()).save_pretrained(stock)
    model_dir.mkdir()
    with_wordpiece_tokenizer(stock, model_dir, ["good", "bad", "cat", "sat"])
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        results = load_example("run_classification").main(
            ["--model_name_or_path", str(model_dir), "--train_file", str(data), "--validation_file", str(data),
             "--metrics", str(metric_script), "accuracy"] + common_args(out, max_steps=2))
    assert results["eval_agreement_share"] == pytest.approx(results["eval_accuracy"])
    assert f"evaluate.load('{metric_script}')" in caplog.text
    assert "eval_macro_f1" not in results
