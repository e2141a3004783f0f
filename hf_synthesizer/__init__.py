"""Synthesizer attention (Tay et al., arXiv 2005.00743) for transformers' BERT and T5.

`import hf_synthesizer` registers the configs and models with the Auto classes and every `synthesizer_*`
attn_implementation with `AttentionInterface` and `AttentionMaskInterface`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_synthesizer import (
    COMPONENTS,
    NAMED_VARIANTS,
    BertSynthesizerConfig,
    attn_implementation_name,
    parse_variant,
)
from .modeling_bert_synthesizer import (
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
)
from .hub_mixin import register_for_hub
from .synthesizer_attention import SynthesizerLogits, register_attn_implementation, synthesizer_attention_forward

__version__ = "0.1.0"

# Every `attn_implementation` name a user can pass, one per named variant.
ATTN_IMPLEMENTATIONS = tuple(attn_implementation_name(v) for v in NAMED_VARIANTS)

BERT_AUTO_CLASSES = {
    AutoModel: BertSynthesizerModel,
    AutoModelForPreTraining: BertSynthesizerForPreTraining,
    AutoModelForCausalLM: BertSynthesizerLMHeadModel,
    AutoModelForMaskedLM: BertSynthesizerForMaskedLM,
    AutoModelForNextSentencePrediction: BertSynthesizerForNextSentencePrediction,
    AutoModelForSequenceClassification: BertSynthesizerForSequenceClassification,
    AutoModelForMultipleChoice: BertSynthesizerForMultipleChoice,
    AutoModelForTokenClassification: BertSynthesizerForTokenClassification,
    AutoModelForQuestionAnswering: BertSynthesizerForQuestionAnswering,
}

AutoConfig.register(BertSynthesizerConfig.model_type, BertSynthesizerConfig, exist_ok=True)
for _auto_class, _model_class in BERT_AUTO_CLASSES.items():
    _auto_class.register(BertSynthesizerConfig, _model_class, exist_ok=True)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BERT_AUTO_CLASSES",
    "COMPONENTS",
    "NAMED_VARIANTS",
    "BertSynthesizerConfig",
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
    "SynthesizerLogits",
    "attn_implementation_name",
    "parse_variant",
    "register_attn_implementation",
    "synthesizer_attention_forward",
]

# Saved checkpoints ship their code with an auto_map naming every head (hub_mixin.py). Covers the T5 classes too
# when this module defines T5_AUTO_CLASSES.
for _table in ("BERT_AUTO_CLASSES", "T5_AUTO_CLASSES"):
    if _table in globals():
        register_for_hub({_auto.__name__: _model for _auto, _model in globals()[_table].items()})
