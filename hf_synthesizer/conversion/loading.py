"""One helper to load any checkpoint as a synthesizer model: the path shared by `examples/` and `hf-synthesizer
compare`.

Why a helper: the synthesizer configs are registered with the Auto classes under their own model types
(`bert_synthesizer`, ...), so `AutoModelForX.from_pretrained(stock_bert_path, attn_implementation=
"synthesizer_random")` would build a *stock* BERT, which has no synthesizer parameters and fails. A stock
checkpoint must be read through the synthesizer config class (`BertSynthesizerConfig.from_pretrained(path)`)
and handed to the Auto class as `config=`; a saved synthesizer checkpoint already is one. This module does that
dispatch on `model_type` in one place.

    from transformers import AutoModelForSequenceClassification
    from hf_synthesizer.conversion.loading import load_synthesizer_model

    # convert a stock BERT checkpoint to the random synthesizer, sized for 128 tokens
    model = load_synthesizer_model(
        AutoModelForSequenceClassification, "path/to/bert", "synthesizer_random",
        config_kwargs={"num_labels": 2}, synthesizer_length=128,
    )
    model.save_pretrained("out")  # reloads as synthesizer_random without repeating the choice
    model = load_synthesizer_model(AutoModelForSequenceClassification, "out")
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging as hf_logging

from ..modeling.configuration_synthesizer import (
    ATTN_PREFIX,
    COMPONENTS,
    MIXTURES,
    VANILLA_BACKENDS,
    SynthesizerFields,
)
from .checkpoints import decoder_overrides, families


def synthesizer_config_classes() -> dict[str, type]:
    """Stock `model_type` -> synthesizer config class, for every model family the package supports."""
    return {family.name: family.config_class for family in families().values()}


SYNTHESIZER_OPTIONS = tuple(SynthesizerFields.__dataclass_fields__)  # the config fields users may set


def load_synthesizer_config(
    path: str,
    attn_implementation: str | None = None,
    config_kwargs: dict[str, Any] | None = None,
    **synthesizer_options,
) -> PretrainedConfig:
    """The config to load `path` with (see `load_synthesizer_model`)."""
    unknown = sorted(set(synthesizer_options) - set(SYNTHESIZER_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown synthesizer option(s) {unknown}; valid: {', '.join(SYNTHESIZER_OPTIONS)}.")
    if "synthesizer_variant" in synthesizer_options and synthesizer_options["synthesizer_variant"] is not None:
        raise ValueError(
            "Choose the variant with attn_implementation='synthesizer_<variant>' (one name per idea), "
            "not synthesizer_variant."
        )
    options = {k: v for k, v in synthesizer_options.items() if v is not None}
    kwargs = {**(config_kwargs or {}), **options}
    config_dict, _ = PretrainedConfig.get_config_dict(path)
    model_type = config_dict.get("model_type")
    stock = synthesizer_config_classes()
    wants_synthesizer = bool(options) or (attn_implementation or "").startswith(ATTN_PREFIX)
    if model_type in stock and wants_synthesizer:
        return stock[model_type].from_pretrained(path, **kwargs)
    synthesizer_types = {cls.model_type for cls in stock.values()}
    if wants_synthesizer and model_type not in synthesizer_types:
        raise ValueError(
            f"{path} holds a {model_type!r} checkpoint; synthesizer attention converts only "
            f"{', '.join(sorted(stock))} checkpoints."
        )
    # a saved synthesizer checkpoint (AutoConfig knows its model_type), or any checkpoint loaded as it is
    return AutoConfig.from_pretrained(path, **kwargs)


def load_synthesizer_model(
    auto_class,
    path: str,
    attn_implementation: str | None = None,
    *,
    config_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **synthesizer_options,
):
    """Load `path` with `auto_class` (e.g. `AutoModelForSequenceClassification`), as a synthesizer model when asked.

    - stock checkpoint (`bert`) + `attn_implementation="synthesizer_<variant>"` or any synthesizer option:
      converted; weights that still exist load, new synthesizer parameters are initialised near uniform attention;
    - saved synthesizer checkpoint (`bert_synthesizer`): reloads as the variant it was saved with
      (`attn_implementation` may be omitted, repeat it, or be `"sdpa"`/`"eager"`: the backend of the same
      synthesizer, fast routes or plain reference);
    - stock checkpoint with no synthesizer choice (or `"sdpa"`/`"eager"`): the stock transformers model, the
      vanilla reference.

    A causal-lm `auto_class` (`AutoModelForCausalLM`) gets `is_decoder=True`, so the model cannot see the tokens it
    predicts; `config_kwargs={"is_decoder": False}` with it raises `ValueError`.

    `synthesizer_options` are config fields named `synthesizer_*` (see `BertSynthesizerConfig`; `None` means
    "keep the checkpoint's / the default"); `config_kwargs` other config overrides (`num_labels`, dropout, ...);
    `model_kwargs` extra `from_pretrained` arguments.
    """
    config_kwargs = decoder_overrides(auto_class, config_kwargs)  # a causal-lm head: is_decoder=True, or refuse
    config = load_synthesizer_config(path, attn_implementation, config_kwargs, **synthesizer_options)
    kwargs = dict(model_kwargs or {})
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return auto_class.from_pretrained(path, config=config, **kwargs)


def accepted_length(config) -> int | None:
    """The longest input `config`'s model accepts: `synthesizer_length` for a synthesizer, BERT's
    `max_position_embeddings` when lower (or alone, for vanilla BERT); None when nothing bounds it (vanilla T5)."""
    limits = [getattr(config, "max_position_embeddings", None)]
    if getattr(config, "synthesizer_variant", "vanilla") != "vanilla":
        limits.append(config.synthesizer_length)
    limits = [n for n in limits if isinstance(n, int)]
    return min(limits) if limits else None


def set_model_max_length(tokenizer, model):
    """Make `tokenizer.model_max_length` the length `model` accepts, so `truncation=True` (pipelines included) cuts
    inputs exactly there, and a tokenizer saved beside the model (`Trainer` saves it, checkpoints included) keeps it.
    Call it again after `resize_synthesizer_length`. Returns the tokenizer."""
    length = accepted_length(model.config)
    if length is not None:
        tokenizer.model_max_length = length
    return tokenizer


def describe_attention(model) -> str:
    """`"synthesizer_random"`, `"vanilla (sdpa)"`, ...: what a loaded model runs, for logs and tables."""
    variant = getattr(model.config, "synthesizer_variant", None)
    if variant is None or variant == "vanilla":
        return f"vanilla ({model.config._attn_implementation})"
    return ATTN_PREFIX + variant


# "    synthesizer_x (`type`, ...):\n        Its description, up to the next field or a blank line."
_FIELD_DOC = re.compile(
    r"^\s*(synthesizer_\w+) \(`[^`]*`[^)]*\):\n(.+?)(?=\n\s*synthesizer_\w+ \(|\n\s*\n|\Z)", re.M | re.S
)
# String fields with a fixed set of values (the other fields are validated by the config, with its own messages).
FIELD_CHOICES = {"synthesizer_mixture": MIXTURES, "synthesizer_vanilla_backend": VANILLA_BACKENDS}
ATTN_IMPLEMENTATION_HELP = (
    "synthesizer_<variant> to convert a stock checkpoint (e.g. synthesizer_random, synthesizer_random+vanilla; "
    "components: " + ", ".join(COMPONENTS) + "), or sdpa/eager: the backend (a stock checkpoint stays stock; a "
    "synthesizer runs its own variant with it). A saved synthesizer checkpoint reloads as its own variant when this "
    "is omitted."
)


def field_help(config_class, name: str) -> str:
    """The documentation of config field `name`, on one line, from the docstrings of `config_class` and its bases
    (transformers' `Args:` style, as `SynthesizerFields` writes it)."""
    for klass in config_class.__mro__:
        for match in _FIELD_DOC.finditer(klass.__doc__ or ""):
            if match.group(1) == name:
                return " ".join(match.group(2).split())
    return f"Config field {name}."


def _options(self) -> dict[str, Any]:
    """The synthesizer config fields the user set (those not None)."""
    return {k: v for k, v in asdict(self).items() if k.startswith("synthesizer_") and v is not None}


def synthesizer_arguments(name: str, config_classes, attn_implementation: bool = True) -> type:
    """A dataclass for `transformers.HfArgumentParser`: one flag per `synthesizer_*` field of `config_classes` (config
    classes or their field dataclasses) except the variant, named exactly like the field, typed from its annotation,
    documented by the config's docstring, with default None ("keep the checkpoint's value or the config default"),
    plus `--attn_implementation` when asked. `.options()` returns the fields the user set."""
    specs, seen = [], set()
    if attn_implementation:
        specs.append(("attn_implementation", Optional[str],
                      field(default=None, metadata={"help": ATTN_IMPLEMENTATION_HELP})))
    for config_class in config_classes:
        for config_field in fields(config_class):
            if not config_field.name.startswith("synthesizer_") or config_field.name in seen | {"synthesizer_variant"}:
                continue
            seen.add(config_field.name)
            metadata = {"help": field_help(config_class, config_field.name)}
            annotation = config_field.type
            if config_field.name in FIELD_CHOICES:
                annotation = Literal[FIELD_CHOICES[config_field.name]]
            elif annotation in (bool, Optional[bool]):
                metadata.update(nargs="?", const=True)  # `--synthesizer_dense_shared_w2` alone means true
            specs.append((config_field.name, Optional[annotation], field(default=None, metadata=metadata)))
    arguments = make_dataclass(name, specs, namespace={"options": _options})
    arguments.__module__ = __name__  # (make_dataclass's `module=` needs Python 3.12)
    return arguments


SynthesizerArguments = synthesizer_arguments("SynthesizerArguments", [SynthesizerFields])
SynthesizerArguments.__doc__ = """Command-line flags of the BERT examples for `HfArgumentParser`:
`--attn_implementation` and one flag per synthesizer config field, named exactly like the field (see
`synthesizer_arguments`). Unset flags (None) keep the checkpoint's value or the config default.

    model_args, synth_args, training_args = HfArgumentParser(
        (ModelArguments, SynthesizerArguments, TrainingArguments)).parse_args_into_dataclasses()
    model = load_synthesizer_model(AutoModelForX, path, synth_args.attn_implementation, **synth_args.options())
"""


@contextmanager
def quiet_logs(verbose: bool = False):
    """Inside: transformers and hf_synthesizer log errors only and transformers and datasets show no progress bars, so
    the per-key load report (the MISSING/UNEXPECTED table, tied-weight warnings) and warnings a command sums up itself
    do not bury what it prints; `verbose=True` shows them (at least warnings, whatever TRANSFORMERS_VERBOSITY says)."""
    from datasets import utils as datasets_utils

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    datasets_bars = not datasets_utils.are_progress_bars_disabled()  # `Dataset.map`'s bars (tokenizing)
    ours = logging.getLogger("hf_synthesizer")
    level = ours.level
    if verbose:
        hf_logging.set_verbosity(min(verbosity, logging.WARNING))
        hf_logging.enable_progress_bar()
        datasets_utils.enable_progress_bars()
        ours.setLevel(logging.WARNING)
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        datasets_utils.disable_progress_bars()
        ours.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        ours.setLevel(level)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        (datasets_utils.enable_progress_bars if datasets_bars else datasets_utils.disable_progress_bars)()


_QUERY_KEY = re.compile(r"\.(query|key|q|k)\.(weight|bias)$")
_HEAD = re.compile(r"(^|\.)(cls|classifier|qa_outputs|lm_head|pooler|classification_head)\.")
_COMPONENT = re.compile(r"\.synthesizer\.(factorized_dense|factorized_random|fixed_random|random|dense|mixture)")


def _kinds(keys) -> dict[str, list[str]]:
    kinds = {"synthesizer": [], "query/key": [], "head": [], "other": []}
    for key in keys:
        if ".synthesizer." in key:
            kinds["synthesizer"].append(key)
        elif _QUERY_KEY.search(key):
            kinds["query/key"].append(key)
        elif _HEAD.search(key):
            kinds["head"].append(key)
        else:
            kinds["other"].append(key)
    return kinds


def checkpoint_keys(path) -> set[str] | None:
    """The tensor names of a local checkpoint's safetensors files (headers only), or None when it has none."""
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    if not (path / "model.safetensors").is_file():
        return None
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return set(f.keys())


def describe_loading(model, info: dict, calibrated=(), source_keys=None) -> str:
    """One line for a model loaded with `output_loading_info=True`: how many weights loaded, what was initialised and
    what was ignored, and why each is expected when converting (anything that is not expected is named).
    `calibrated`: the synthesizer components (and "mixture") set by calibration after loading. `source_keys`: the
    checkpoint's tensor names (`checkpoint_keys`), to count the query/key weights the model drops without a report."""
    variant = getattr(model.config, "synthesizer_variant", "vanilla")
    name = describe_attention(model)
    silently = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    ignored = [k for k in source_keys or () if any(p.search(k) for p in silently)]
    missing = _kinds(info.get("missing_keys", ()))
    unexpected = _kinds([*info.get("unexpected_keys", ()), *ignored])
    total = len(model.state_dict())
    loaded = total - len(info.get("missing_keys", ()))
    new = []
    if missing["synthesizer"]:
        count = len(missing["synthesizer"])
        done = sum(bool(m) and m.group(1) in calibrated for m in map(_COMPONENT.search, missing["synthesizer"]))
        if done == count:
            how = "calibrated from the stock model's attention"
        elif done:
            how = f"{done} calibrated from the stock model's attention, {count - done} near-uniform"
        else:
            how = "near-uniform start"
        new.append(f"{count} synthesizer parameters (new in {name}: {how})")
    if missing["query/key"]:
        new.append(f"{len(missing['query/key'])} query/key weights (new: the vanilla term of {variant})")
    if missing["head"]:
        new.append(f"{len(missing['head'])} head/pooler weights of {type(model).__name__} (the source has none)")
    if missing["other"]:
        new.append(f"{len(missing['other'])} other weights, NOT expected: {', '.join(sorted(missing['other']))}")
    dropped = []
    if unexpected["query/key"]:
        dropped.append(f"{len(unexpected['query/key'])} query/key weights ({name} has no dot-product term)")
    if unexpected["head"]:
        dropped.append(f"{len(unexpected['head'])} head/pooler weights {type(model).__name__} does not have")
    if unexpected["synthesizer"] or unexpected["other"]:
        rest = sorted(unexpected["synthesizer"] + unexpected["other"])
        dropped.append(f"{len(rest)} other weights, NOT expected: {', '.join(rest)}")
    text = f"loaded {loaded} of {total} weights"
    if new:
        text += "; initialised " + ", ".join(new)
    if dropped:
        text += "; ignored " + ", ".join(dropped)
    if info.get("mismatched_keys"):
        text += f"; re-initialised (shape changed): {', '.join(sorted(str(k) for k in info['mismatched_keys']))}"
    return text
