"""T5 with synthesizer self-attention: every stock T5 model class, with the self-attention of the configured stacks
(encoder, decoder or both) and layers computed by `T5SynthesizerAttention`. Cross-attention and the self-attention
of layers that stay vanilla are T5's dot-product attention. Embeddings, value/output projections, the relative
position bias, FFN (plain or gated), layer norms and heads are the stock modules, so a stock T5 checkpoint loads
into them; `q`/`k` of a self-attention load only where a vanilla term uses them.

The decoder's self-attention is causal and works with `EncoderDecoderCache`: query position `p` uses row `p` of
the synthesized logits, sliced to the cache length. Pure synthesizers need no keys: the cache holds a
`(B, H, len, 1)` placeholder of zeros that counts the positions (an empty one would count as length 0).

This file ships with saved checkpoints (trust_remote_code): it imports only torch, transformers and siblings.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.t5.modeling_t5 import (
    T5Attention,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5ForQuestionAnswering,
    T5ForSequenceClassification,
    T5ForTokenClassification,
    T5Model,
    T5PreTrainedModel,
    T5Stack,
)

from .configuration_synthesizer import T5SynthesizerConfig
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
from .synthesizer_pretrained import SynthesizerPreTrainedMixin, stock_init_building


class T5SynthesizerAttention(SynthesizerAttentionMixin, T5Attention):
    """T5 attention whose logits come from `self.synthesizer`. For cross-attention and layers that stay vanilla
    the synthesizer is plain dot-product (`components == ("vanilla",)`, no parameters). `q`/`k` exist only when a
    vanilla term uses them; checkpoint names (`q`, `k`, `v`, `o`, `relative_attention_bias`) are T5's own. T5 takes
    no position_ids: a packed row's positions come from its block-diagonal mask (see `token_positions`)."""

    def __init__(
        self,
        config,
        has_relative_attention_bias=False,
        layer_idx: int | None = None,
        is_causal: bool = False,
        components: tuple[str, ...] = ("vanilla",),
    ):
        super().__init__(config, has_relative_attention_bias, layer_idx, is_causal)
        self.synthesizer = SynthesizerLogits(config, components, config.d_model, config.num_heads, config.d_kv)
        # Read by `synthesizer_attention_forward`: add the relative position bias to synthesized logits too.
        self.bias_synthesized = config.synthesizer_position_bias
        # The synthesizer's input layers get a T5-style init in `_init_weights`; the tag says which.
        for name, linear in self.synthesizer.named_children():
            if isinstance(linear, nn.Linear):
                linear._t5_synthesizer_linear = "factorized" if name.startswith("factorized") else "dense"
        if not self.synthesizer.uses_dot_product:
            del self.q, self.k

    def forward(
        self,
        hidden_states,
        mask=None,
        key_value_states=None,
        position_bias=None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ):
        """Same contract and flow as `T5Attention.forward` (transformers/models/t5/modeling_t5.py) on every supported
        transformers, with optional q/k and the synthesizer inputs: the cache arrives as `cache=` (5.24) or
        `past_key_values=` (5.23); any other keyword goes to `synthesizer_attention_forward`, which raises on what it
        does not handle. hidden_states `(B, lq, d)` -> `(output (B, lq, d), position_bias, probabilities or None)`."""
        cache = resolve_cache(cache, past_key_values)
        # T5 hands every model keyword to both stacks: a caller's cache_position is the decoder's, checked against the
        # self-attention cache below; the encoder and cross-attention have no positions in that cache and ignore it.
        cache_position = kwargs.pop("cache_position", None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.key_value_proj_dim)
        is_cross_attention = key_value_states is not None
        uses_qk = hasattr(self, "q")  # built only when a vanilla term reads it

        query_states = self.q(hidden_states).view(hidden_shape).transpose(1, 2) if uses_qk else None

        key_states, value_states, mask, query_offset, cache_layer = self.keys_and_values(
            hidden_states, key_value_states, mask, cache, cache_position
        )

        if position_bias is None:
            position_bias = self.new_position_bias(input_shape[1], value_states, query_offset)

        attention_interface = attention_function(self.config._attn_implementation)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
            position_bias=position_bias,
            synthesizer_inputs=hidden_states,
            query_offset=None if is_cross_attention else query_offset,
            cache_layer=cache_layer,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o(attn_output)
        return attn_output, position_bias, attn_weights

    def keys_and_values(self, hidden_states, key_value_states, mask, cache, cache_position):
        """Keys and values of this call, through the cache as `T5Attention.forward` does: cross-attention reuses the
        encoder's once computed; self-attention appends to the cache (`update_self_attention_cache`). Returns
        `(keys (B, H, lk, dh) or a placeholder, values (B, H, lk, dh), mask, query_offset, cache_layer)`;
        `query_offset` is the number of positions the self-attention cache had seen (0 without a cache)."""
        is_cross_attention = key_value_states is not None
        is_updated = False
        layer_cache = cache
        if isinstance(cache, EncoderDecoderCache):
            is_updated = cache.is_updated.get(self.layer_idx)
            layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache

        query_offset, cache_layer = 0, None
        uses_qk = hasattr(self, "q")  # q and k are built together
        current_states = key_value_states if is_cross_attention else hidden_states
        if is_cross_attention and cache is not None and is_updated:
            key_states = layer_cache.layers[self.layer_idx].keys
            value_states = layer_cache.layers[self.layer_idx].values
        else:
            kv_shape = (*current_states.shape[:-1], -1, self.key_value_proj_dim)
            value_states = self.v(current_states).view(kv_shape).transpose(1, 2)
            if uses_qk:
                key_states = self.k(current_states).view(kv_shape).transpose(1, 2)
            else:
                # Nothing reads keys; the cache still needs them to count positions (see key_placeholder).
                key_states = key_placeholder(value_states, None if cache is None else layer_cache, self.layer_idx)
            if cache is not None and is_cross_attention:
                key_states, value_states = layer_cache.update(key_states, value_states, self.layer_idx)
                if isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True
            elif cache is not None:
                query_offset, key_states, value_states, mask = update_self_attention_cache(
                    layer_cache, self.layer_idx, key_states, value_states, mask,
                    None if self.synthesizer.is_vanilla else self.synthesizer.length,
                )
                if self.layer_idx in (0, None):  # once per model forward: every layer has seen as many
                    check_cache_position(cache_position, query_offset)
                cache_layer = cache_layer_of(layer_cache, self.layer_idx)
        return key_states, value_states, mask, query_offset, cache_layer

    def new_position_bias(self, query_length: int, value_states, query_offset):
        """T5's relative position bias `(1, H, lq, lk)` for a layer that computes it (the first), zeros for the others
        when none is passed (as `T5Attention.forward` does); `query_offset` the positions the cache has seen."""
        key_length = value_states.shape[-2]
        if self.has_relative_attention_bias:
            return self.compute_bias(
                query_length, key_length, device=value_states.device, past_seen_tokens=query_offset
            )
        position_bias = torch.zeros(
            (1, self.n_heads, query_length, key_length), device=value_states.device, dtype=value_states.dtype
        )
        if self.gradient_checkpointing and self.training:
            position_bias.requires_grad = True
        return position_bias


class T5SynthesizerPreTrainedModel(SynthesizerPreTrainedMixin, T5PreTrainedModel):
    config_class = T5SynthesizerConfig
    config: T5SynthesizerConfig
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module):
        factor = self.config.initializer_factor
        kind = getattr(module, "_t5_synthesizer_linear", None)
        if kind is not None:
            # T5 configs have no initializer_range, so the generic init would draw these with std = factor (1.0),
            # giving near one-hot attention at init. Dense: like T5's own input projections (`wi`), its small W2
            # keeps the logits small. Factorized dense: logits are products A_i * B_j, so each factor gets
            # sqrt(0.02) of that, for products of std ~0.02 like R.
            std = factor * self.config.d_model**-0.5 * (0.02**0.5 if kind == "factorized" else 1.0)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        if isinstance(module, T5SynthesizerAttention) and not hasattr(module, "q"):
            # T5's own init reads `module.q`/`module.k`, which pure synthesizers do not have: same init without them.
            d_model, inner = self.config.d_model, self.config.num_heads * self.config.d_kv
            init.normal_(module.v.weight, mean=0.0, std=factor * (d_model**-0.5))
            init.normal_(module.o.weight, mean=0.0, std=factor * (inner**-0.5))
            if module.has_relative_attention_bias:
                init.normal_(module.relative_attention_bias.weight, mean=0.0, std=factor * (d_model**-0.5))
        else:
            super()._init_weights(module)  # stock T5 init, then the synthesizer's (SynthesizerPreTrainedMixin)

    def _synthesizer_init_std(self) -> float:
        # T5 configs have no initializer_range: the BERT default 0.02 keeps R small (attention close to uniform).
        return 0.02 * self.config.initializer_factor

    def _initialize_weights(self, module, is_custom_code: bool = False):
        """transformers treats classes defined outside it as custom code and then skips every module whose own
        (non-recursive) parameters are all initialised: modules without own parameters, i.e. exactly where T5 puts
        its init (`T5Attention`, `T5DenseActDense`, `T5ClassificationHead` initialise their children), would keep the
        generic std = initializer_factor draw. `_init_weights` here only uses `transformers.initialization`, which
        already skips loaded tensors, so the shortcut is not needed."""
        super()._initialize_weights(module, is_custom_code=False)

    def post_init(self):
        """A `T5Stack` installs its synthesizer attention modules before weights are initialised (the models build
        `T5SynthesizerStack`s directly, see `stock_init_building`)."""
        if isinstance(self, T5Stack):
            self._install_synthesizer_attention()
        super().post_init()


class T5SynthesizerStack(T5SynthesizerPreTrainedModel, T5Stack):
    """A `T5Stack` whose attention modules are `T5SynthesizerAttention`s (synthesized where configured)."""

    def forward(self, *args, **kwargs):
        """T5's stack, its masks built under a synthesizer name when the backend is "sdpa" (`synthesizer_masks`: the
        stack builds them inside its forward; its attention modules treat that name as "sdpa")."""
        with synthesizer_masks(self.config):
            return super().forward(*args, **kwargs)

    def _install_synthesizer_attention(self):
        config = self.config
        stack = "decoder" if config.is_decoder else "encoder"
        ignored = []
        for i, block in enumerate(self.block):
            components = config.components_for_stack_layer(stack, i)
            old = block.layer[0].SelfAttention
            block.layer[0].SelfAttention = T5SynthesizerAttention(
                config, old.has_relative_attention_bias, layer_idx=i, is_causal=old.is_causal, components=components
            )
            if not block.layer[0].SelfAttention.synthesizer.uses_dot_product:
                ignored.append(rf"{stack}\.block\.{i}\.layer\.0\.SelfAttention\.(q|k)\.weight$")
            if config.is_decoder:
                # Cross-attention stays dot-product; as a synthesizer module it runs under any attn_implementation.
                block.layer[1].EncDecAttention = T5SynthesizerAttention(config, False, layer_idx=i, is_causal=False)
        # A stock checkpoint's q/k weights of layers that no longer use them are dropped without warnings.
        self._keys_to_ignore_on_load_unexpected = ignored


class T5SynthesizerModel(T5SynthesizerPreTrainedModel, T5Model):
    __init__ = stock_init_building(T5Model, T5Stack=T5SynthesizerStack)


class T5SynthesizerForConditionalGeneration(T5SynthesizerPreTrainedModel, T5ForConditionalGeneration):
    __init__ = stock_init_building(T5ForConditionalGeneration, T5Stack=T5SynthesizerStack)


class T5SynthesizerEncoderModel(T5SynthesizerPreTrainedModel, T5EncoderModel):
    __init__ = stock_init_building(T5EncoderModel, T5Stack=T5SynthesizerStack)


class T5SynthesizerForSequenceClassification(T5SynthesizerPreTrainedModel, T5ForSequenceClassification):
    __init__ = stock_init_building(T5ForSequenceClassification, T5Model=T5SynthesizerModel)


class T5SynthesizerForTokenClassification(T5SynthesizerPreTrainedModel, T5ForTokenClassification):
    __init__ = stock_init_building(T5ForTokenClassification, T5EncoderModel=T5SynthesizerEncoderModel)


class T5SynthesizerForQuestionAnswering(T5SynthesizerPreTrainedModel, T5ForQuestionAnswering):
    __init__ = stock_init_building(T5ForQuestionAnswering, T5Stack=T5SynthesizerStack)


__all__ = [
    "T5SynthesizerAttention",
    "T5SynthesizerEncoderModel",
    "T5SynthesizerForConditionalGeneration",
    "T5SynthesizerForQuestionAnswering",
    "T5SynthesizerForSequenceClassification",
    "T5SynthesizerForTokenClassification",
    "T5SynthesizerModel",
    "T5SynthesizerPreTrainedModel",
    "T5SynthesizerStack",
]
