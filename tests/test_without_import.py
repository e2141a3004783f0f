"""What a user sees when `hf_synthesizer` is not imported (issue 26): transformers' own messages, which the README and
docs/sharing.md quote so that a search for them lands on the fix. Run in a fresh interpreter that cannot import the
package; if a transformers release rewords them, this fails and the docs are updated."""

from pathlib import Path

import torch
from hub_fakes import run_without_package
from transformers import BertForMaskedLM

import hf_synthesizer
from conftest import tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_messages_the_docs_quote_are_what_transformers_says(tmp_path):
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(tmp_path / "stock")
    hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(
        tmp_path / "stock", attn_implementation="synthesizer_random").save_pretrained(tmp_path / "synth")
    result = run_without_package("""
        import logging, torch
        from transformers import AutoModelForMaskedLM, BertForMaskedLM
        from transformers.utils import logging as hf_logging
        for call in (lambda: AutoModelForMaskedLM.from_pretrained("stock", attn_implementation="synthesizer_random"),
                     lambda: AutoModelForMaskedLM.from_pretrained("synth")):
            try:
                call()
            except ValueError as e:
                print("ERROR:", " ".join(str(e).split()))
        hf_logging.set_verbosity_warning()
        model = BertForMaskedLM.from_pretrained("synth")
        print("STOCK CLASS:", type(model).__name__, model.config.model_type,
              hasattr(model.bert.encoder.layer[0].attention.self, "synthesizer"))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'ERROR: Specified `attn_implementation="synthesizer_random"` is not supported.' in out
    assert "contains custom code which must be executed to correctly load the model" in out
    assert "pass the argument `trust_remote_code=True`" in out
    # A stock class loads stock BERT from a synthesizer checkpoint, after one warning: the docs say so.
    assert "STOCK CLASS: BertForMaskedLM bert_synthesizer False" in out
    warning = "You are using a model of type `bert_synthesizer` to instantiate a model of type `bert`"
    assert warning in result.stderr

    readme = " ".join((ROOT / "README.md").read_text().split())
    sharing = " ".join((ROOT / "docs" / "sharing.md").read_text().split())
    assert 'Specified attn_implementation="synthesizer_random" is not supported. The only possible arguments' in readme
    assert "contains custom code which must be executed to correctly load the model" in readme
    assert warning.replace("`", "") in readme and warning.replace("`", "") in sharing
    assert "import hf_synthesizer # first: registers" in readme  # the README's first snippet says why it is there
