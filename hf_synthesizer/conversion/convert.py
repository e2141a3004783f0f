"""`hf-synthesizer convert SRC DST --attn_implementation synthesizer_<variant> [options]`: convert a stock BERT/T5
checkpoint folder (or a synthesizer one, to another variant or head) into a synthesizer checkpoint: safetensors
weights, config, the modeling code (trust_remote_code) and a model card, plus the source's tokenizer and whatever else
it holds besides weights (sentence-transformers modules, e.g. pooling and normalize)."""

import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from transformers import HfArgumentParser

from ..modeling.configuration_synthesizer import ATTN_PREFIX, NAMED_VARIANTS, canonical_variant
from .checkpoints import (
    TOKENIZER_FILES,
    CheckpointError,
    decoder_overrides,
    default_head,
    families,
    family_of,
    is_causal_lm,
    load_config,
)
from .loading import checkpoint_keys, describe_loading, quiet_logs, synthesizer_arguments


# The share of --calibrate_on texts kept out of calibration to measure its agreement on (from 10 texts on).
CALIBRATION_HOLD_OUT = 0.2


def convert_options() -> type:
    """The `--synthesizer_*` flags: every synthesizer config field of every family (BERT, T5) except the variant,
    which `--attn_implementation` chooses (a dataclass for `HfArgumentParser`, see `loading.synthesizer_arguments`)."""
    config_classes = list({id(f.config_class): f.config_class for f in families().values()}.values())
    return synthesizer_arguments("ConvertOptions", config_classes, attn_implementation=False)


def add_parser(subparsers) -> None:
    heads = sorted({h for family in set(families().values()) for h in family.heads})
    parser = subparsers.add_parser(
        "convert",
        help="Convert a BERT/T5 checkpoint folder to a synthesizer variant.",
        description=__doc__,
        parents=[HfArgumentParser(convert_options(), add_help=False)],  # the --synthesizer_* flags
    )
    parser.add_argument("src", type=Path, help="Stock or synthesizer checkpoint folder.")
    parser.add_argument("dst", type=Path, help="Output folder.")
    parser.add_argument(
        "--attn_implementation",
        help=f"synthesizer_<variant>, e.g. {', '.join(ATTN_PREFIX + v for v in NAMED_VARIANTS)} (any '+' mixture "
        f"of components). Required for a stock checkpoint; a synthesizer checkpoint keeps its variant by default.",
    )
    parser.add_argument("--head", choices=heads, help="Model head to save (default: the source's architecture).")
    parser.add_argument("--num_labels", type=int, help="Number of labels of a classification head.")
    parser.add_argument("--base_model", help="Hub id of the source model, recorded in the model card.")
    parser.add_argument("--overwrite", action="store_true", help="Write into DST even if it holds a checkpoint.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the new synthesizer parameters.")
    parser.add_argument(
        "--calibrate_on", type=Path, metavar="TEXT_FILE",
        help="Attention-transfer initialisation: run the stock model on this text file (one text per line) and "
        "initialise the synthesizer to reproduce its attention (docs/conversion.md). Stock sources only. From 10 "
        "texts on, every 5th is held out: the printed agreement is measured on those.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="Show transformers' own load report (every missing and unexpected key) and progress bars.")
    parser.set_defaults(func=run)


def synthesizer_overrides(args) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(convert_options()) if getattr(args, f.name) is not None}


def convert(src, dst, attn_implementation=None, head=None, num_labels=None, base_model=None, overwrite=False,
            seed=0, calibrate_on=None, **synthesizer_options):
    """Convert `src` into `dst`; returns `(model, loading_info)` (with `loading_info["calibration"]`, the
    `CalibrationReport`, when calibrated). Raises `CheckpointError`/`ValueError` with a fix."""
    import torch

    src, dst = Path(src), Path(dst)
    family, config_dict = family_of(src)
    overrides = dict(synthesizer_options)
    stored = config_dict.get("synthesizer_variant", "vanilla")
    if attn_implementation is not None:
        if not attn_implementation.startswith(ATTN_PREFIX):
            raise ValueError(
                f"--attn_implementation must name a synthesizer variant (synthesizer_<variant>), got "
                f"{attn_implementation!r}; e.g. {', '.join(ATTN_PREFIX + v for v in NAMED_VARIANTS)}."
            )
        overrides["synthesizer_variant"] = canonical_variant(attn_implementation[len(ATTN_PREFIX):])
    elif stored == "vanilla":
        raise ValueError(
            f"{src} is a vanilla {family.name} checkpoint: choose the variant with --attn_implementation "
            f"(e.g. synthesizer_random)."
        )
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if (dst / "config.json").exists() and not overwrite:
        raise CheckpointError(f"{dst} already holds a checkpoint; pass --overwrite to replace it.")
    if dst.resolve() == src.resolve():
        raise CheckpointError("DST must differ from SRC (the source is read while the output is written).")

    resize_to = None
    if stored != "vanilla" and overrides.get("synthesizer_length") not in (None, config_dict.get("synthesizer_length")):
        # A saved synthesizer loads at the length its parameters have, then is resampled (length_resizing.py).
        resize_to = overrides.pop("synthesizer_length")
    if calibrate_on is not None and stored != "vanilla":
        raise ValueError(
            f"--calibrate_on initialises new synthesizer parameters from the stock model's attention, but {src} is "
            f"already a synthesizer checkpoint (variant {stored}). Convert from the stock checkpoint instead."
        )
    family, config, head = config_for_head(src, overrides, head)
    torch.manual_seed(seed)
    model, loading_info = family.heads[head].from_pretrained(src, config=config, output_loading_info=True)
    if resize_to is not None:
        model.resize_synthesizer_length(resize_to)
    tokenizer = source_tokenizer(src)
    if calibrate_on is not None:
        from .calibration import calibrate_synthesizer

        loading_info["calibration"] = calibrate_synthesizer(model, src, Path(calibrate_on), tokenizer,
                                                            hold_out=CALIBRATION_HOLD_OUT)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, model_card_kwargs={"base_model": base_model})
    if tokenizer is not None:
        tokenizer.save_pretrained(dst)
    cap_tokenizer_length(dst / "tokenizer_config.json", model.config.synthesizer_length)  # after any resizing
    carry_over(src, dst, model.config)
    return model, loading_info


def config_for_head(src: Path, overrides: dict, head: str | None):
    """`(family, config, head)`: the synthesizer config of `src` with `overrides`, for `head` (default: the source's
    own). A causal-lm head gets `is_decoder=True` (`checkpoints.decoder_overrides`: a stock BERT config says false,
    and the head would see the tokens it predicts). Raises `ValueError` for a head the family does not have."""
    family, config = load_config(src, **overrides)
    head = head or default_head(family, config)
    if head not in family.heads:
        raise ValueError(f"{family.name.upper()} checkpoints have no {head} head; choose one of: "
                         f"{', '.join(sorted(family.heads))}.")
    if is_causal_lm(head) and not config.is_decoder:
        family, config = load_config(src, **decoder_overrides(head, overrides))
    return family, config, head


def source_tokenizer(src: Path):
    """The tokenizer `src` holds (re-saved next to the converted checkpoint), or None."""
    if not any((src / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src)


# Weights of the source: the converted model's replace them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".ot")


def carry_over(src: Path, dst: Path, config) -> list[str]:
    """Copy what `src` holds besides its weights and DST does not have yet (after `save_pretrained` and the
    tokenizer): top-level files (sentence-transformers' `modules.json`, `sentence_bert_config.json`, ...) and the
    module folders `modules.json` lists (pooling, normalize, ...), so that `SentenceTransformer(DST)` runs the same
    pipeline. Other folders (exports such as `onnx/` hold the stock weights) stay behind. A sentence-transformers
    `max_seq_length` above the converted model's limit is lowered to it. Returns the names copied."""
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not (dst / path.name).exists() and not (
            path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json")
        ):
            shutil.copyfile(path, dst / path.name)
            copied.append(path.name)
    modules = src / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            folder = module.get("path") or ""
            if folder and (src / folder).is_dir() and not (dst / folder).exists():
                shutil.copytree(src / folder, dst / folder)
                copied.append(folder)
    settings = dst / "sentence_bert_config.json"
    if settings.is_file():
        limit = min(config.synthesizer_length, getattr(config, "max_position_embeddings", config.synthesizer_length))
        data = json.loads(settings.read_text(encoding="utf-8"))
        if isinstance(data.get("max_seq_length"), int) and data["max_seq_length"] > limit:
            data["max_seq_length"] = limit  # sentence-transformers truncates there: never past the model's limit
            settings.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return copied


def cap_tokenizer_length(tokenizer_config: Path, length: int) -> None:
    """Set the tokenizer's `model_max_length` to the synthesizer length (lower when converting, higher after growing
    a resized model), so `truncation=True` (and pipelines called with it) cut inputs where the model's limit is:
    neither failing on them nor cutting them shorter than needed."""
    if not tokenizer_config.is_file():
        return
    data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    if data.get("model_max_length") != length:
        data["model_max_length"] = length
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args) -> int:
    try:
        with quiet_logs(args.verbose):
            model, info = convert(
                args.src, args.dst, attn_implementation=args.attn_implementation, head=args.head,
                num_labels=args.num_labels, base_model=args.base_model, overwrite=args.overwrite, seed=args.seed,
                calibrate_on=args.calibrate_on, **synthesizer_overrides(args),
            )
    except (CheckpointError, ValueError, OSError) as e:
        print(f"hf-synthesizer convert: error: {e}", file=sys.stderr)
        return 2
    config = model.config
    calibration = info.get("calibration")
    calibrated = {c for done in (calibration or {}).values() for c in done}
    print(f"Converted {args.src} to {args.dst} ({type(model).__name__}, variant {config.synthesizer_variant}, "
          f"synthesizer_length {config.synthesizer_length}"
          f"{', is_decoder=True: causal self-attention' if is_causal_lm(type(model)) else ''}): "
          f"{describe_loading(model, info, calibrated, checkpoint_keys(args.src))}.")
    if calibration is not None:
        print(calibration.summary() + ".")
    return 0
