"""`hf-synthesizer convert SRC DST --attn_implementation synthesizer_<variant> [options]`: convert a stock BERT/T5
checkpoint folder (or a synthesizer one, to another variant or head) into a synthesizer checkpoint: safetensors
weights, config, the modeling code (trust_remote_code) and a model card, plus the source's tokenizer files."""

import json
import shutil
import sys
from pathlib import Path

from .checkpoints import TOKENIZER_FILES, CheckpointError, default_head, families, family_of, load_config
from .configuration_synthesizer import ATTN_PREFIX, MIXTURES, NAMED_VARIANTS, VANILLA_BACKENDS, canonical_variant


def add_synthesizer_options(parser) -> None:
    """The synthesizer config fields as options, named exactly like the fields."""
    parser.add_argument(
        "--synthesizer_length", type=int, help="Maximum length L the synthesizer parameters are sized by."
    )
    parser.add_argument("--synthesizer_factorized_rank", type=int, help="Rank k of factorized random (paper: 8).")
    parser.add_argument(
        "--synthesizer_factorized_dense_split", type=int, nargs=2, metavar=("A", "B"),
        help="Factorized dense split a b with a*b == synthesizer_length.",
    )
    parser.add_argument(
        "--synthesizer_dense_shared_w2", action="store_true", default=None,
        help="Share the dense synthesizer's W2 across heads (reference code).",
    )
    parser.add_argument(
        "--synthesizer_layers", type=int, nargs="+", metavar="I", help="Layers to synthesize (default: all)."
    )
    parser.add_argument("--synthesizer_mixture", choices=MIXTURES, help="How a mixture weighs its components.")
    parser.add_argument(
        "--synthesizer_vanilla_backend", choices=VANILLA_BACKENDS, help="Backend of the vanilla term."
    )


SYNTHESIZER_OPTIONS = (
    "synthesizer_length",
    "synthesizer_factorized_rank",
    "synthesizer_factorized_dense_split",
    "synthesizer_dense_shared_w2",
    "synthesizer_layers",
    "synthesizer_mixture",
    "synthesizer_vanilla_backend",
)


def add_parser(subparsers) -> None:
    heads = sorted({h for family in set(families().values()) for h in family.heads})
    parser = subparsers.add_parser(
        "convert",
        help="Convert a BERT/T5 checkpoint folder to a synthesizer variant.",
        description=__doc__,
    )
    parser.add_argument("src", type=Path, help="Stock or synthesizer checkpoint folder.")
    parser.add_argument("dst", type=Path, help="Output folder.")
    parser.add_argument(
        "--attn_implementation",
        help=f"synthesizer_<variant>, e.g. {', '.join(ATTN_PREFIX + v for v in NAMED_VARIANTS)} (any '+' mixture "
        f"of components). Required for a stock checkpoint; a synthesizer checkpoint keeps its variant by default.",
    )
    add_synthesizer_options(parser)
    parser.add_argument("--head", choices=heads, help="Model head to save (default: the source's architecture).")
    parser.add_argument("--num_labels", type=int, help="Number of labels of a classification head.")
    parser.add_argument("--base_model", help="Hub id of the source model, recorded in the model card.")
    parser.add_argument("--overwrite", action="store_true", help="Write into DST even if it holds a checkpoint.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the new synthesizer parameters.")
    parser.set_defaults(func=run)


def synthesizer_overrides(args) -> dict:
    overrides = {name: getattr(args, name) for name in SYNTHESIZER_OPTIONS if getattr(args, name, None) is not None}
    if overrides.get("synthesizer_factorized_dense_split") is not None:
        overrides["synthesizer_factorized_dense_split"] = list(overrides["synthesizer_factorized_dense_split"])
    return overrides


def convert(src, dst, attn_implementation=None, head=None, num_labels=None, base_model=None, overwrite=False,
            seed=0, **synthesizer_options):
    """Convert `src` into `dst`; returns `(model, loading_info)`. Raises `CheckpointError`/`ValueError` with a fix."""
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

    family, config = load_config(src, **overrides)
    if "synthesizer_length" in overrides and stored != "vanilla":
        old = config_dict.get("synthesizer_length")
        if old is not None and old != config.synthesizer_length:
            raise ValueError(
                f"{src} was saved with synthesizer_length={old}; its synthesizer parameters cannot be reused at "
                f"{config.synthesizer_length}. Convert from the stock checkpoint instead."
            )
    head = head or default_head(family, config)
    model_class = family.heads[head]
    torch.manual_seed(seed)
    model, loading_info = model_class.from_pretrained(src, config=config, output_loading_info=True)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, model_card_kwargs={"base_model": base_model})
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    cap_tokenizer_length(dst / "tokenizer_config.json", config.synthesizer_length)
    return model, loading_info


def cap_tokenizer_length(tokenizer_config: Path, length: int) -> None:
    """Lower the tokenizer's `model_max_length` to the synthesizer length, so `truncation=True` (and pipelines
    called with it) cut inputs where the model's limit is instead of failing on them."""
    if not tokenizer_config.is_file():
        return
    data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    current = data.get("model_max_length")
    if not isinstance(current, (int, float)) or current > length:
        data["model_max_length"] = length
        tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args) -> int:
    try:
        model, info = convert(
            args.src, args.dst, attn_implementation=args.attn_implementation, head=args.head,
            num_labels=args.num_labels, base_model=args.base_model, overwrite=args.overwrite, seed=args.seed,
            **synthesizer_overrides(args),
        )
    except (CheckpointError, ValueError, OSError) as e:
        print(f"hf-synthesizer convert: error: {e}", file=sys.stderr)
        return 2
    config = model.config
    print(f"Saved {type(model).__name__} (variant {config.synthesizer_variant}, "
          f"synthesizer_length {config.synthesizer_length}) to {args.dst}")
    if info["missing_keys"]:
        print(f"Newly initialised ({len(info['missing_keys'])}): {', '.join(sorted(info['missing_keys']))}")
    if info["unexpected_keys"]:
        print(f"Dropped from the source ({len(info['unexpected_keys'])}): {', '.join(sorted(info['unexpected_keys']))}")
    if info.get("mismatched_keys"):
        print(f"Re-initialised, shape changed: {', '.join(sorted(str(k) for k in info['mismatched_keys']))}")
    return 0
