"""BERT with synthesizer self-attention: every stock BERT head, with the self-attention of the configured layers
replaced by `BertSynthesizerSelfAttention`. Embeddings, value/output projections, FFN, LayerNorms and heads are
the stock modules, so a stock BERT checkpoint loads into them; query/key load only where a vanilla term uses them.

This file ships with saved checkpoints (trust_remote_code): it imports only torch, transformers and siblings.
"""

import torch
from torch import nn
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.models.bert.modeling_bert import (
    BertCrossAttention,
    BertEmbeddings,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLayer,
    BertLMHeadModel,
    BertModel,
    BertPreTrainedModel,
)

from .configuration_synthesizer import BertSynthesizerConfig
from .synthesizer_attention import (
    SynthesizerAttentionMixin,
    SynthesizerLogits,
    attention_function,
    synthesizer_masks,
)
from .synthesizer_cache import (
    cache_layer_of,
    check_cache_position,
    key_placeholder,
    resolve_cache,
    update_self_attention_cache,
)
from .synthesizer_math import check_input_length
from .synthesizer_pretrained import SynthesizerPreTrainedMixin, stock_init_building


class BertSynthesizerSelfAttention(SynthesizerAttentionMixin, nn.Module):
    """BERT self-attention whose logits come from `self.synthesizer`; `query`/`key` exist only when a vanilla
    term uses them. Checkpoint names (`value`, `query`, `key`) are BERT's own."""

    def __init__(self, config, is_causal=False, layer_idx=None):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.scaling = self.attention_head_size**-0.5
        self.synthesizer = SynthesizerLogits(
            config,
            config.components_for_layer(layer_idx),
            config.hidden_size,
            self.num_attention_heads,
            self.attention_head_size,
        )
        if self.synthesizer.uses_dot_product:
            self.query = nn.Linear(config.hidden_size, self.all_head_size)
            self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.is_decoder = config.is_decoder
        self.is_causal = is_causal
        self.layer_idx = layer_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as `BertSelfAttention.forward` (transformers/models/bert/modeling_bert.py) on every supported
        transformers: the cache arrives as `cache=` (5.24) or `past_key_values=` (5.23); a caller's `cache_position`
        must agree with the cache (`check_cache_position`); `encoder_hidden_states`
        (passed by `BertAttention`, always None for self-attention) is ignored as the stock module ignores it; any
        other keyword goes to `synthesizer_attention_forward`, which raises on what it does not handle.
        hidden_states `(B, lq, d)` -> `(output (B, lq, d), probabilities (B, H, lq, lk) or None)`."""
        cache = resolve_cache(cache, past_key_values)
        cache_position = kwargs.pop("cache_position", None)  # checked against the cache below
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, self.num_attention_heads, self.attention_head_size)
        value_layer = self.value(hidden_states).view(*hidden_shape).transpose(1, 2)
        if hasattr(self, "query"):  # built only when a vanilla term reads it
            query_layer = self.query(hidden_states).view(*hidden_shape).transpose(1, 2)
            key_layer = self.key(hidden_states).view(*hidden_shape).transpose(1, 2)
        query_offset, cache_layer = 0, None
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.self_attention_cache
        if not hasattr(self, "query"):
            # Nothing reads keys: the cache keeps a placeholder that still counts the positions.
            query_layer, key_layer = None, key_placeholder(value_layer, cache, self.layer_idx)
        if cache is not None:
            query_offset, key_layer, value_layer, attention_mask = update_self_attention_cache(
                cache, self.layer_idx, key_layer, value_layer, attention_mask,
                None if self.synthesizer.is_vanilla else self.synthesizer.length,
            )
            if self.layer_idx in (0, None):  # once per model forward: every layer has seen as many
                check_cache_position(cache_position, query_offset)
            cache_layer = cache_layer_of(cache, self.layer_idx)

        attention_interface = attention_function(self.config._attn_implementation)
        attn_output, attn_weights = attention_interface(
            self,
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            synthesizer_inputs=hidden_states,
            query_offset=query_offset,
            cache_layer=cache_layer,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, self.all_head_size).contiguous()
        return attn_output, attn_weights


class BertSynthesizerCrossAttention(SynthesizerAttentionMixin, BertCrossAttention):
    """BERT's cross-attention, dot-product as in the paper and the reference code; a synthesizer module only so that it
    runs under a synthesizer attn_implementation (its `synthesizer` is plain dot-product, with no parameters)."""

    def __init__(self, config, is_causal=False, layer_idx=None):
        super().__init__(config, is_causal=is_causal, layer_idx=layer_idx)
        self.synthesizer = SynthesizerLogits(
            config, ("vanilla",), config.hidden_size, self.num_attention_heads, self.attention_head_size
        )


class BertSynthesizerEmbeddings(BertEmbeddings):
    """BERT's embeddings, checking first that the input fits the model (`check_input_length`): with the default
    `synthesizer_length = max_position_embeddings` an over-long input would otherwise fail in the position lookup
    with a bare shape error before any synthesizer layer could name the limit."""

    def __init__(self, config):
        super().__init__(config)
        self.config = config

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, **kwargs):
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        past = kwargs.get("cache_length", kwargs.get("past_key_values_length", 0))  # transformers 5.24 / 5.23
        synthesized = self.config.synthesizer_variant != "vanilla"
        check_input_length(length, past, position_ids, self.config.synthesizer_length if synthesized else None,
                           self.config.max_position_embeddings)
        return super().forward(input_ids, token_type_ids, position_ids, inputs_embeds, **kwargs)


class BertSynthesizerPreTrainedModel(SynthesizerPreTrainedMixin, BertPreTrainedModel):
    config_class = BertSynthesizerConfig
    config: BertSynthesizerConfig
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {
        "hidden_states": BertLayer,
        "attentions": BertSynthesizerSelfAttention,
        "cross_attentions": BertCrossAttention,
    }

    def post_init(self):
        """A `BertModel` installs its synthesizer attention before weights are initialised (the heads build a
        `BertSynthesizerModel` directly, see `stock_init_building`)."""
        if isinstance(self, BertModel):
            self._install_synthesizer_attention()
        super().post_init()


class BertSynthesizerModel(BertSynthesizerPreTrainedModel, BertModel):
    def _create_attention_masks(self, *args, **kwargs):
        """BERT's masks, built under a synthesizer name when the backend is "sdpa" (`synthesizer_masks`): padding
        comes as the key mask the fast routes need, and transformers' own "sdpa" mask builder is left alone."""
        with synthesizer_masks(self.config):
            return super()._create_attention_masks(*args, **kwargs)

    def _install_synthesizer_attention(self):
        ignored = []
        config = self.config
        self.embeddings = BertSynthesizerEmbeddings(config)
        for i, layer in enumerate(self.encoder.layer):
            layer.attention.self = BertSynthesizerSelfAttention(config, is_causal=config.is_decoder, layer_idx=i)
            if hasattr(layer, "crossattention"):  # cross-attention stays dot-product (paper and reference code)
                layer.crossattention.self = BertSynthesizerCrossAttention(config, layer_idx=i)
            if not layer.attention.self.synthesizer.uses_dot_product:
                ignored.append(rf"encoder\.layer\.{i}\.attention\.self\.(query|key)\.(weight|bias)$")
        # A stock checkpoint's query/key weights of layers that no longer use them are dropped without warnings.
        self._keys_to_ignore_on_load_unexpected = ignored


class BertSynthesizerForPreTraining(BertSynthesizerPreTrainedModel, BertForPreTraining):
    __init__ = stock_init_building(BertForPreTraining, BertModel=BertSynthesizerModel)


class BertSynthesizerLMHeadModel(BertSynthesizerPreTrainedModel, BertLMHeadModel):
    __init__ = stock_init_building(BertLMHeadModel, BertModel=BertSynthesizerModel)


class BertSynthesizerForMaskedLM(BertSynthesizerPreTrainedModel, BertForMaskedLM):
    __init__ = stock_init_building(BertForMaskedLM, BertModel=BertSynthesizerModel)


class BertSynthesizerForNextSentencePrediction(BertSynthesizerPreTrainedModel, BertForNextSentencePrediction):
    __init__ = stock_init_building(BertForNextSentencePrediction, BertModel=BertSynthesizerModel)


class BertSynthesizerForSequenceClassification(BertSynthesizerPreTrainedModel, BertForSequenceClassification):
    __init__ = stock_init_building(BertForSequenceClassification, BertModel=BertSynthesizerModel)


class BertSynthesizerForMultipleChoice(BertSynthesizerPreTrainedModel, BertForMultipleChoice):
    __init__ = stock_init_building(BertForMultipleChoice, BertModel=BertSynthesizerModel)


class BertSynthesizerForTokenClassification(BertSynthesizerPreTrainedModel, BertForTokenClassification):
    __init__ = stock_init_building(BertForTokenClassification, BertModel=BertSynthesizerModel)


class BertSynthesizerForQuestionAnswering(BertSynthesizerPreTrainedModel, BertForQuestionAnswering):
    __init__ = stock_init_building(BertForQuestionAnswering, BertModel=BertSynthesizerModel)


__all__ = [
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
]
