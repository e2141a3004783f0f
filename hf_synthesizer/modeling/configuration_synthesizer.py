"""Configurations of the synthesizer models: the stock BERT/T5 configs plus the `synthesizer_*` fields.

What the user chose with `attn_implementation="synthesizer_<variant>"` is stored in `synthesizer_variant`,
because transformers never writes `attn_implementation` to config.json: a saved checkpoint reloads as the
same variant without the user repeating the choice.

This file ships with saved checkpoints (trust_remote_code): it imports only transformers and siblings.
"""

import difflib
import math
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, T5Config

# Components a variant is built from, in the canonical order of names: synthesizers first, vanilla last, as
# the paper names its mixtures ("random+vanilla"). Any order is accepted on input.
COMPONENTS = ("dense", "factorized_dense", "random", "fixed_random", "factorized_random", "vanilla")
# Variants with their own registered `attn_implementation` name: every single component and the
# mixtures the paper names. Any other combination is set through `synthesizer_variant`.
NAMED_VARIANTS = (
    "dense",
    "factorized_dense",
    "random",
    "fixed_random",
    "factorized_random",
    "random+vanilla",
    "dense+vanilla",
    "dense+random",
)
ATTN_PREFIX = "synthesizer_"
MIXTURES = ("softmax", "gate")
VANILLA_BACKENDS = ("sdpa", "eager")


def parse_variant(variant: str) -> tuple[str, ...]:
    """`"vanilla+random"` -> `("random", "vanilla")`: the components of a variant, in canonical order."""
    if not isinstance(variant, str) or not variant:
        raise ValueError(f"synthesizer_variant must be a non-empty string such as 'random', got {variant!r}.")
    parts = variant.split("+")
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown:
        raise ValueError(
            f"Unknown synthesizer component(s) {unknown} in variant {variant!r}{did_you_mean(unknown, COMPONENTS)}. "
            f"Components: {', '.join(COMPONENTS)}; "
            f"join several with '+' for a mixture (e.g. 'random+vanilla'). Registered attn_implementation names: "
            f"{', '.join(attn_implementation_name(v) for v in NAMED_VARIANTS)}."
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"Variant {variant!r} names a component twice.")
    return tuple(c for c in COMPONENTS if c in parts)


def did_you_mean(words: list[str], valid) -> str:
    """`" (did you mean 'random'?)"` for misspelled `words` close to a `valid` name, else `""`."""
    guesses = [g for w in words for g in difflib.get_close_matches(w, list(valid), n=1, cutoff=0.6)]
    return f" (did you mean {' or '.join(repr(g) for g in guesses)}?)" if guesses else ""


def canonical_variant(variant: str) -> str:
    return "+".join(parse_variant(variant))


def attn_implementation_name(variant: str) -> str:
    """The `attn_implementation` that selects `variant` ("random+vanilla" -> "synthesizer_random+vanilla")."""
    return ATTN_PREFIX + canonical_variant(variant)


def default_factorized_dense_split(length: int) -> list[int]:
    """The most balanced `[a, b]` with `a * b == length` and `a <= b`."""
    a = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    return [a, length // a]


def check_length_limit(length: int, max_positions: int | None) -> None:
    """Raise a `ValueError` when `length` (a synthesizer length `L`) exceeds `max_positions`, BERT's
    `max_position_embeddings` (None: no bound, as for T5). One message for the config, `hf-synthesizer convert`,
    loading and `resize_synthesizer_length`: parameters sized past the position embeddings could never be used."""
    if max_positions is not None and length > max_positions:
        raise ValueError(
            f"synthesizer_length={length} exceeds max_position_embeddings={max_positions}: inputs longer than "
            f"{max_positions} tokens cannot run through this model's absolute position embeddings, so synthesizer "
            f"parameters sized for {length} positions could never be used past {max_positions}. Use "
            f"synthesizer_length <= {max_positions} (the default is max_position_embeddings)."
        )


@dataclass(repr=False)
class SynthesizerFields:
    r"""
    synthesizer_variant (`str`, defaults to `"vanilla"`):
        Components of the self-attention logits, joined by `+` (`dense`, `factorized_dense`, `random`,
        `fixed_random`, `factorized_random`, `vanilla`). `"vanilla"` alone is stock dot-product attention;
        several components form a mixture mixed before the softmax. Set by
        `attn_implementation="synthesizer_<variant>"`.
    synthesizer_length (`int`, *optional*):
        Maximum sequence length `L` the synthesizer parameters are sized by (default: `max_position_embeddings`
        for BERT, 512 for T5). Longer inputs raise a `ValueError`.
    synthesizer_factorized_rank (`int`, defaults to 8):
        Rank `k` of factorized random: `R = R1 R2^T` with `R1, R2` of shape `L x k`.
    synthesizer_factorized_dense_split (`list[int]`, *optional*):
        `[a, b]` with `a * b == synthesizer_length` for factorized dense (default: the most balanced split).
    synthesizer_dense_shared_w2 (`bool`, defaults to `False`):
        Share the dense synthesizer's output layer `W2` (d_h -> L) across heads, as the reference code does.
        The paper's default is one `W2` per head.
    synthesizer_layers (`list[int]`, *optional*):
        Indices of the layers whose self-attention is synthesized; the others stay vanilla (default: all).
    synthesizer_mixture (`str`, defaults to `"softmax"`):
        How a mixture weighs its components: `"softmax"` (paper: learned per head and layer, softmax over
        logits initialised equal) or `"gate"` (Mesh-TF: one sigmoid gate per layer over two components,
        `sigmoid(a) * first + (1 - sigmoid(a)) * second`, `a = 0` at init; vanilla is always second, so
        `"random+vanilla"` gives Mesh-TF's `(1 - sigmoid(a)) QK^T + sigmoid(a) R`).
    synthesizer_vanilla_backend (`str`, defaults to `"sdpa"`):
        The attention backend a model of this config runs with when no `attn_implementation` is given: `"sdpa"` (the
        fast routes; a vanilla term or layer runs in `scaled_dot_product_attention`) or `"eager"` (the plain
        reference: materialised probabilities, attention maps). `attn_implementation="sdpa"` / `"eager"` (at
        `from_pretrained` or `set_attn_implementation`) choose the backend of that model only, as transformers never
        saves `attn_implementation`: both are backends of the same synthesizer math, never dot-product attention in
        its place, and a checkpoint saved after a debugging `eager` load keeps this field's backend.
    """

    synthesizer_variant: str = "vanilla"
    synthesizer_length: int | None = None
    synthesizer_factorized_rank: int = 8
    synthesizer_factorized_dense_split: list[int] | None = None
    synthesizer_dense_shared_w2: bool = False
    synthesizer_layers: list[int] | None = None
    synthesizer_mixture: str = "softmax"
    synthesizer_vanilla_backend: str = "sdpa"


class SynthesizerConfigMixin:
    """Validation and attn_implementation handling shared by the BERT and T5 synthesizer configs."""

    stock_model_type = None  # the transformers model_type whose checkpoints convert into this config

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """Loading a stock checkpoint is the intended conversion, not a model-type mismatch worth a warning; a
        checkpoint of the other family (T5 into BERT, BERT into T5) is an error: none of its weights would load."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == cls.stock_model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        right = next((c for c in SYNTHESIZER_CONFIGS if model_type in (c.stock_model_type, c.model_type)), None)
        if right is not None and right.model_type != cls.model_type:
            raise CheckpointFamilyError(args[0] if args else kwargs.get("pretrained_model_name_or_path"), model_type,
                                        cls, right)
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(path, synthesizer_...=...)` sets the overrides after construction: check them too."""
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config._finish_synthesizer_fields()
        return result

    def _synthesizer_num_layers(self) -> int:
        raise NotImplementedError

    def _default_synthesizer_length(self) -> int:
        raise NotImplementedError

    def max_synthesizer_length(self) -> int | None:
        """The largest `synthesizer_length` this config accepts (None: no bound)."""
        raise NotImplementedError

    def _finish_synthesizer_fields(self):
        if self.synthesizer_length is None:
            self.synthesizer_length = self._default_synthesizer_length()
        self.check_synthesizer_fields()
        self.synthesizer_variant = canonical_variant(self.synthesizer_variant)

    @property
    def synthesizer_components(self) -> tuple[str, ...]:
        return parse_variant(self.synthesizer_variant)

    @property
    def factorized_dense_split(self) -> list[int]:
        """`[a, b]` of factorized dense: the configured split or the most balanced one."""
        return self.synthesizer_factorized_dense_split or default_factorized_dense_split(self.synthesizer_length)

    def components_for_layer(self, layer_idx: int) -> tuple[str, ...]:
        if self.synthesizer_layers is not None and layer_idx not in self.synthesizer_layers:
            return ("vanilla",)
        return self.synthesizer_components

    def check_synthesizer_fields(self):
        """Raise a `ValueError` naming the field and the fix for any inconsistent synthesizer field."""
        components = parse_variant(self.synthesizer_variant)
        length = self.synthesizer_length
        if not isinstance(length, int) or length <= 0:
            raise ValueError(f"synthesizer_length must be a positive integer, got {length!r}.")
        check_length_limit(length, self.max_synthesizer_length())
        if not isinstance(self.synthesizer_factorized_rank, int) or self.synthesizer_factorized_rank <= 0:
            raise ValueError(
                f"synthesizer_factorized_rank must be a positive integer (the paper uses 8), "
                f"got {self.synthesizer_factorized_rank!r}."
            )
        split = self.synthesizer_factorized_dense_split
        if split is not None and (len(split) != 2 or min(split) <= 0 or split[0] * split[1] != length):
            raise ValueError(
                f"synthesizer_factorized_dense_split={split} must be two positive integers [a, b] with "
                f"a * b == synthesizer_length ({length}); e.g. {default_factorized_dense_split(length)}, "
                f"or None for the most balanced split."
            )
        if self.synthesizer_mixture not in MIXTURES:
            raise ValueError(f"synthesizer_mixture must be one of {MIXTURES}, got {self.synthesizer_mixture!r}.")
        if self.synthesizer_mixture == "gate" and len(components) > 2:
            raise ValueError(
                f"synthesizer_mixture='gate' mixes exactly two components with one sigmoid gate, but "
                f"synthesizer_variant={self.synthesizer_variant!r} has {len(components)}. "
                f"Use synthesizer_mixture='softmax' or a two-component variant such as 'random+vanilla'."
            )
        if self.synthesizer_vanilla_backend not in VANILLA_BACKENDS:
            raise ValueError(
                f"synthesizer_vanilla_backend must be one of {VANILLA_BACKENDS}, "
                f"got {self.synthesizer_vanilla_backend!r}."
            )
        if self.synthesizer_layers is not None:
            n = self._synthesizer_num_layers()
            bad = [i for i in self.synthesizer_layers if not isinstance(i, int) or not 0 <= i < n]
            if bad:
                raise ValueError(
                    f"synthesizer_layers has indices {bad} outside the model's {n} layers (valid: 0..{n - 1})."
                )

    def validate_synthesizer(self):
        """Run by transformers' `config.validate()` (for example at save time)."""
        self.check_synthesizer_fields()

    @property
    def synthesizer_attn_implementation(self) -> str:
        """The `attn_implementation` that converts a stock checkpoint to the configured variant
        (`"synthesizer_random"`), or the backend of a vanilla config (`"sdpa"`/`"eager"`)."""
        if self.synthesizer_variant == "vanilla":
            return self.synthesizer_vanilla_backend
        return attn_implementation_name(self.synthesizer_variant)

    def resolve_attn_implementation(self, requested: str | None) -> str:
        """The backend (`"sdpa"` or `"eager"`) a model of this config runs with, given the `attn_implementation` a
        user asked for. The variant lives in `synthesizer_variant`; on a synthesizer model the stock names are
        backends of its synthesizer math (`"eager"` the plain reference, `"sdpa"` the fast routes).

        - nothing asked: the saved backend, `synthesizer_vanilla_backend` (a saved model reloads as itself);
        - `"sdpa"`/`"eager"`: that backend for this model, not saved (as transformers never saves
          `attn_implementation`); the variant is kept;
        - `"synthesizer_<variant>"` on a vanilla config (a stock checkpoint): convert to that variant, saved
          backend; on a config of that variant already: nothing changes.
        Anything that would silently turn a saved synthesizer into another variant raises `ValueError`.
        """
        if requested is None:
            return self.synthesizer_vanilla_backend
        if requested in VANILLA_BACKENDS:
            return requested
        if requested.startswith(ATTN_PREFIX):
            variant = canonical_variant(requested[len(ATTN_PREFIX) :])
            if self.synthesizer_variant not in ("vanilla", variant):
                raise ValueError(
                    f"This config holds a synthesizer_{self.synthesizer_variant} model; attn_implementation="
                    f"{requested!r} would silently replace its synthesizer weights. Load it without "
                    f"attn_implementation (or with 'sdpa'/'eager' to choose the backend), or convert it to another variant "
                    f"with `hf-synthesizer convert SRC DST --attn_implementation {requested}` (or convert the stock "
                    f"checkpoint it came from)."
                )
            self.synthesizer_variant = variant
            self.check_synthesizer_fields()
            return self.synthesizer_vanilla_backend
        valid = [*VANILLA_BACKENDS, *(attn_implementation_name(v) for v in NAMED_VARIANTS)]
        raise ValueError(
            f'Specified `attn_implementation="{requested}"` is not supported by synthesizer models'
            f"{did_you_mean([requested], valid)}. Use 'sdpa' (fast routes) or 'eager' (plain reference) as the "
            f"backend, or convert a stock checkpoint with one of "
            f"{', '.join(attn_implementation_name(v) for v in NAMED_VARIANTS)} "
            f"(any other combination: synthesizer_<component>+<component>)."
        )


@strict
class BertSynthesizerConfig(SynthesizerConfigMixin, BertConfig, SynthesizerFields):
    __doc__ = "BERT with synthesizer self-attention. Fields of `BertConfig`, plus:\n" + SynthesizerFields.__doc__
    model_type = "bert_synthesizer"
    stock_model_type = "bert"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._finish_synthesizer_fields()

    def _synthesizer_num_layers(self) -> int:
        return self.num_hidden_layers

    def _default_synthesizer_length(self) -> int:
        return self.max_position_embeddings

    def max_synthesizer_length(self) -> int:
        """`max_position_embeddings`: BERT's absolute position embeddings end there, so longer inputs never run."""
        return self.max_position_embeddings


T5_STACKS = ("encoder", "decoder")
T5_DEFAULT_SYNTHESIZER_LENGTH = 512


@dataclass(repr=False)
class T5SynthesizerFields:
    r"""
    synthesizer_stacks (`list[str]`, *optional*):
        Whose self-attention is synthesized: any of `"encoder"` and `"decoder"` (causal); default both, as in the
        paper. The other stack's self-attention and the decoder's cross-attention stay T5 dot-product attention.
    synthesizer_position_bias (`bool`, defaults to `True`):
        Add T5's relative position bias to the synthesized logits too, as the reference code does (the vanilla
        term always gets it). With `False` only the dot-product term sees the bias.

    For T5, `synthesizer_length` defaults to 512 and has no upper bound (T5 has no absolute positions: its relative
    position bias puts all long distances into its last bucket, so inputs of any length run), and
    `synthesizer_layers` indexes the blocks of every stack in `synthesizer_stacks` alike: `[0, 2]` synthesizes block
    0 and 2 of the encoder and of the decoder, so each index must exist in each of those stacks (encoder:
    `num_layers`, decoder: `num_decoder_layers`). Restrict `synthesizer_stacks` to address one stack only.
    """

    synthesizer_stacks: list[str] | None = None
    synthesizer_position_bias: bool = True


@strict
class T5SynthesizerConfig(SynthesizerConfigMixin, T5Config, T5SynthesizerFields, SynthesizerFields):
    __doc__ = (
        "T5 with synthesizer self-attention. Fields of `T5Config`, plus:\n"
        + SynthesizerFields.__doc__
        + T5SynthesizerFields.__doc__
    )
    model_type = "t5_synthesizer"
    stock_model_type = "t5"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.synthesizer_stacks is None:
            self.synthesizer_stacks = list(T5_STACKS)
        self._finish_synthesizer_fields()
        self.synthesizer_stacks = [s for s in T5_STACKS if s in self.synthesizer_stacks]

    def _default_synthesizer_length(self) -> int:
        return T5_DEFAULT_SYNTHESIZER_LENGTH

    def max_synthesizer_length(self) -> None:
        """None: T5's relative position bias has no maximum length (distances past its buckets share the last
        bucket), so any `synthesizer_length` can be used; its cost is parameters (random: `L^2` per head and layer)."""
        return None

    def _stack_num_layers(self, stack: str) -> int:
        if stack == "encoder":
            return self.num_layers
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    def _synthesizer_num_layers(self) -> int:
        """`synthesizer_layers` indexes every synthesized stack alike: valid indices exist in all of them."""
        return min(self._stack_num_layers(s) for s in self.synthesizer_stacks)

    def check_synthesizer_fields(self):
        stacks = self.synthesizer_stacks
        if (
            not isinstance(stacks, (list, tuple))
            or not stacks
            or any(s not in T5_STACKS for s in stacks)
            or len(set(stacks)) != len(stacks)
        ):
            raise ValueError(
                f"synthesizer_stacks must be a non-empty list of distinct names from {list(T5_STACKS)} (whose "
                f"self-attention is synthesized), got {stacks!r}. For plain dot-product attention everywhere use "
                f"synthesizer_variant='vanilla'."
            )
        if not isinstance(self.synthesizer_position_bias, bool):
            raise ValueError(
                f"synthesizer_position_bias must be True or False, got {self.synthesizer_position_bias!r}."
            )
        if self.synthesizer_layers is not None:
            for stack in stacks:
                n = self._stack_num_layers(stack)
                bad = [i for i in self.synthesizer_layers if not isinstance(i, int) or not 0 <= i < n]
                if bad:
                    raise ValueError(
                        f"synthesizer_layers has indices {bad} outside the {stack}'s {n} blocks (valid: 0..{n - 1}). "
                        f"The indices apply to every stack in synthesizer_stacks={list(stacks)}; restrict "
                        f"synthesizer_stacks to address a single stack."
                    )
        super().check_synthesizer_fields()

    def components_for_stack_layer(self, stack: str, layer_idx: int) -> tuple[str, ...]:
        """Components of the self-attention of block `layer_idx` of `stack` (`"encoder"` or `"decoder"`)."""
        if stack not in self.synthesizer_stacks:
            return ("vanilla",)
        return self.components_for_layer(layer_idx)


SYNTHESIZER_CONFIGS = (BertSynthesizerConfig, T5SynthesizerConfig)


class CheckpointFamilyError(ValueError):
    """A checkpoint of the other family: a T5 folder read by a BERT synthesizer class, or the reverse. Raised by the
    config (which reads config.json first); `for_model` names the model class of the same head that loads it."""

    def __init__(self, path, model_type: str, reader: type, right: type, model_class: type | None = None):
        self.path, self.model_type, self.reader, self.right = path, model_type, reader, right
        family, reader_family = right.stock_model_type.upper(), reader.stock_model_type.upper()
        reader_name = (model_class or reader).__name__
        same_head = _same_head(model_class, right) if model_class is not None else None
        if same_head is not None:
            use = (f"Use {same_head[1]}.from_pretrained(path) instead, or {same_head[0]}.from_pretrained(path), which "
                   f"picks the class from config.json")
        else:
            classes = ", ".join(_registered_models(right)) or f"the {right.__name__.removesuffix('Config')}* classes"
            use = f"Use {right.__name__} and the {family} synthesizer models ({classes}) instead"
        super().__init__(
            f"{path} holds a {family} checkpoint (model_type {model_type!r}), but {reader_name} reads {reader_family} "
            f"checkpoints (model_type {reader.stock_model_type!r} or {reader.model_type!r}): none of its weights "
            f"would load. {use}."
        )

    def for_model(self, model_class: type) -> "CheckpointFamilyError":
        return CheckpointFamilyError(self.path, self.model_type, self.reader, self.right, model_class)


def _auto_mappings():
    import transformers.models.auto as auto

    for name in dir(auto):
        mapping = getattr(getattr(auto, name), "_model_mapping", None)
        if name.startswith("AutoModel") and mapping is not None:
            yield name, mapping


def _lookup(mapping, config_class):
    try:
        return mapping[config_class]
    except (KeyError, ValueError):
        return None


def _same_head(model_class: type, config_class: type) -> tuple[str, str] | None:
    """`(auto class, model class)` names of `config_class`'s model for the head `model_class` has (registered with
    the same Auto class), or None."""
    for name, mapping in _auto_mappings():
        if _lookup(mapping, model_class.config_class) is model_class:
            target = _lookup(mapping, config_class)
            if target is not None:
                return name, target.__name__
    return None


def _registered_models(config_class: type) -> list[str]:
    return sorted({t.__name__ for _, m in _auto_mappings() if (t := _lookup(m, config_class)) is not None})
