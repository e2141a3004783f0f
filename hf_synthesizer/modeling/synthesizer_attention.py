"""Synthesizer attention for transformers: the module owning a layer's synthesizer parameters, the attention
function registered with `AttentionInterface`, and the mask function registered with `AttentionMaskInterface`
(without it transformers would hand the attention function no padding or causal mask at all).

Importing this file registers `synthesizer_<variant>` for every named variant.
This file ships with saved checkpoints (trust_remote_code): it imports only torch, transformers and siblings.
"""

import contextlib
import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers import initialization as init
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    is_tracing,
    prepare_padding_mask,
    sdpa_mask,
)

from .configuration_synthesizer import NAMED_VARIANTS, attn_implementation_name
from .route_chunked_reference import chunked_reference_attention
from .route_factorized_dense import factorized_dense_attention
from .route_feature import feature_attention
from .route_per_example import Terms, generic_per_example_attention, per_example_attention, shared_logits
from .route_shared import generic_shared_attention, shared_logits_attention, shared_probabilities
from .synthesizer_cache import check_cache_position
from .synthesizer_fast import MASKED, InputIndependentCache, general_bias, keyless_rows, no_key_rows, uniform_rows
from .synthesizer_positions import Positions, record_key_positions, token_positions
from .synthesizer_math import (
    additive_mask,
    at_positions,
    attention_probabilities,
    check_length,
    dense_logits,
    factorized_dense_logits,
    factorized_random_logits,
    factorized_random_logits_at,
    mix_logits,
    mixture_weights,
    random_logits,
    relu,
    causal_mask,
    reorder_slots,
    take,
    vanilla_logits,
)


class SynthesizerLogits(nn.Module):
    """The synthesizer parameters of one attention layer and its mixture weights.

    `forward` returns the mixed logits `(B or 1, H, lq, lk)` of all components, the vanilla one computed from the
    query and key it is given. Parameters are sized by the maximum length `L`; a batch uses rows
    `q0:q0+lq` and columns `:lk`.
    """

    def __init__(self, config, components, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__()
        self.components = tuple(components)
        self.num_heads = num_heads
        self.length = config.synthesizer_length
        self.mixture = config.synthesizer_mixture
        length, heads = self.length, num_heads
        if "dense" in self.components:
            w2_heads = 1 if config.synthesizer_dense_shared_w2 else heads
            self.dense_w1 = nn.Linear(hidden_size, heads * head_dim)
            self.dense_w2 = nn.Parameter(torch.empty(w2_heads, head_dim, length))
            self.dense_b2 = nn.Parameter(torch.empty(w2_heads, length))
        if "factorized_dense" in self.components:
            a, b = config.factorized_dense_split
            self.factorized_dense_a = nn.Linear(hidden_size, heads * a)
            self.factorized_dense_b = nn.Linear(hidden_size, heads * b)
        if "random" in self.components:
            self.random_r = nn.Parameter(torch.empty(heads, length, length))
        if "fixed_random" in self.components:
            # Never trained but part of the checkpoint: a persistent buffer, saved and loaded with the weights.
            self.register_buffer("fixed_random_r", torch.empty(heads, length, length), persistent=True)
        if "factorized_random" in self.components:
            rank = config.synthesizer_factorized_rank
            self.factorized_random_r1 = nn.Parameter(torch.empty(heads, length, rank))
            self.factorized_random_r2 = nn.Parameter(torch.empty(heads, length, rank))
        # softmax(R) of random / fixed random layers, or the mixed R terms of a mixture with per-example terms
        # (random + vanilla), used whenever none of their parameters needs a gradient: inference, and fixed random in
        # training too (R is frozen). Costs one more (H, lq, lk) fp32 tensor per layer, as large as R itself; set
        # `cache_input_independent = False` to recompute block by block instead (O(block) memory).
        # Validity conditions: see InputIndependentCache.
        self.input_independent_cache = InputIndependentCache()
        self.cache_input_independent = True
        # False runs the plain reference implementation (synthesizer_math) instead of the fast paths, as the "eager"
        # backend does for the whole model.
        self.use_fast_paths = True
        if len(self.components) > 1:
            if self.mixture == "gate":
                self.mixture_gate = nn.Parameter(torch.empty(1))
            else:
                self.mixture_logits = nn.Parameter(torch.empty(len(self.components), heads))

    def train(self, mode: bool = True):
        """Switching mode (`model.train()` / `model.eval()`) empties the input-independent cache: weights written
        through `.data`, which PyTorch does not version, are seen from the next evaluation on."""
        self.input_independent_cache.clear()
        return super().train(mode)

    @property
    def uses_dot_product(self) -> bool:
        return "vanilla" in self.components

    @property
    def is_vanilla(self) -> bool:
        return self.components == ("vanilla",)

    def mixture_weights(self) -> torch.Tensor:
        """`(n, H or 1)` weights of the components, in the order of `self.components`."""
        if len(self.components) == 1:
            return torch.ones(1, 1, device=self._device())
        raw = self.mixture_gate if self.mixture == "gate" else self.mixture_logits
        return mixture_weights(self.mixture, raw)

    def _device(self):  # fixed random has a buffer and no parameter
        return next(iter(self.parameters()), next(iter(self.buffers()), torch.empty(0))).device

    def component_logits(self, name: str, x: "AttentionInputs", call: "AttentionCall") -> torch.Tensor:
        """Logits of component `name` at the slots: rows `call.q0 .. q0 + lq - 1`, columns `:lk` -> `(B or 1, H, lq,
        lk)`. Layers are called and parameters read as attributes: a PEFT/parametrize wrapper's weight is used."""
        q0, lq, lk = call.q0, call.lq, call.lk
        if name == "vanilla":
            return vanilla_logits(x.query, x.key, call.scaling)
        if name == "dense":
            return dense_logits(self.dense_w1(x.hidden_states), self.dense_w2, self.dense_b2, self.num_heads, lk)
        if name == "factorized_dense":
            a, b = self.factorized_dense_a(x.hidden_states), self.factorized_dense_b(x.hidden_states)
            return factorized_dense_logits(a, b, self.num_heads, lk)
        if name in ("random", "fixed_random"):
            return random_logits(getattr(self, name + "_r"), q0, lq, lk)
        return factorized_random_logits(self.factorized_random_r1, self.factorized_random_r2, q0, lq, lk)

    def check_length(self, q0, lq: int, lk: int) -> None:
        """`q0` an int, or a static cache's on-device offset (its keys were cut to the limit, see
        `update_self_attention_cache`, and `q0 + lq <= lk`)."""
        if not self.is_vanilla:
            check_length(lk if isinstance(q0, torch.Tensor) else max(q0 + lq, lk), self.length)

    def component_logits_at(self, name: str, x: "AttentionInputs", call: "AttentionCall", positions) -> torch.Tensor:
        """`component_logits` with per-example positions (see `token_positions`): query i of example b uses row
        `positions[0][b, i]`, key j column `positions[1][b, j]` -> (B, H, lq, lk)."""
        query_positions, key_positions = positions
        if name == "vanilla":
            return vanilla_logits(x.query, x.key, call.scaling)
        if name == "factorized_random":
            return factorized_random_logits_at(
                self.factorized_random_r1, self.factorized_random_r2, query_positions, key_positions
            )
        if name in ("random", "fixed_random"):  # R (H, L, L) read at the rows and columns of the positions
            return at_positions(getattr(self, name + "_r")[None], query_positions, key_positions)
        # dense, factorized dense: a row of length L per query token, columns by position
        table = self.component_logits(name, x, replace(call, q0=0, lk=self.length))
        return at_positions(table, None, key_positions)

    def mixed_logits(self, x: "AttentionInputs", call: "AttentionCall", positions=None) -> torch.Tensor:
        """Mixed logits `(B or 1, H, lq, lk)` (T5's `call.position_bias` added); `positions` `(query_positions (B, lq),
        key_positions (B, lk))` replaces the slots per example (see `component_logits_at`). Reads this module's
        parameters: call it only from `forward` (offload hooks load them there) or a route it runs."""
        logits = []
        for name in self.components:
            s = self.component_logits(name, x, call) if positions is None else self.component_logits_at(
                name, x, call, positions
            )
            if call.position_bias is not None and (call.bias_synthesized or name == "vanilla"):
                s = s + call.position_bias
            logits.append(s)
        if len(logits) == 1:
            return logits[0]
        return mix_logits(logits, self.mixture_weights())

    def logits(self, *args, **kwargs) -> torch.Tensor:
        """The 0.1.0 signature, `logits(hidden_states, query, key, scaling, q0, lq, lk, position_bias=None,
        bias_synthesized=True, positions=None)`: `mixed_logits` of those."""
        named = dict(zip(LOGITS_ARGUMENTS, args), **kwargs)
        x = AttentionInputs(named["hidden_states"], named["query"], named["key"], None)
        call = AttentionCall(
            named["scaling"], 0.0, named["q0"], named["lq"], named["lk"], position_bias=named.get("position_bias"),
            bias_synthesized=named.get("bias_synthesized", True),
        )
        return self.mixed_logits(x, call, named.get("positions"))

    def forward(self, *args, call: "AttentionCall | None" = None, **kwargs):
        """With `call` (an `AttentionCall`; `args` = hidden_states, query, key, value, attention_mask): the attention
        of one layer, `softmax(mixed logits + mask) V` -> `(output (B, lq, H, dh), probabilities (B, H, lq, lk) or
        None)`. Without: the mixed logits, `self.logits(*args, **kwargs)` (the 0.1.0 contract of calling this module,
        kept for tools such as `hf_synthesizer.conversion.attention_maps`; attention layers never call it, so forward
        hooks fire once per attention call).

        Every read of this module's parameters happens inside its `forward` (or in the `forward` of a child it
        calls), so that module hooks -- accelerate's offload, FSDP -- see them (docs/attention_core.md, "Offload").
        Positions other than the slots either reorder each example's slots (`call.positions.order`: whole
        sequences with a key mask) or read the reference math at the positions (packed sequences, decoding after a
        left-padded prefix)."""
        if call is None:
            return self.logits(*args, **kwargs)
        hidden_states, query, key, value, attention_mask = args
        positions = call.positions
        if positions is not None and positions.order is not None:
            order = positions.order
            query, key, value, attention_mask, hidden_states = (
                None if t is None else reorder_slots(t, order, dim) for t, dim in
                ((query, 2), (key, 2), (value, 2), (attention_mask, 3), (hidden_states, 1))
            )
            x = AttentionInputs(hidden_states, query, key, value)
            output, probs = route_attention(self, x, attention_mask, call, None)
            if probs is not None:
                probs = probs.expand(value.shape[0], -1, -1, -1)
                probs = reorder_slots(reorder_slots(probs, order, 2, undo=True), order, 3, undo=True)
            return reorder_slots(output, order, 1, undo=True), probs
        by_position = None
        if positions is not None:  # (one batch size for the gathers: positions from a mask or position_ids may have 1)
            batch = value.shape[0]
            by_position = (positions.query.expand(batch, -1), positions.key.expand(batch, -1))
        x = AttentionInputs(hidden_states, query, key, value)
        return route_attention(self, x, attention_mask, call, by_position)


def init_synthesizer_weights(module: nn.Module, std: float) -> None:
    """Initialise a `SynthesizerLogits` close to uniform attention, mixture weights equal. Called from the
    `_init_weights` of every PreTrainedModel class (its linear layers get the standard init there)."""
    if not isinstance(module, SynthesizerLogits):
        return
    if hasattr(module, "dense_w2"):
        init.normal_(module.dense_w2, mean=0.0, std=std)
        init.zeros_(module.dense_b2)
    for name in ("random_r", "fixed_random_r"):
        if hasattr(module, name):
            init.normal_(getattr(module, name), mean=0.0, std=std)
    if hasattr(module, "factorized_random_r1"):
        # The product R1 R2^T then has entries of standard deviation ~std, like R.
        factor_std = math.sqrt(std / math.sqrt(module.factorized_random_r1.shape[-1]))
        init.normal_(module.factorized_random_r1, mean=0.0, std=factor_std)
        init.normal_(module.factorized_random_r2, mean=0.0, std=factor_std)
    for name in ("mixture_logits", "mixture_gate"):
        if hasattr(module, name):
            init.zeros_(getattr(module, name))


# Keywords transformers may pass down to an attention function (its `TransformersKwargs` and what BERT/T5 modules
# forward) that synthesizer attention handles by doing nothing, each for a stated reason. Any other keyword raises:
# a renamed or new argument must fail loudly, never vanish into **kwargs (a 5.24 rename of the decoding cache did).
IGNORED_KEYWORDS = {
    "output_hidden_states": "hidden states are recorded by the model, not by attention",
    "output_router_logits": "no router in BERT/T5",
    "num_items_in_batch": "a loss-normalisation count, read by the loss",
    "shift_labels": "labels already shifted for the causal-LM loss, read by the loss",
    "use_cache": "the module updates the cache before calling attention",
    "return_dict": "an output-format flag of the model",
    "labels": "read by the model's loss; generate() hands every model keyword to the encoder stack (Seq2SeqTrainer)",
}
# Keywords that carry the decoding cache: the module must have consumed it (updated the cache and passed
# `query_offset`); reaching the attention function means a caller the module does not know passed it.
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value", "layer_past")
# Flash-attention packing keywords: a packed batch would index synthesizer rows by slot across sequence boundaries.
PACKED_KEYWORDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def check_attention_keywords(kwargs: dict) -> None:
    """Raise on a keyword that synthesizer attention would otherwise drop silently (see IGNORED_KEYWORDS)."""
    for name in kwargs:
        if name in IGNORED_KEYWORDS:
            continue
        if name in CACHE_KEYWORDS:
            raise TypeError(
                f"synthesizer attention received the decoding cache as `{name}=`: the attention module must update the "
                f"cache itself and pass `query_offset`. This transformers version calls its attention modules with a "
                f"convention hf_synthesizer does not know; please report it with your transformers version."
            )
        if name in PACKED_KEYWORDS:
            raise ValueError(
                f"synthesizer attention does not support packed sequences (`{name}=`): synthesizer rows are indexed by "
                f"position in the padded batch. Pad the batch instead (e.g. DataCollatorWithPadding)."
            )
        raise TypeError(
            f"synthesizer attention got an unexpected keyword argument `{name}`: it handles query_offset, "
            f"synthesizer_inputs, position_bias, position_ids, cache_position, is_causal and output_attentions, and ignores "
            f"{sorted(IGNORED_KEYWORDS)}. A transformers version newer than hf_synthesizer knows may pass it; please "
            f"report it with your transformers version."
        )


STOCK_MODULE_ERROR = (
    "{name} has no synthesizer parameters, so a synthesizer attn_implementation cannot run on it: it is a stock "
    "transformers model. Load the checkpoint with a synthesizer class, e.g. hf_synthesizer.BertSynthesizerModel / "
    "T5SynthesizerForConditionalGeneration.from_pretrained(path, attn_implementation=...), or through the Auto classes "
    "with config=hf_synthesizer.BertSynthesizerConfig / T5SynthesizerConfig.from_pretrained(path)."
)


def synthesizer_attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The function registered with `AttentionInterface` for every `synthesizer_*` attn_implementation: it hands the
    call to the module's own `synthesizer_attention` (see `SynthesizerAttentionMixin`).

    Several copies of this code can live in one process (the installed package, the remote code of any number of
    checkpoints, of the same or other versions), and the registry is global: the last copy imported registers the
    names. Handing over keeps every module on the code it was built with; modules are recognised by that method, not
    by one copy's class. Returns `(output (B, lq, H, dh), probabilities (B, H, lq, lk) or None)`.
    """
    own = getattr(module, "synthesizer_attention", None)
    if own is None:
        raise ValueError(STOCK_MODULE_ERROR.format(name=type(module).__name__))
    return own(query, key, value, attention_mask, **kwargs)


def reference_attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The `"eager"` backend of a synthesizer module: its synthesizer math by the plain reference (materialised
    logits and probabilities, returned as attention maps). Same contract as `synthesizer_attention_forward`."""
    own = getattr(module, "synthesizer_attention", None)
    if own is None:
        raise ValueError(STOCK_MODULE_ERROR.format(name=type(module).__name__))
    return own(query, key, value, attention_mask, reference=True, **kwargs)


# The name a synthesizer model's config carries while transformers builds its masks under "sdpa" (`synthesizer_masks`):
# registered by this package only, so transformers' own "sdpa" entry stays untouched.
FAST_ROUTES_NAME = "synthesizer_fast"


@contextlib.contextmanager
def synthesizer_masks(config):
    """While transformers builds the masks of a synthesizer model whose backend is "sdpa" (the default), the config
    names `FAST_ROUTES_NAME` instead, whose mask builder is `synthesizer_mask` (padding as a `(B, 1, 1, lk)` key mask
    the fast routes recognise by its shape; transformers' `sdpa_mask` would materialise `(B, 1, lq, lk)` and push
    every call to the general route). Attention modules running meanwhile treat that name as "sdpa"
    (`attention_function`). Restored on exit, exceptions included. A hook only synthesizer models use: importing the
    package changes nothing for other models (issue 25)."""
    switch = getattr(config, "_attn_implementation_internal", None) == "sdpa"
    if switch:
        config._attn_implementation_internal = FAST_ROUTES_NAME
    try:
        yield
    finally:
        if switch:
            config._attn_implementation_internal = "sdpa"


def attention_function(implementation: str):
    """The function a synthesizer attention module runs under `config._attn_implementation`: `"sdpa"` its
    synthesizer math by the fast routes, `"eager"` by the plain reference (on a vanilla layer: dot-product attention
    in sdpa / materialised), any other name what is registered under it in `AttentionInterface` (the
    `synthesizer_<variant>` names run the fast routes too)."""
    if implementation in ("sdpa", FAST_ROUTES_NAME):
        return synthesizer_attention_forward
    if implementation == "eager":
        return reference_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def synthesizer_of(module: nn.Module):
    """The module's synthesizer, recognised by its interface (`components`), not by a class: another copy's
    `SynthesizerLogits` or PEFT's `ModulesToSaveWrapper` (which forwards attribute reads and calls to the active
    adapter's copy) both qualify. Raises ValueError for a wrapper that hides the interface, naming the supported
    recipe."""
    synthesizer = getattr(module, "synthesizer", None)
    if synthesizer is None:
        raise ValueError(STOCK_MODULE_ERROR.format(name=type(module).__name__))
    if not hasattr(synthesizer, "components"):
        raise ValueError(
            f"The synthesizer of {type(module).__name__} is wrapped in a {type(synthesizer).__name__}, which hides its "
            f"parameters from synthesizer attention (PEFT's LoRA through `target_parameters` does this). Synthesizer "
            f"parameters are small: train them fully with PEFT's `modules_to_save=[\"synthesizer\"]` (LoRA on "
            f"`value`/`dense`, or `dense_w1` of dense synthesizers, works as usual), see docs/sharing.md."
        )
    return synthesizer


@dataclass(frozen=True)
class AttentionInputs:
    """The tensors of one attention call: hidden_states `(B, lq, d)` (what dense components synthesize from; None
    where no component reads them), query `(B, H, lq, dh)` / key `(B, H, lk, dh)` (None without a vanilla term),
    value `(B, H, lk, dh)`."""

    hidden_states: torch.Tensor | None
    query: torch.Tensor | None
    key: torch.Tensor | None
    value: torch.Tensor | None


# The arguments of the 0.1.0 contract of calling a `SynthesizerLogits` (and of its `logits`), in order.
LOGITS_ARGUMENTS = (
    "hidden_states", "query", "key", "scaling", "q0", "lq", "lk", "position_bias", "bias_synthesized", "positions"
)


@dataclass(frozen=True)
class AttentionCall:
    """Everything about one attention call besides its tensors, computed once by `synthesizer_attention`.

    scaling: factor of the dot-product term; dropout: attention dropout probability (applied in training only);
    q0: position of the first query in slots (int, or a static cache's on-device 0-dim tensor); lq/lk: query/key
    lengths; causal: add the causal mask (the mask given holds padding only, or nothing); position_bias: T5's relative
    position bias `(1 or B, H, lq, lk)` or None; bias_synthesized: add it to synthesized logits too; positions: see
    `Positions` (None: positions are slots); reference: run the plain reference math (the "eager" backend);
    output_attentions: return the probabilities."""

    scaling: float
    dropout: float
    q0: "int | torch.Tensor"
    lq: int
    lk: int
    causal: bool = False
    position_bias: torch.Tensor | None = None
    bias_synthesized: bool = True
    positions: Positions | None = None
    reference: bool = False
    output_attentions: bool = False


class SynthesizerAttentionMixin:
    """What makes an attention module a synthesizer one: it owns `self.synthesizer` (a `SynthesizerLogits`) and runs
    attention with this copy's code. Put it first in the bases."""

    def synthesizer_attention(
        self,
        query: torch.Tensor | None,
        key: torch.Tensor | None,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        synthesizer_inputs: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        query_offset: int | None = None,
        is_causal: bool | None = None,
        output_attentions: bool | None = False,
        position_ids: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        reference: bool = False,
        cache_layer=None,
        **kwargs,
    ):
        """Synthesizer attention of this module (Tay et al. 2021, section 3; the variant is `self.synthesizer`).

        query/key `(B, H, lq/lk, dh)` or None when no vanilla term reads them; value `(B, H, lk, dh)`;
        `attention_mask` boolean keep-mask or additive float mask broadcastable to `(B, H, lq, lk)`: a key mask
        `(B, 1, 1, lk)` (what `synthesizer_mask` gives) gets the causal mask added when the module is causal, a full
        mask is used as given;
        `synthesizer_inputs` `(B, lq, d)` the hidden states the queries come from (dense variants synthesize from
        them); `position_bias` T5's relative position bias `(1 or B, H, lq, lk)`; `query_offset` the position of the
        first query (the number of cached positions when decoding, an int or a StaticCache's on-device 0-dim tensor,
        see `update_self_attention_cache`; default `lk - lq`); `is_causal` overrides `self.is_causal`;
        `position_ids` `(B or 1, lq)` the positions of the queries (see `token_positions`); `cache_position` the
        slots of the queries in the cache, from a caller that does not pass `query_offset` (see `query_start`);
        `cache_layer` the self-attention cache layer this call's keys were just written to (None without a cache),
        where the keys' positions are recorded (`record_key_positions`);
        `reference` runs the plain reference (the `"eager"` backend: materialised probabilities, always returned)
        instead of the fast routes (`"sdpa"`: probabilities only with `output_attentions`).
        Returns `(output (B, lq, H, dh), probabilities (B, H, lq, lk) or None)`.
        Raises TypeError on a keyword it does not handle (see IGNORED_KEYWORDS), ValueError past synthesizer_length.
        """
        synthesizer = synthesizer_of(self)
        check_attention_keywords(kwargs)
        lq = synthesizer_inputs.shape[1] if synthesizer_inputs is not None else query.shape[2]
        lk = value.shape[2]
        q0 = query_start(query_offset, cache_position, lq, lk)  # query i sits at slot q0 + i
        if isinstance(q0, torch.Tensor) and cpu_tuned(value):
            # A static cache's offset (see update_self_attention_cache): CPU eager reads it (free there) and cuts the
            # empty slots, so that the CPU-tuned routes see an int offset and only the positions filled.
            q0 = int(q0)
            lk = q0 + lq
            key = None if key is None else key[:, :, :lk]
            value = value[:, :, :lk]
            attention_mask = None if attention_mask is None else attention_mask[..., :lk]
            position_bias = None if position_bias is None else position_bias[..., :lk]
        synthesizer.check_length(q0, lq, lk)
        is_causal = getattr(self, "is_causal", False) if is_causal is None else is_causal
        # The causal part is added here unless the mask is a full one (which holds it): `synthesizer_mask` hands over
        # padding as a `(B, 1, 1, lk)` key mask, so that the routes know the mask's structure from its shape. A single
        # query needs it too when the keys run past it (a static cache's empty slots, offset kept on the device).
        causal = (
            bool(is_causal) and (lq > 1 or isinstance(q0, torch.Tensor))
            and (attention_mask is None or attention_mask.shape[-2] == 1)
        )
        positions = None
        if not synthesizer.is_vanilla:
            written = getattr(cache_layer, "synthesizer_key_positions", None)
            positions = token_positions(position_ids, attention_mask, q0, lq, lk, cpu_tuned(value), written)
            record_key_positions(cache_layer, positions, lk, value.device)
            if position_ids is not None and positions is not None and cpu_tuned(value):
                check_length(int(positions.query.max()) + 1, synthesizer.length)  # (elsewhere: a device assert)
        call = AttentionCall(
            scaling, dropout, q0, lq, lk, causal, position_bias, getattr(self, "bias_synthesized", True), positions,
            reference, bool(output_attentions),
        )
        return synthesizer(synthesizer_inputs, query, key, value, attention_mask, call=call)


def query_start(query_offset, cache_position, lq: int, lk: int):
    """The slot of the first query: `query_offset` (what this package's modules pass: the cache's seen length), else
    the first of a caller's `cache_position` (a third-party caller of the registered function; kept on the device, as a
    static cache's offset), else `lk - lq` (the queries are the last keys). Both given: they must agree
    (`check_cache_position`), never one silently dropped."""
    if cache_position is None or cache_position.numel() == 0:
        return lk - lq if query_offset is None else query_offset
    if query_offset is not None:
        check_cache_position(cache_position, query_offset)
        return query_offset
    return cache_position.reshape(-1)[0]


def cpu_tuned(t: torch.Tensor) -> bool:
    """Whether the CPU-tuned routes (custom autograd Functions, `_scaled_dot_product_flash_attention_for_cpu`,
    query chunking, the input-independent cache) may run for `t`: a CPU tensor in eager mode. Anywhere else -- CUDA
    or any other device, `meta`, and under `torch.compile` / `torch.export` tracing -- the device-generic routes run,
    built from public ops only (matmul, softmax, `F.scaled_dot_product_attention`), one graph without host reads."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


@dataclass(frozen=True)
class Mask:
    """The one description of an attention call's mask (docs/attention_core.md, "Masks"), classified from its shape
    alone (no value read on the host: no device syncs, no graph breaks). Every form a route needs is derived here,
    once per call (cached).

    given: the mask handed over, boolean keep-mask or additive float mask, or None. kind: "none" (no mask); "key" (a
    mask with a query dim of 1, `(B or 1, 1, 1, lk)` -- what `synthesizer_mask` hands over for padding -- the same for
    every query row); "general" (anything else: a full `(B, 1, lq, lk)` mask, per-head masks, masks requiring grad).
    causal: add the causal mask where query `q0 + i` sees keys `0 .. q0 + i` (the module's `is_causal`; for a full
    mask from transformers it is already inside `given`, and the caller passes False). q0 (int or a static cache's
    on-device offset), lq, lk: the call's query offset and lengths. dtype: of the additive forms (fp64 for fp64
    values, else fp32)."""

    given: torch.Tensor | None
    causal: bool
    q0: "int | torch.Tensor"
    lq: int
    lk: int
    dtype: torch.dtype = torch.float32
    # Forms derived once per call. (A dict, not functools.cached_property, whose lock torch.compile cannot trace.)
    _derived: dict = field(default_factory=dict, compare=False, repr=False)

    def _once(self, name: str, compute):
        if name not in self._derived:
            self._derived[name] = compute()
        return self._derived[name]

    @property
    def kind(self) -> str:
        m = self.given
        if m is None:
            return "none"
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != 1 or m.requires_grad:
            return "general"
        return "key"

    @property
    def key_bias(self) -> torch.Tensor | None:
        """A key mask's additive fp32 form `(B or 1, lk)`: 0 kept, MASKED padded (a float mask's values clamped at
        MASKED); None for other kinds. The causal part is not in it (`causal`)."""
        return self._once("key_bias", self._key_bias)

    def _key_bias(self):
        if self.kind != "key":
            return None
        last = self.given[:, 0, 0, :]
        if last.dtype == torch.bool:
            return torch.zeros(last.shape, device=last.device).masked_fill_(~last, MASKED)
        return last.float().clamp_min(MASKED)

    def full(self) -> torch.Tensor | None:
        """The whole mask broadcastable to `(B, 1, lq, lk)`, causal part included: boolean stays boolean; a float mask
        gets `finfo.min` at the causally hidden entries. None when there is nothing to mask."""
        if not self.causal:
            return self.given
        device = self.given.device if self.given is not None else None
        keep = causal_mask(self.q0, self.lq, self.lk, device)
        if self.given is None:
            return keep
        if self.given.dtype == torch.bool:
            return self.given & keep
        return self.given.masked_fill(~keep, torch.finfo(self.given.dtype).min)

    @property
    def full_bias(self) -> torch.Tensor | None:
        """`full()` as an additive mask in `dtype`, MASKED (finite) where masked: a row with every key masked then
        attends uniformly, as in the reference (a boolean mask would give NaN in sdpa)."""
        full = self._once("full", self.full)
        return None if full is None else self._once("full_bias", lambda: general_bias(full, self.dtype))

    @property
    def keyless(self) -> bool:
        """Whether some query row sees no kept key (every key padded; left padding under a causal mask). A host read:
        only the CPU-tuned routes ask, and only when their route depends on it."""
        return self._once("keyless", self._keyless)

    def _keyless(self) -> bool:
        if self.kind == "none":
            return False
        if self.kind == "key":
            return bool(no_key_rows(self.key_bias, self.causal, self.q0, self.lq).any())
        return bool((self.full_bias.amax(-1) <= MASKED / 2).any())


def route_attention(synthesizer, x: "AttentionInputs", attention_mask, call: AttentionCall, by_position):
    """The route of one call, run inside `synthesizer.forward`: the fast routes (`fast_synthesizer_attention`, sdpa
    for vanilla and vanilla mixtures) where they apply, else the plain reference (materialised logits, optionally
    read at `by_position` = (query positions, key positions)). Returns `(output (B, lq, H, dh), probabilities or
    None)`."""
    value = x.value
    mask = Mask(attention_mask, call.causal, call.q0, call.lq, call.lk, bias_dtype(value))
    fast = synthesizer.use_fast_paths and not call.reference and not call.output_attentions and by_position is None
    if fast and not synthesizer.is_vanilla:
        output = fast_synthesizer_attention(synthesizer, x, mask, call)
        if output is not None:
            return output, None
    attention_mask = mask.full()
    if fast and synthesizer.is_vanilla:
        return sdpa_attention_forward(
            synthesizer, x.query, x.key, value, attention_mask, dropout=call.dropout, scaling=call.scaling,
            is_causal=False, position_bias=call.position_bias,
        )
    if fast and synthesizer.uses_dot_product:
        return _mixture_through_sdpa(synthesizer, x, attention_mask, call)
    # Already inside `synthesizer.forward` (hooks fired once for this call): the logits come from the method itself.
    logits = synthesizer.logits(
        x.hidden_states, x.query, x.key, call.scaling, call.q0, call.lq, call.lk, call.position_bias,
        call.bias_synthesized, by_position,
    )
    # Input-independent probabilities without a padding mask have a batch of 1: one map per example (the maps
    # returned are the ones the output is computed from, so their gradients exist) and one dropout draw each.
    probs = attention_probabilities(logits, attention_mask).expand(value.shape[0], -1, -1, -1)
    probs = F.dropout(probs, p=call.dropout, training=synthesizer.training)
    output = torch.matmul(probs.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), probs if call.output_attentions or call.reference else None


def bias_dtype(value: torch.Tensor) -> torch.dtype:
    """The dtype of additive masks: fp64 for fp64 values (exact comparisons in tests), else fp32."""
    return torch.float64 if value.dtype == torch.float64 else torch.float32


INPUT_INDEPENDENT = ("random", "fixed_random", "factorized_random")
FULL_RANK = ("random", "fixed_random")
# Factorized random takes the batch-shared route when batch x head dim reaches this, else flash on the R1/R2
# features: the shared route's l^2 elementwise work is paid once per batch, flash's matmuls per example and head
# dim (measured crossover, benchmarks/RESULTS.md: B=1 loses at dh 32 and 64, B=2 wins at dh 64 and loses at 32).
SHARED_ROUTE_MIN_BATCH_HEAD_DIM = 128


ROUTES = ("reference", "factorized_dense", "chunked_reference", "shared", "per_example", "features")


def choose_route(
    components, *, batch: int, tuned: bool, low_precision: bool, dropout: float, mask_kind: str, keyless: bool,
    position_bias: str | None, batch_times_head_dim: int,
) -> str:
    """The route of one attention call, from a description of it alone (pure: nothing runs, nothing is read).

    components: the layer's components (`SynthesizerLogits.components`, not vanilla alone); batch: examples;
    tuned: CPU eager (`cpu_tuned`); low_precision: fp16/bf16 values; dropout: attention dropout in effect (0 outside
    training); mask_kind: `split_mask`'s "none" / "key" / "general"; keyless: some row sees no kept key (CPU eager
    only); position_bias: None, "shared" (T5's `(1, H, lq, lk)`) or "per_example" (a batched bias);
    batch_times_head_dim: `B * dh` (factorized random's crossover, measured in benchmarks/RESULTS.md).

    Returns one of ROUTES: "reference" (the plain math, no fast route applies), "factorized_dense"
    (route_factorized_dense), "chunked_reference" (the reference in query chunks), "shared" (input-independent
    logits once per batch), "per_example" (query-chunked attention with a full-rank R, or arbitrary masks, or rows
    without keys), "features" (sdpa's flash kernel on concatenated features). Tested as a truth table
    (tests/test_routes.py)."""
    components = tuple(components)
    if batch == 0:
        return "reference"
    if components == ("factorized_dense",) and tuned and position_bias is None:
        return "factorized_dense"
    if "factorized_dense" in components:
        return "chunked_reference"
    full_rank = any(c in FULL_RANK for c in components)
    input_independent = all(c in INPUT_INDEPENDENT for c in components)
    if low_precision and full_rank and (dropout > 0 or not input_independent):
        return "reference"  # the per-example route in bf16/fp16 is slower than the reference and less robust
    if position_bias is not None and not (
        input_independent and dropout == 0.0 and mask_kind != "general" and position_bias == "shared" and not keyless
    ):
        return "reference"
    features_faster = (  # (CPU-tuned only: a batch-size test would specialise compiled/exported graphs on it)
        tuned and components == ("factorized_random",) and position_bias is None
        and batch_times_head_dim < SHARED_ROUTE_MIN_BATCH_HEAD_DIM
    )
    if input_independent and dropout == 0.0 and mask_kind != "general" and not features_faster and not keyless:
        return "shared"
    has_features = any(c in ("vanilla", "dense", "factorized_random") for c in components)
    if full_rank or mask_kind == "general" and not has_features or keyless:
        return "per_example"
    return "features"


def fast_synthesizer_attention(synthesizer, x: "AttentionInputs", mask: Mask, call: AttentionCall):
    """The fastest measured route for a synthesizer layer (`choose_route`, benchmarks/RESULTS.md), run: `(B, lq, H,
    dh)`, or None when none applies (the reference route runs). One runner per route, each over its own file:

    - "factorized_dense": route_factorized_dense; "chunked_reference" (its mixtures): route_chunked_reference;
    - "shared": only input-independent components (and T5's shared position bias), no attention dropout, mask =
      padding (+ causal): logits once per batch, one matmul for all examples (route_shared); softmax(R) from the
      layer's cache when R needs no gradient (fixed random always; random under no_grad);
    - "per_example": a full-rank R together with per-example logits, dropout or an arbitrary mask (route_per_example);
    - "features": dense, factorized random with dropout or a small batch x head dim, vanilla mixtures without R:
      sdpa's flash kernel on concatenated, zero-padded features (route_feature)."""
    tuned = cpu_tuned(x.value)  # CPU-only kernels and Functions run only where this holds
    unread = call.position_bias is not None and not call.bias_synthesized and not synthesizer.uses_dot_product
    call = replace(
        call, position_bias=None if unread else call.position_bias,
        dropout=call.dropout if synthesizer.training else 0.0,
    )
    route = route_of(synthesizer, x.value, mask, call, tuned)
    return None if route == "reference" else ROUTE_RUNNERS[route](synthesizer, x, mask, call, tuned)


def route_of(synthesizer, value, mask: Mask, call: AttentionCall, tuned: bool) -> str:
    """`choose_route` for this call. CPU eager: a batch with a row that sees no kept key (left padding under a causal
    mask, an example all padding) takes the exact per-example route instead of the shared or feature one, which give
    such a row its uniform forward but not the reference's backward (its saved log-sum-exp rounds to MASKED). That is
    a host read (`Mask.keyless`): done only when the route depends on it, and not on the device-generic routes."""
    bias = call.position_bias
    description = dict(
        batch=value.shape[0], tuned=tuned, low_precision=value.dtype in (torch.float16, torch.bfloat16),
        dropout=call.dropout, mask_kind=mask.kind,
        position_bias=None if bias is None else ("shared" if bias.shape[0] == 1 else "per_example"),
        batch_times_head_dim=value.shape[0] * value.shape[-1],
    )
    route = choose_route(synthesizer.components, keyless=False, **description)
    if tuned and route in ("shared", "features") and mask.keyless:
        return choose_route(synthesizer.components, keyless=True, **description)
    return route


def _run_factorized_dense(synthesizer, x, mask: Mask, call: AttentionCall, tuned: bool):
    """Pure factorized dense on its own Function (route_factorized_dense): the factors from the layer's two linear
    maps (called, so wrappers and hooks apply), padding and causality as one additive bias."""
    heads = synthesizer.num_heads
    a = synthesizer.factorized_dense_a(x.hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, lq, a)
    b = synthesizer.factorized_dense_b(x.hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, lq, b)
    return factorized_dense_attention(a, b, x.value, mask.full_bias, call.dropout).to(x.value.dtype)


def _run_chunked_reference(synthesizer, x, mask: Mask, call: AttentionCall, tuned: bool):
    """Factorized dense mixtures: the reference math in query chunks (route_chunked_reference; one piece off CPU)."""
    return chunked_reference_attention(synthesizer, x, mask.full(), call, synthesizer.training, chunked=tuned)


def _run_shared(synthesizer, x, mask: Mask, call: AttentionCall, tuned: bool):
    """Input-independent logits once per batch (route_shared): softmax(R) from the layer's cache where it applies,
    else mixed logits (+ T5's position bias) `(H, lq, lk)`, or R / R1, R2 read block by block by the Function."""
    components, value, key_bias, causal = synthesizer.components, x.value, mask.key_bias, mask.causal
    q0, lq, lk = call.q0, call.lq, call.lk
    if len(components) == 1 and components[0] in FULL_RANK and call.position_bias is None:
        r = getattr(synthesizer, components[0] + "_r")
        if _use_cache(synthesizer, [r], q0):
            probs = synthesizer.input_independent_cache.get(
                [r], (q0, lq, lk, causal), lambda: shared_probabilities(r, q0, lq, lk, causal)
            )
            if not tuned:
                return generic_shared_attention(value, key_bias, causal, q0, probs=probs).to(value.dtype)
            return shared_logits_attention(value, key_bias, causal, q0, lq, probs=probs).to(value.dtype)
    if not tuned or call.position_bias is not None or len(components) > 1:
        logits = synthesizer.mixed_logits(AttentionInputs(None, None, None, value), call)
        if not tuned:
            return generic_shared_attention(value, key_bias, causal, q0, logits=logits[0]).to(value.dtype)
        out = shared_logits_attention(value, key_bias, causal, q0, lq, r=logits[0], r_offset=0)
    elif components == ("factorized_random",):
        r1, r2 = synthesizer.factorized_random_r1, synthesizer.factorized_random_r2
        out = shared_logits_attention(value, key_bias, causal, q0, lq, r1=r1, r2=r2)
    else:
        out = shared_logits_attention(value, key_bias, causal, q0, lq, r=getattr(synthesizer, components[0] + "_r"))
    return out.to(value.dtype)


def dot_product_features(synthesizer, x, call: AttentionCall):
    """Per-example logits as a dot product of features, `qf kf^T`, mixture weights folded into `qf`: vanilla
    `(alpha * scaling * q) . k`, dense `(alpha * h, alpha) . (W2_j, b2_j)`, factorized random `(alpha * R1_i) . R2_j`;
    the full-rank terms (random, fixed random) returned apart with their weights. Returns `(qf (B, H, lq, f) in
    query-major memory or None, kf (B, H, lk, f) or None, shared [(H, L, L)], alphas [(H or 1,)])`."""
    weights = synthesizer.mixture_weights()  # (n, H or 1)
    heads, value, lq, lk, q0 = synthesizer.num_heads, x.value, call.lq, call.lk, call.q0
    batch, dtype = value.shape[0], value.dtype
    single = len(synthesizer.components) == 1  # weight exactly 1: no weighted copy of the features
    qf, kf, shared, alphas = [], [], [], []
    for n, name in enumerate(synthesizer.components):
        alpha = weights[n].view(1, -1, 1, 1)
        if name == "vanilla":
            qf.append((x.query * (alpha * call.scaling)).to(dtype))
            kf.append(x.key.to(dtype))
        elif name == "dense":
            h = relu(synthesizer.dense_w1(x.hidden_states)).view(batch, lq, heads, -1).transpose(1, 2)
            w2 = take(synthesizer.dense_w2, -1, 0, lk).transpose(-1, -2)[None].expand(1, heads, -1, -1)
            b2 = take(synthesizer.dense_b2, -1, 0, lk)[:, :, None][None].expand(1, heads, -1, -1)
            qf += [(h if single else h * alpha).to(dtype), alpha.to(dtype).expand(batch, heads, lq, 1)]
            kf += [w2.to(dtype), b2.to(dtype)]
        elif name == "factorized_random":
            r1 = take(synthesizer.factorized_random_r1, 1, q0, lq)[None]
            qf.append((r1 if single else r1 * alpha).to(dtype).expand(batch, heads, -1, -1))
            kf.append(take(synthesizer.factorized_random_r2, 1, 0, lk)[None].to(dtype))
        else:
            shared.append(getattr(synthesizer, name + "_r"))
            alphas.append(weights[n])
    # query-major memory (B, lq, H, f): flash writes its output in the query's layout (see feature_attention)
    qf = torch.cat([q.expand(batch, -1, -1, -1).transpose(1, 2) for q in qf], dim=-1).transpose(1, 2) if qf else None
    # Key features the same for every example (dense, factorized random) are joined once and expanded, not copied.
    one = all(k.shape[0] == 1 for k in kf)
    kf = torch.cat([k if one else k.expand(batch, -1, -1, -1) for k in kf], -1) if kf else None
    return qf, None if kf is None else kf.expand(batch, -1, -1, -1), shared, alphas


def _run_per_example(synthesizer, x, mask: Mask, call: AttentionCall, tuned: bool):
    """Query-chunked attention with a full-rank R, arbitrary masks or rows without keys (route_per_example)."""
    qf, kf, shared, alphas = dot_product_features(synthesizer, x, call)
    value, q0, lq, lk, dropout = x.value, call.q0, call.lq, call.lk, call.dropout
    causal = mask.causal
    if mask.kind == "general" or mask.kind == "key" and causal:
        # one (B, 1, lq, lk) bias: the two added would leave a row without kept keys attending to padded keys only
        bias, causal = mask.full_bias, False
    else:
        bias = None if mask.key_bias is None else mask.key_bias[:, None, None, :].to(mask.dtype)
    alphas = torch.stack(alphas) if alphas else None
    terms = Terms(alphas, bias, tuple(shared), q0, causal)
    if not tuned:
        return generic_per_example_attention(qf, kf, value, terms, lq, dropout).to(value.dtype)
    cached = None
    if shared and qf is not None and dropout == 0.0:
        mixing = [getattr(synthesizer, n) for n in ("mixture_gate", "mixture_logits") if hasattr(synthesizer, n)]
        if _use_cache(synthesizer, shared + mixing, q0):
            cached = synthesizer.input_independent_cache.get(
                shared + mixing, (q0, lq, lk, causal), lambda: shared_logits(alphas, shared, q0, lq, lk, causal)
            )
    return per_example_attention(qf, kf, value, terms, lq, dropout, cached).to(value.dtype)


def _run_features(synthesizer, x, mask: Mask, call: AttentionCall, tuned: bool):
    """sdpa's flash kernel on concatenated features (route_feature), the whole mask as one additive float mask."""
    qf, kf, _, _ = dot_product_features(synthesizer, x, call)
    bias = mask.full_bias
    out = feature_attention(qf, kf, x.value, None if bias is None else bias.to(x.value.dtype), call.dropout)
    if tuned or mask.given is None or bias.dim() != 4:  # (causality alone leaves key 0 to every row)
        return out
    return uniform_rows(out, x.value, keyless_rows(bias, call.lq), qf, kf)  # rows without a kept key, as the reference


ROUTE_RUNNERS = {
    "factorized_dense": _run_factorized_dense,
    "chunked_reference": _run_chunked_reference,
    "shared": _run_shared,
    "per_example": _run_per_example,
    "features": _run_features,
}


def _use_cache(synthesizer, sources, q0) -> bool:
    """The layer's input-independent cache applies: enabled, no source needs a gradient, not compiling, an int offset
    (a static cache's on-device offset would have to be read to compare keys)."""
    return (
        synthesizer.cache_input_independent
        and not isinstance(q0, torch.Tensor)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in sources))
        and not torch.compiler.is_compiling()
    )


def _mixture_through_sdpa(synthesizer, x, attention_mask, call: AttentionCall):
    """A mixture whose vanilla term runs inside `scaled_dot_product_attention`: the other components (already
    weighted) and the mask become sdpa's additive bias, and the vanilla weight scales the queries."""
    weights, position_bias = synthesizer.mixture_weights(), call.position_bias
    bias = None
    for n, name in enumerate(synthesizer.components):
        if name == "vanilla":
            vanilla_weight = weights[n].view(1, -1, 1, 1)
            if position_bias is not None:
                term = vanilla_weight * position_bias
                bias = term if bias is None else bias + term
            continue
        s = synthesizer.component_logits(name, x, call)
        if position_bias is not None and call.bias_synthesized:
            s = s + position_bias
        term = weights[n].view(1, -1, 1, 1) * s
        bias = term if bias is None else bias + term
    mask = additive_mask(attention_mask, bias.dtype)
    if mask is not None:
        bias = bias + mask
    query = x.query
    bias = bias.to(query.dtype).expand(query.shape[0], -1, -1, -1)
    output = F.scaled_dot_product_attention(
        query * (vanilla_weight * call.scaling).to(query.dtype), x.key, x.value, attn_mask=bias,
        dropout_p=call.dropout if synthesizer.training else 0.0, scale=1.0,
    )
    return output.transpose(1, 2).contiguous(), None


def synthesizer_mask(*args, **kwargs):
    """The mask transformers hands to synthesizer attention (registered with `AttentionMaskInterface`).

    For the masks BERT and T5 build -- padding, alone or with causality (`bidirectional_mask_function` /
    `causal_mask_function`, no local window) -- the boolean key-padding mask `(B, 1, 1, kv_length)`, or None when
    nothing is padded (checked on the host outside tracing, as transformers does for sdpa): the attention module adds
    the causal part itself from its `is_causal`, so the routes know the structure of the mask from its shape, with no
    value read on the host (`split_mask`). Any other mask function (sliding windows, `or_mask_function`/
    `and_mask_function`, packed sequences): sdpa's full boolean mask `(B, 1, q_length, kv_length)`, causal part
    included, always materialised.
    """
    mask_function = kwargs.get("mask_function", causal_mask_function)
    if not args and kwargs.get("local_size") is None and mask_function in (causal_mask_function, bidirectional_mask_function):
        kv_length, kv_offset = kwargs["kv_length"], kwargs.get("kv_offset", 0)
        padding = prepare_padding_mask(kwargs.get("attention_mask"), kv_length, kv_offset)
        if padding is None:
            return None
        padding = padding[:, kv_offset : kv_offset + kv_length].bool()
        if not is_tracing(padding) and padding.device.type != "meta" and bool(padding.all()):
            return None
        return padding[:, None, None, :]
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_attn_implementation(name: str) -> None:
    """Make `name` a valid `attn_implementation` whose masks reach the synthesizer attention function."""
    AttentionInterface.register(name, synthesizer_attention_forward)
    AttentionMaskInterface.register(name, synthesizer_mask)


# Only names synthesizer models use are registered: transformers' own entries ("sdpa", "eager", ...) stay untouched
# (a synthesizer model under "sdpa" builds its masks under FAST_ROUTES_NAME, see `synthesizer_masks`).
for _variant in NAMED_VARIANTS:
    register_attn_implementation(attn_implementation_name(_variant))
register_attn_implementation(FAST_ROUTES_NAME)
