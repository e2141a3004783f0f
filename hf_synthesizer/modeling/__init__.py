"""The modeling code: everything a saved synthesizer checkpoint ships for `trust_remote_code`.

transformers copies a model's modeling file and every sibling it imports (`from .x import y`) into the checkpoint,
flat; so the files of this folder import only torch, transformers, the standard library and each other, never the
rest of `hf_synthesizer` (tests/test_layout.py checks; hub_mixin's optional lookup of the installed package's
`render_model_card`, inside try, is the one exception, and a checkpoint runs without it). This `__init__` is not
shipped: importing the folder registers the configs and models with the Auto classes and marks them for the Hub's
`auto_map`.

Where each variant's math lives: `synthesizer_math.py` is the plain reference, small pure functions per term
(`dense_logits`, `random_logits`, `factorized_dense_logits`, `factorized_random_logits`, `vanilla_logits`, the
mixture's `mixture_weights`/`mix_logits`, then `attention_probabilities`); one file per fast route checked against
it (`route_shared.py` for input-independent logits: random, fixed_random, factorized_random; `route_feature.py` for
dot products of features: dense, factorized_random, with vanilla; `route_per_example.py` for the other mixtures and
attention dropout; `route_factorized_dense.py`; `route_chunked_reference.py` for factorized dense mixtures), with
what they share in `synthesizer_fast.py`; `synthesizer_positions.py` decides positions, `synthesizer_cache.py`
handles the decoding cache; `synthesizer_attention.py` owns the parameters (`SynthesizerLogits`), describes each
call (`AttentionCall`, `Mask`), picks the route (`choose_route`, run by `fast_synthesizer_attention`) and registers
every `synthesizer_*` attn_implementation. The rest: `configuration_synthesizer.py` (configs, variant
names), `synthesizer_pretrained.py` with `modeling_bert_synthesizer.py` and `modeling_t5_synthesizer.py` (the
models: wiring, masks, caches), `hub_mixin.py` (auto_map, model card hook), `length_resizing.py` (resampling the
length-bound weights to a new `synthesizer_length`).
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

from .configuration_synthesizer import (
    COMPONENTS,
    NAMED_VARIANTS,
    BertSynthesizerConfig,
    T5SynthesizerConfig,
    attn_implementation_name,
    parse_variant,
)
from .hub_mixin import register_for_hub
from .modeling_bert_synthesizer import (
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
from .modeling_t5_synthesizer import (
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
from .synthesizer_attention import (
    SynthesizerAttentionMixin,
    SynthesizerLogits,
    register_attn_implementation,
    synthesizer_attention_forward,
)

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
    "BERT_AUTO_CLASSES",
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
    "COMPONENTS",
    "NAMED_VARIANTS",
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
    "T5_AUTO_CLASSES",
    "attn_implementation_name",
    "parse_variant",
    "register_attn_implementation",
    "synthesizer_attention_forward",
]
