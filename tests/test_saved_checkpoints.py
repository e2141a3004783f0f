"""Checkpoints saved by an earlier hf_synthesizer still load and give the outputs they gave when saved.

The fixture (tests/fixtures/saved_2026_11_30, made by tests/fixtures/make_saved_before_layout.py at commit a0f43ad)
holds a BERT random+vanilla classifier and a T5 factorized_dense seq2seq model, both with synthesizer weights far from
their init, saved before eager/sdpa became backends of synthesizer math and before the package was laid out by role.
Nothing a user saved may be lost or silently changed: the logits must match, with the package installed (the classes
of today) and without it (the code each checkpoint carries, through trust_remote_code).
"""

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from hub_fakes import run_without_package

FIXTURE = Path(__file__).parent / "fixtures" / "saved_2026_11_30"
EXPECTED = load_file(str(FIXTURE / "expected.safetensors"))


def _logits(bert, t5):
    e = EXPECTED
    with torch.no_grad():
        return (bert(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).logits,
                t5(input_ids=e["input_ids"], attention_mask=e["attention_mask"],
                   decoder_input_ids=e["decoder_input_ids"]).logits)


def test_saved_checkpoints_load_with_the_package_and_give_the_same_logits():
    bert = AutoModelForSequenceClassification.from_pretrained(FIXTURE / "bert_random_vanilla").eval()
    t5 = AutoModelForSeq2SeqLM.from_pretrained(FIXTURE / "t5_factorized_dense").eval()
    assert type(bert).__module__.startswith("hf_synthesizer") and type(t5).__module__.startswith("hf_synthesizer")
    assert (bert.config.synthesizer_variant, t5.config.synthesizer_variant) == ("random+vanilla", "factorized_dense")
    bert_logits, t5_logits = _logits(bert, t5)
    torch.testing.assert_close(bert_logits, EXPECTED["bert_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t5_logits, EXPECTED["t5_logits"], rtol=1e-4, atol=1e-5)


def test_saved_checkpoints_load_without_the_package_and_give_the_same_logits(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "saved")
    result = run_without_package("""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
        e = load_file("saved/expected.safetensors")
        bert = AutoModelForSequenceClassification.from_pretrained("saved/bert_random_vanilla", trust_remote_code=True)
        t5 = AutoModelForSeq2SeqLM.from_pretrained("saved/t5_factorized_dense", trust_remote_code=True)
        with torch.no_grad():
            b = bert.eval()(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).logits
            t = t5.eval()(input_ids=e["input_ids"], attention_mask=e["attention_mask"],
                          decoder_input_ids=e["decoder_input_ids"]).logits
        torch.testing.assert_close(b, e["bert_logits"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t, e["t5_logits"], rtol=1e-4, atol=1e-5)
        print("same logits", type(bert).__name__, type(t5).__name__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same logits BertSynthesizerForSequenceClassification T5SynthesizerForConditionalGeneration" in result.stdout
