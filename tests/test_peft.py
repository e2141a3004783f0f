"""PEFT and sentence-transformers wrappers around synthesizer models (issue 12): what a wrapper makes effective is what
the attention uses, the documented recipe trains, saves, reloads and merges, and an unsupported wrapper is a clear
error, never silently ignored."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import spread_synthesizer, tiny_bert_config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification

import hf_synthesizer
from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerForSequenceClassification, BertSynthesizerModel

IDS = torch.tensor([[2, 15, 27, 39, 4, 3, 0, 0], [2, 41, 53, 65, 77, 89, 3, 0]])
MASK = (IDS != 0).long()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved 3-label random+vanilla classifier: R and the mixture far from uniform."""
    path = tmp_path_factory.mktemp("peft_base")
    torch.manual_seed(0)
    config = BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant="random+vanilla", num_labels=3)
    spread_synthesizer(BertSynthesizerForSequenceClassification(config)).save_pretrained(path)
    return path


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def features(model):
    """The last hidden states: tiny classifiers' logits hardly move with the attention, these do."""
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states[-1]


def synthesizer_wrapper(peft_model, layer=0):
    return peft_model.base_model.model.bert.encoder.layer[layer].attention.self.synthesizer


def test_modules_to_save_recipe_trains_saves_reloads_and_merges(base_dir, tmp_path):
    """LoRA on value and the attention output + modules_to_save=["synthesizer", "classifier"]: the trained copy of R is
    the one attention uses; the adapter reloads onto a fresh base to the same outputs; merge_and_unload saves a plain
    synthesizer checkpoint."""
    base_logits = logits(BertSynthesizerForSequenceClassification.from_pretrained(base_dir).eval())
    model = get_peft_model(
        BertSynthesizerForSequenceClassification.from_pretrained(base_dir),
        LoraConfig(target_modules=["value", "attention.output.dense"], modules_to_save=["synthesizer", "classifier"],
                   task_type="SEQ_CLS", r=4),
    )
    wrapper = synthesizer_wrapper(model)
    trained_r = wrapper.modules_to_save["default"].random_r
    original_r = wrapper.original_module.random_r.detach().clone()
    assert trained_r.requires_grad and not wrapper.original_module.random_r.requires_grad

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert trained_r.grad is not None and trained_r.grad.abs().sum() > 0  # R is in the graph, through the wrapper
    optimizer.step()
    model.eval()
    assert not torch.equal(trained_r, original_r) and torch.equal(wrapper.original_module.random_r, original_r)

    # The attention reads the active adapter's copy: moving it moves the outputs; disabling adapters restores the base.
    trained = logits(model)
    with torch.no_grad():
        kept, before = trained_r.clone(), features(model)
        trained_r.add_(torch.randn_like(trained_r))
        assert (features(model) - before).abs().max() > 1e-4  # exactly 0 if the original R were read
        trained_r.copy_(kept)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base_logits, rtol=0, atol=1e-6)

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(BertSynthesizerForSequenceClassification.from_pretrained(base_dir),
                                         tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=1e-6)

    merged = model.merge_and_unload()
    assert type(merged) is BertSynthesizerForSequenceClassification
    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert type(plain) is BertSynthesizerForSequenceClassification
    torch.testing.assert_close(logits(plain), trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.bert.encoder.layer[0].attention.self.synthesizer.random_r, trained_r.detach())


def test_lora_on_the_dense_synthesizer_layer_is_what_attention_uses(tmp_path):
    """LoRA on `dense_w1`: the adapted layer is called, so its delta changes the outputs (reading `dense_w1.weight`
    directly would silently use the base weight). Checked on the fast route and on the reference route."""
    torch.manual_seed(0)
    config = BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant="dense", num_labels=2)
    base = spread_synthesizer(BertSynthesizerForSequenceClassification(config)).eval()
    before = features(base)
    model = get_peft_model(base, LoraConfig(target_modules=["dense_w1"], r=4, init_lora_weights=False)).eval()
    for fast in (True, False):
        for module in model.modules():
            if hasattr(module, "use_fast_paths"):
                module.use_fast_paths = fast
        assert (features(model) - before).abs().max() > 1e-4, f"use_fast_paths={fast}"  # 0 if the delta were dropped


def test_lora_through_target_parameters_on_r_is_a_clear_error(base_dir):
    model = get_peft_model(BertSynthesizerForSequenceClassification.from_pretrained(base_dir),
                           LoraConfig(target_parameters=["synthesizer.random_r"], r=2))
    with pytest.raises(ValueError, match=r"target_parameters.*modules_to_save=\[\"synthesizer\"\]"):
        logits(model)


SENTENCE_TRANSFORMERS = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer

src, saved = sys.argv[1], sys.argv[2]
model = SentenceTransformer(src, trust_remote_code=True, device="cpu")
assert "hf_synthesizer" not in sys.modules
sentences = ["a synthesizer attends without dot products", "the cat sat on the mat"]
before = model.encode(sentences)
model.save(saved)  # the checkpoint's code renders its card with the installed package: imports it
after = model.encode(sentences)
reloaded = SentenceTransformer(saved, trust_remote_code=True, device="cpu").encode(sentences)
print("REPORT", json.dumps(dict(
    package_imported="hf_synthesizer" in sys.modules,
    live=float(np.abs(after - before).max()), reloaded=float(np.abs(reloaded - before).max()),
    module=type(model[0].auto_model).__module__, distinct=float(np.abs(before[0] - before[1]).max()),
)))
"""


def test_sentence_transformers_encodes_saves_and_reloads_a_remote_code_minilm(minilm_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer

    converted = tmp_path / "minilm-random"
    model = BertSynthesizerModel.from_pretrained(minilm_dir, attn_implementation="synthesizer_random")
    spread_synthesizer(model).save_pretrained(converted)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(converted)
    script = tmp_path / "st.py"
    script.write_text(textwrap.dedent(SENTENCE_TRANSFORMERS))
    env = dict(os.environ, PYTHONPATH=str(Path(hf_synthesizer.__file__).parents[1]), HF_HUB_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, str(script), str(converted), str(tmp_path / "saved")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["package_imported"], "saving did not import the package: the test would not show the clash"
    assert not report["module"].startswith("hf_synthesizer"), report  # the checkpoint's own copy
    assert report["live"] <= 1e-5 and report["reloaded"] <= 1e-5, report
    assert report["distinct"] > 1e-3, report
