"""What every synthesizer PreTrainedModel (BERT and T5) adds to its stock class: the attn_implementation
contract, initialisation of the synthesizer parameters, a loading guard so that a saved synthesizer is never
loaded into a model that would drop part of it, and (SynthesizerHubMixin) saving with code and a model card.

This file ships with saved checkpoints (trust_remote_code): it imports only torch, transformers and siblings.
"""

import functools
import types

import torch
from transformers.utils import logging as hf_logging

from .configuration_synthesizer import ATTN_PREFIX, CheckpointFamilyError, attn_implementation_name, canonical_variant
from .hub_mixin import SynthesizerHubMixin
from .length_resizing import resize_synthesizer_length
from .synthesizer_attention import init_synthesizer_weights, register_attn_implementation

SYNTHESIZER_KEY = ".synthesizer."


def stock_init_building(stock_class: type, **synthesizer_classes):
    """`stock_class.__init__` (transformers' own code) run so that it builds the synthesizer submodules directly: the
    global names it builds submodules from (`BertModel`, `T5Stack`, ...) resolve to `synthesizer_classes`.

    A head then builds its synthesizer submodule once, in place of the stock one, instead of building a stock one and
    replacing it: the stock submodule's `post_init` would consume config flags meant for the one that stays (the
    legacy `config.gradient_checkpointing`, which it deletes after use). Thread-safe: the stock module's globals are
    not touched; the function gets its own copy of them."""
    stock_init = stock_class.__init__
    missing = sorted(set(synthesizer_classes) - set(stock_init.__code__.co_names))
    if missing:  # a transformers release that builds the submodule from another name
        raise TypeError(f"{stock_class.__name__}.__init__ no longer builds {missing}; hf_synthesizer needs updating.")
    init = types.FunctionType(
        stock_init.__code__, {**stock_init.__globals__, **synthesizer_classes}, stock_init.__name__,
        stock_init.__defaults__, stock_init.__closure__,
    )
    init.__kwdefaults__ = stock_init.__kwdefaults__
    return functools.wraps(stock_init)(init)


class SynthesizerPreTrainedMixin(SynthesizerHubMixin):
    """Put first in the bases of a synthesizer PreTrainedModel: `class X(SynthesizerPreTrainedMixin, StockModel)`."""

    # The BERT/T5 heads take **kwargs but do not normalise their loss by `num_items_in_batch`; without this,
    # Trainer multiplies the loss by the number of processes under DDP and skips gradient-accumulation scaling
    # (huggingface/transformers#47688).
    accepts_loss_kwargs = False

    def resize_synthesizer_length(self, new_length: int, method: str = "interpolate"):
        """Resample every length-sized synthesizer parameter to `new_length` and update the config (see
        length_resizing.py); returns the model."""
        return resize_synthesizer_length(self, new_length, method)

    def _synthesizer_init_std(self) -> float:
        """Standard deviation of R-like synthesizer parameters (small: attention close to uniform at init)."""
        return self.config.initializer_range

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        init_synthesizer_weights(module, self._synthesizer_init_std())

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """The backend this model runs with, `"sdpa"` (fast routes) or `"eager"` (plain reference), resolved against
        the variant stored in the config (see `SynthesizerConfigMixin.resolve_attn_implementation`): on a synthesizer
        model both run its synthesizer math. A `synthesizer_<variant>` name converts a stock config; it gets
        registered so that it also works when set on a config directly."""
        if requested_attention and requested_attention.startswith(ATTN_PREFIX):
            variant = canonical_variant(requested_attention.removeprefix(ATTN_PREFIX))
            if not is_init_check and variant != self.config.synthesizer_variant:
                raise ValueError(
                    f"This model was built as synthesizer_variant={self.config.synthesizer_variant!r}; the variant "
                    f"decides which parameters exist, so it cannot change on a live model. Load the checkpoint "
                    f"again with from_pretrained(path, attn_implementation={requested_attention!r})."
                )
            register_attn_implementation(attn_implementation_name(variant))
        return super().get_correct_attn_implementation(
            self.config.resolve_attn_implementation(requested_attention), is_init_check
        )

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except CheckpointFamilyError as error:  # e.g. a T5 folder into a BERT class: name the class that loads it
            raise error.for_model(cls) from None
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            mismatched = cls._mismatched_synthesizer_keys(args, kwargs)
            if not mismatched:
                raise  # e.g. another num_labels: transformers' own error, with its ignore_mismatched_sizes=True hint
            shapes = "; ".join(f"{k}: checkpoint {tuple(a)}, config {tuple(b)}" for k, a, b in mismatched[:3])
            raise ValueError(
                f"The checkpoint's synthesizer parameters have other shapes than this config makes ({shapes}"
                f"{' ...' if len(mismatched) > 3 else ''}): it was saved with a different synthesizer_length, "
                "synthesizer_factorized_rank, synthesizer_factorized_dense_split or synthesizer_dense_shared_w2. "
                "Load it without overriding those fields (its config.json holds them); to change the length, resize "
                "the loaded model instead."
            ) from error
        dropped = sorted(k for k in info["unexpected_keys"] if SYNTHESIZER_KEY in k)
        if dropped:
            raise ValueError(
                f"The checkpoint holds synthesizer weights this model would not use, so loading would lose them: "
                f"{dropped[:4]}{' ...' if len(dropped) > 4 else ''}. The config asks for other synthesizer_variant, "
                f"synthesizer_layers or synthesizer_mixture values than it was saved with; load it without "
                f"overriding them."
            )
        return (model, info) if output_loading_info else model

    @classmethod
    def _mismatched_synthesizer_keys(cls, args, kwargs) -> list:
        """After transformers refused a load for mismatched sizes (a RuntimeError whose table lists the keys only in
        the log): load again with `ignore_mismatched_sizes=True`, logs silenced, and return the synthesizer entries
        `(key, checkpoint shape, model shape)` of its `mismatched_keys`. Public API only, and run only on that error
        path."""
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            _, info = super().from_pretrained(
                *args, **{**kwargs, "ignore_mismatched_sizes": True, "output_loading_info": True}
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        return sorted(entry for entry in info["mismatched_keys"] if SYNTHESIZER_KEY in entry[0])
