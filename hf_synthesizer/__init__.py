"""Synthesizer attention (Tay et al., arXiv 2005.00743) for transformers' BERT and T5.

`import hf_synthesizer` registers the configs and models with the Auto classes (and for the Hub's auto_map) and
every `synthesizer_*` attn_implementation with `AttentionInterface` and `AttentionMaskInterface`.
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
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTextEncoding,
    AutoModelForTokenClassification,
)

from .modeling.configuration_synthesizer import (
    COMPONENTS,
    NAMED_VARIANTS,
    BertSynthesizerConfig,
    T5SynthesizerConfig,
    attn_implementation_name,
    parse_variant,
)
from .modeling.hub_mixin import register_for_hub
from .modeling.modeling_bert_synthesizer import (
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
)
from .modeling.modeling_t5_synthesizer import (
    T5SynthesizerAttention,
    T5SynthesizerEncoderModel,
    T5SynthesizerForConditionalGeneration,
    T5SynthesizerForQuestionAnswering,
    T5SynthesizerForSequenceClassification,
    T5SynthesizerForTokenClassification,
    T5SynthesizerModel,
    T5SynthesizerPreTrainedModel,
    T5SynthesizerStack,
)
from .modeling.synthesizer_attention import (
    SynthesizerAttentionMixin,
    SynthesizerLogits,
    register_attn_implementation,
    synthesizer_attention_forward,
)

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
T5_AUTO_CLASSES = {
    AutoModel: T5SynthesizerModel,
    AutoModelForPreTraining: T5SynthesizerForConditionalGeneration,
    AutoModelForSeq2SeqLM: T5SynthesizerForConditionalGeneration,
    AutoModelForSequenceClassification: T5SynthesizerForSequenceClassification,
    AutoModelForTokenClassification: T5SynthesizerForTokenClassification,
    AutoModelForQuestionAnswering: T5SynthesizerForQuestionAnswering,
    AutoModelForTextEncoding: T5SynthesizerEncoderModel,
}

for _config_class, _table in ((BertSynthesizerConfig, BERT_AUTO_CLASSES), (T5SynthesizerConfig, T5_AUTO_CLASSES)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    for _auto_class, _model_class in _table.items():
        _auto_class.register(_config_class, _model_class, exist_ok=True)
    # Saved checkpoints ship their code with an auto_map naming every head (hub_mixin.py).
    register_for_hub({_auto.__name__: _model for _auto, _model in _table.items()})

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
    "synthesizer_attention_forward",
]
