"""Synthesizer attention (Tay et al., arXiv 2005.00743) for transformers' BERT and T5.

`import hf_synthesizer` registers the configs and models with the Auto classes (and for the Hub's auto_map) and
every `synthesizer_*` attn_implementation with `AttentionInterface` and `AttentionMaskInterface`.

The package in three folders, by role:
- `modeling/`: what every saved checkpoint ships for `trust_remote_code` (configs, each variant's math and fast
  routes, attention, models, Hub mixin, length resizing); it imports only torch, transformers and its own files.
- `conversion/`: stock -> synthesizer tools (loading, convert, calibration, distillation, attention maps, model
  cards, `SynthesizerTrainer`, PEFT checks).
- `cli/`: the `hf-synthesizer` command, its subcommands and the ListOps demo task.
Module paths from before this layout (`hf_synthesizer.calibration`, `hf_synthesizer.synthesizer_math`, ...) still
import, as the same module objects (`MOVED_MODULES`).
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

from .modeling import (
    BERT_AUTO_CLASSES,
    COMPONENTS,
    NAMED_VARIANTS,
    T5_AUTO_CLASSES,
    BertSynthesizerConfig,
    BertSynthesizerCrossAttention,
    BertSynthesizerForMaskedLM,
    BertSynthesizerForMultipleChoice,
    BertSynthesizerForNextSentencePrediction,
    BertSynthesizerForPreTraining,
    BertSynthesizerForQuestionAnswering,
    BertSynthesizerForSequenceClassification,
    BertSynthesizerForTokenClassification,
    BertSynthesizerLMHeadModel,
    BertSynthesizerModel,
    BertSynthesizerPreTrainedModel,
    BertSynthesizerSelfAttention,
    SynthesizerAttentionMixin,
    SynthesizerLogits,
    T5SynthesizerAttention,
    T5SynthesizerConfig,
    T5SynthesizerEncoderModel,
    T5SynthesizerForConditionalGeneration,
    T5SynthesizerForQuestionAnswering,
    T5SynthesizerForSequenceClassification,
    T5SynthesizerForTokenClassification,
    T5SynthesizerModel,
    T5SynthesizerPreTrainedModel,
    T5SynthesizerStack,
    attn_implementation_name,
    parse_variant,
    register_attn_implementation,
    synthesizer_attention_forward,
)

__version__ = "0.2.0"

# Every `attn_implementation` name a user can pass, one per named variant.
ATTN_IMPLEMENTATIONS = tuple(attn_implementation_name(v) for v in NAMED_VARIANTS)

# Where each module of the flat layout (before issue 16) now lives.
MOVED_MODULES = {
    **dict.fromkeys(["configuration_synthesizer", "hub_mixin", "length_resizing", "modeling_bert_synthesizer",
                     "modeling_t5_synthesizer", "synthesizer_attention", "synthesizer_fast", "synthesizer_math",
                     "synthesizer_pretrained"], "modeling"),
    **dict.fromkeys(["attention_maps", "calibration", "checkpoints", "convert", "distillation", "loading", "lora",
                     "model_card", "trainer"], "conversion"),
    **dict.fromkeys(["card", "compare", "info", "listops"], "cli"),
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `hf_synthesizer.<old name>` of `MOVED_MODULES` as the module it moved to: the same module object in
    `sys.modules` under both names (never a second copy, which would break isinstance checks and registrations),
    imported on first use like any submodule. `python -m hf_synthesizer.<old name>` runs the moved module."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, loader_state=f"{__name__}.{MOVED_MODULES[name]}.{name}")

    def create_module(self, spec):
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__  # the import system now sets module.__spec__ = spec: exec_module undoes it
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname):  # only runpy asks (`python -m`): run the moved module as __main__
        package, _, name = fullname.rpartition(".")
        target = f"{package}.{MOVED_MODULES[name]}.{name}"
        return compile(f"import runpy; runpy.run_module({target!r}, run_name='__main__', alter_sys=True)", fullname,
                       "exec")


if not any(type(f).__module__ == __name__ and type(f).__name__ == "_MovedModuleFinder" for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())  # once: `importlib.reload(hf_synthesizer)` keeps the one there


def __getattr__(name):
    """Imported on first use: `render_model_card` (the model card, which `save_pretrained` of the models, and of the
    code a checkpoint carries, look up here) and the old module paths as attributes (`hf_synthesizer.calibration`)."""
    if name == "render_model_card":
        from .conversion.model_card import render_model_card

        return render_model_card
    if name in MOVED_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BERT_AUTO_CLASSES",
    "COMPONENTS",
    "NAMED_VARIANTS",
    "T5_AUTO_CLASSES",
    "BertSynthesizerConfig",
    "BertSynthesizerCrossAttention",
    "BertSynthesizerForMaskedLM",
    "BertSynthesizerForMultipleChoice",
    "BertSynthesizerForNextSentencePrediction",
    "BertSynthesizerForPreTraining",
    "BertSynthesizerForQuestionAnswering",
    "BertSynthesizerForSequenceClassification",
    "BertSynthesizerForTokenClassification",
    "BertSynthesizerLMHeadModel",
    "BertSynthesizerModel",
    "BertSynthesizerPreTrainedModel",
    "BertSynthesizerSelfAttention",
    "SynthesizerAttentionMixin",
    "SynthesizerLogits",
    "T5SynthesizerAttention",
    "T5SynthesizerConfig",
    "T5SynthesizerEncoderModel",
    "T5SynthesizerForConditionalGeneration",
    "T5SynthesizerForQuestionAnswering",
    "T5SynthesizerForSequenceClassification",
    "T5SynthesizerForTokenClassification",
    "T5SynthesizerModel",
    "T5SynthesizerPreTrainedModel",
    "T5SynthesizerStack",
    "attn_implementation_name",
    "parse_variant",
    "register_attn_implementation",
    "render_model_card",
    "synthesizer_attention_forward",
]
