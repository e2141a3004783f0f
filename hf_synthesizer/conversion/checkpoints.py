"""What the `convert`, `info` and `card` subcommands share: reading a checkpoint folder with clear errors, the model
families (BERT and T5), head names, and building a model without loading weights."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..modeling import BERT_AUTO_CLASSES, T5_AUTO_CLASSES

# Special cases of the head names derived from Auto class names ("AutoModelForMaskedLM" -> "masked-lm").
_HEAD_NAMES = {"AutoModel": "base", "AutoModelForPreTraining": "pretraining", "AutoModelForSeq2SeqLM": "seq2seq-lm"}

# Tokenizer files: a source holding any of them has a tokenizer, re-saved next to the converted checkpoint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "spiece.model",
)


class CheckpointError(ValueError):
    """A path that is not a usable BERT/T5 checkpoint folder; the message says what to do."""


@dataclass(frozen=True, eq=False)
class Family:
    name: str  # stock model_type: "bert", "t5"
    config_class: type
    auto_classes: dict  # {AutoClass: synthesizer model class}

    @property
    def model_types(self) -> tuple[str, str]:
        return self.name, self.config_class.model_type

    @property
    def heads(self) -> dict[str, type]:
        """{"masked-lm": BertSynthesizerForMaskedLM, ...}"""
        return {head_name(auto): model for auto, model in self.auto_classes.items()}


def head_name(auto_class) -> str:
    name = auto_class if isinstance(auto_class, str) else auto_class.__name__
    if name in _HEAD_NAMES:
        return _HEAD_NAMES[name]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name.removeprefix("AutoModelFor")).lower()


def families() -> dict[str, Family]:
    """Every supported family, keyed by both its stock and its synthesizer model_type."""
    result = {}
    for table in (BERT_AUTO_CLASSES, T5_AUTO_CLASSES):
        config_class = next(iter(table.values())).config_class
        family = Family(config_class.stock_model_type, config_class, dict(table))
        for model_type in family.model_types:
            result[model_type] = family
    return result


def read_config_dict(path) -> dict:
    """config.json of a checkpoint folder, or a `CheckpointError` saying what is wrong with `path`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist. Pass a checkpoint folder (one holding config.json); Hub ids are not downloaded "
            f"by this command: download the model first (e.g. `hf download <id> --local-dir DIR`)."
        )
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint folder (one holding config.json).")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} has no config.json, so it is not a transformers checkpoint folder. Hub ids are not downloaded "
            f"by this command: download the model first (e.g. `hf download <id> --local-dir DIR`)."
        )
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e


def family_of(path) -> tuple[Family, dict]:
    config_dict = read_config_dict(path)
    model_type = config_dict.get("model_type")
    known = families()
    if model_type not in known:
        supported = ", ".join(sorted(known))
        raise CheckpointError(
            f"{path} holds a {model_type!r} checkpoint; hf-synthesizer works on BERT and T5 checkpoints "
            f"(model_type one of: {supported})."
        )
    return known[model_type], config_dict


def load_config(path, **overrides):
    """The synthesizer config of a stock or synthesizer checkpoint, with `overrides` validated like any config."""
    family, _ = family_of(path)
    config_dict, _ = family.config_class.get_config_dict(str(path))
    # from_dict builds the config in one go: the overrides are validated together with the stored fields.
    return family, family.config_class.from_dict({**config_dict, **overrides})


def default_head(family: Family, config) -> str:
    """The head the checkpoint was saved with (its `architectures`), or "base"."""
    for architecture in getattr(config, "architectures", None) or []:
        heads = [h for h, model_class in family.heads.items() if architecture in {c.__name__ for c in model_class.__mro__}]
        # A class serving several heads (T5's conditional generation: pretraining and seq2seq-lm): the task one.
        heads.sort(key=lambda h: h == "pretraining")
        if heads:
            return heads[0]
    return "base"


CAUSAL_LM_HEAD = "causal-lm"


def is_causal_lm(model_class) -> bool:
    """Whether `model_class` (an Auto class, a model class or a head name) predicts the next token: then its
    self-attention must be causal, which BERT makes it only with `is_decoder=True`."""
    name = model_class if isinstance(model_class, str) else model_class.__name__
    return head_name(name) == CAUSAL_LM_HEAD or name.endswith(("LMHeadModel", "ForCausalLM"))


def decoder_overrides(model_class, overrides: dict | None) -> dict:
    """`overrides` (config fields) for loading or saving `model_class`: a causal-lm head gets `is_decoder=True`, so
    position i attends to positions <= i only (a stock BERT config says `is_decoder: false`, and BERT's LM head
    with it would see the tokens it predicts). Raises `ValueError` when `overrides` ask for `is_decoder=False`."""
    overrides = dict(overrides or {})
    if not is_causal_lm(model_class):
        return overrides
    if overrides.get("is_decoder", True) is not True:
        raise ValueError(
            f"A causal-lm head ({getattr(model_class, '__name__', model_class)}) needs is_decoder=True: with "
            f"is_decoder=False every position attends to the tokens after it, the ones it is meant to predict. Drop "
            f"is_decoder=False, or choose a bidirectional head (e.g. masked-lm)."
        )
    overrides["is_decoder"] = True
    return overrides


def empty_model(family: Family, config, head: str | None = None):
    """The model class of `head` built on the meta device: structure and parameter counts, no weights, no cost."""
    head = head or default_head(family, config)
    with torch.device("meta"):
        return family.heads[head](config)
