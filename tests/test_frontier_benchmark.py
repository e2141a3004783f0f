"""benchmarks/frontier_speed.py times what its names say (a hybrid keeps dot-product attention exactly in the layers it
does not list; one training step moves the weights) and benchmarks/frontier_report.py maps every run name to the
architecture it was timed as and computes Δ stock per seed; the real runs are in benchmarks/QUALITY.md."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"frontier_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return load("frontier_speed")


@pytest.mark.parametrize("name, synthesized", [("random L0-4", {0, 1, 2, 3, 4}), ("fixed_random L1-5", {1, 2, 3, 4, 5}),
                                               ("random", set(range(6))), ("sdpa", set())])
def test_hybrids_keep_query_and_key_only_in_their_dot_product_layers(speed, name, synthesized):
    model = speed.build(speed.load_bench(), name, 16)
    assert len(model.bert.encoder.layer) == 6 and model.config.hidden_size == 384
    for i, layer in enumerate(model.bert.encoder.layer):
        names = {n for n, _ in layer.attention.self.named_parameters()}
        assert ("query.weight" in names) == (i not in synthesized), (name, i, names)


def test_training_step_updates_the_synthesized_weights(speed):
    bench = speed.load_bench()
    torch.manual_seed(0)
    model = speed.build(bench, "random L0-4", 16)
    before = model.bert.encoder.layer[0].attention.self.synthesizer.random_r.detach().clone()
    step = bench.model_fns(model, torch.randint(2, 30522, (2, 16)), "fp32")[0]
    step()
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.synthesizer.random_r)


def test_every_run_name_maps_to_a_timed_architecture_and_delta_is_per_seed(tmp_path):
    report = load("frontier_report")
    speed_names = set(load("frontier_speed").ARCHITECTURES)
    assert set(report.ARCH_OF.values()) <= speed_names
    assert report.architecture("fixed_randomL04_u1000") == "fixed_random L0-4"
    assert report.architecture("random_u1000") == "random"
    assert report.architecture("random+vanilla") == "random+vanilla"
    with pytest.raises(KeyError, match="ARCH_OF"):
        report.architecture("unknown_u1000")
    run = {"name": "fin_random_u1000_bbc-headlines_s2", "rc": 0,
           "student": {"eval_accuracy": 0.80, "test_accuracy": 0.75},
           "teacher": {"eval_accuracy": 0.85, "test_accuracy": 0.74}}
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "failed.json").write_text(json.dumps({**run, "name": "scr_x_s0", "rc": 1}))
    [loaded] = report.load_runs(tmp_path)
    assert (loaded["stage"], loaded["config"]) == ("finalist", "random_u1000")
    assert report.delta(loaded, "dev") == pytest.approx(-5.0) and report.delta(loaded, "test") == pytest.approx(1.0)
