"""Several copies of the synthesizer code in one process (issue 12): the installed package and the remote code of any
number of checkpoints (of the same or an older version), in either load order. The attention registry is global and
the last copy imported registers every `synthesizer_*` name; each module must still run its own copy's code.

Each scenario runs in a fresh interpreter (remote code is imported once per process) and compares every model's
logits with the ones recorded when it was saved.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import spread_synthesizer, tiny_bert_config

import hf_synthesizer
from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerForMaskedLM

INPUT_IDS = [[2, 15, 27, 39, 4, 3, 0, 0], [2, 41, 53, 65, 77, 89, 3, 0]]
# Three checkpoints loaded as remote code (one saved by an "older" copy of the code, one a mixture) and one loaded with
# the package's own classes.
REMOTE = {"older_random": "random", "dense": "dense", "mixture": "factorized_random+vanilla"}
PACKAGE = {"package_random": "random"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Four saved synthesizer checkpoints, far from uniform, with their expected logits in `expected.pt`."""
    root = tmp_path_factory.mktemp("side_by_side")
    ids = torch.tensor(INPUT_IDS)
    expected = {}
    for seed, (name, variant) in enumerate({**REMOTE, **PACKAGE}.items()):
        torch.manual_seed(seed)
        config = BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant=variant)
        model = spread_synthesizer(BertSynthesizerForMaskedLM(config), seed=seed).eval()
        with torch.no_grad():
            expected[name] = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        model.save_pretrained(root / name)
    # "Older" copy: the same code with a private helper renamed, as a later release might have it.
    attention_file = root / "older_random" / "synthesizer_attention.py"
    code = attention_file.read_text()
    assert "def _use_cache(" in code
    attention_file.write_text(code.replace("_use_cache(", "_input_independent_cache_applies("))
    torch.save(expected, root / "expected.pt")
    return root


SCRIPT = """
import json, sys
import torch
import transformers
from transformers import AutoModelForMaskedLM, Trainer, TrainingArguments
from transformers.dynamic_module_utils import get_class_from_dynamic_module

root, order = sys.argv[1], sys.argv[2]
remote, package = {remote}, {package}
ids = torch.tensor({input_ids})
models = {{}}

def load_remote():
    for name in remote:
        path = f"{{root}}/{{name}}"
        if "hf_synthesizer" in sys.modules:
            # The Auto classes prefer the imported package's classes to a checkpoint's code: take the checkpoint's
            # class explicitly, as a library that pins a checkpoint's code would.
            cls = get_class_from_dynamic_module("modeling_bert_synthesizer.BertSynthesizerForMaskedLM", path)
            models[name] = cls.from_pretrained(path).eval()
        else:
            models[name] = AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True).eval()

def load_package():
    import hf_synthesizer
    for name in package:
        models[name] = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(f"{{root}}/{{name}}").eval()

if order == "remote first":
    load_remote()
    assert "hf_synthesizer" not in sys.modules, "the remote-code loads imported the package"
    load_package()
else:
    load_package()
    load_remote()
# Saving a remote-code model (which imports the package's card renderer) and a Trainer save, while all are live.
models["dense"].save_pretrained(f"{{root}}/resaved-{{order}}")
arguments = TrainingArguments(output_dir=f"{{root}}/trainer-{{order}}", report_to=[])
Trainer(model=models["mixture"], args=arguments).save_model()

expected = torch.load(f"{{root}}/expected.pt")
report = {{}}
with torch.no_grad():
    for name, model in models.items():
        logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        report[name] = dict(error=(logits - expected[name]).abs().max().item(), module=type(model).__module__)
    resaved = AutoModelForMaskedLM.from_pretrained(f"{{root}}/resaved-{{order}}", trust_remote_code=True).eval()
    logits = resaved(input_ids=ids, attention_mask=(ids != 0).long()).logits
    report["resaved"] = dict(error=(logits - expected["dense"]).abs().max().item(), module=type(resaved).__module__)
print("REPORT", json.dumps(report))
"""


@pytest.mark.parametrize("order", ["remote first", "package first"])
def test_every_copy_runs_its_own_code_in_either_load_order(checkpoints, order, tmp_path):
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(SCRIPT).format(remote=list(REMOTE), package=list(PACKAGE), input_ids=INPUT_IDS))
    env = dict(os.environ, PYTHONPATH=str(Path(hf_synthesizer.__file__).parents[1]))  # this package, not another
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, str(script), str(checkpoints), order], cwd=tmp_path, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    modules = {name: entry["module"] for name, entry in report.items()}
    # three remote copies, each its own module, beside the package
    assert len({modules[name] for name in REMOTE}) == len(REMOTE), modules
    assert all(not m.startswith("hf_synthesizer") for name, m in modules.items() if name in REMOTE), modules
    assert all(modules[name].startswith("hf_synthesizer.") for name in PACKAGE), modules
    for name, entry in report.items():
        assert entry["error"] <= 1e-5, (name, entry)
