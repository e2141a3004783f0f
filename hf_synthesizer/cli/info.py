"""`hf-synthesizer info PATH`: what a checkpoint folder holds: family, variant, lengths, per-layer components,
parameter counts (synthesizer vs the rest), weight and code files. Builds the model on the meta device: no weights
are read and nothing in the folder is executed."""

import json
import sys
from pathlib import Path

from ..conversion.checkpoints import CheckpointError, default_head, empty_model, family_of, load_config
from ..conversion.model_card import parameter_counts
from ..modeling.hub_mixin import module_auto_map


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="Show what a checkpoint folder holds.", description=__doc__)
    parser.add_argument("path", type=Path, help="Checkpoint folder.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    parser.set_defaults(func=run)


def layer_components(config) -> dict[str, list[list[str]]]:
    """`{stack: [components of layer 0, ...]}`; BERT has one stack ("encoder"), T5 an encoder and a decoder."""
    if hasattr(config, "components_for_stack_layer"):  # T5
        return {
            stack: [list(config.components_for_stack_layer(stack, i)) for i in range(config._stack_num_layers(stack))]
            for stack in ("encoder", "decoder")
        }
    try:
        n = config._synthesizer_num_layers()
        return {"encoder": [list(config.components_for_layer(i)) for i in range(n)]}
    except (AttributeError, NotImplementedError, TypeError):
        return {}


def checkpoint_info(path) -> dict:
    path = Path(path)
    family, config = load_config(path)
    head = default_head(family, config)
    model = empty_model(family, config, head)
    stock = family_of(path)[1].get("model_type") == family.name
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    return {
        "path": str(path),
        "family": family.name,
        "stock_checkpoint": stock,
        "head": head,
        "class": type(model).__name__,
        "variant": config.synthesizer_variant,
        "attn_implementation": config.synthesizer_attn_implementation,
        "synthesizer_length": config.synthesizer_length,
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "synthesizer_fields": {k: v for k, v in sorted(config.to_dict().items()) if k.startswith("synthesizer_")},
        "layers": layer_components(config),
        "parameters": parameter_counts(model),
        "weight_files": [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5"))],
        "code_files": [f for f in files if f.endswith(".py")],
        "auto_map": config.to_dict().get("auto_map") or {},
        "auto_map_complete": set(module_auto_map(type(model))) <= set(config.to_dict().get("auto_map") or {}),
    }


def format_info(info: dict) -> str:
    p = info["parameters"]
    lines = [f"{info['path']}: {info['family']} checkpoint, head {info['head']} ({info['class']})"]
    if info["stock_checkpoint"]:
        lines.append("  stock checkpoint: vanilla dot-product attention; convert it with "
                     "`hf-synthesizer convert PATH DST --attn_implementation synthesizer_<variant>`")
    lines.append(f"  variant: {info['variant']}  (attn_implementation {info['attn_implementation']})")
    lines.append(f"  synthesizer_length: {info['synthesizer_length']}  "
                 f"(max_position_embeddings: {info['max_position_embeddings']})")
    for name, value in info["synthesizer_fields"].items():
        if name not in ("synthesizer_variant", "synthesizer_length"):
            lines.append(f"  {name}: {value}")
    for stack, layers in info["layers"].items():
        prefix = f"{stack} " if len(info["layers"]) > 1 else ""
        for i, components in enumerate(layers):
            lines.append(f"  {prefix}layer {i}: {'+'.join(components)}")
    lines.append(f"  parameters: synthesizer {p['synthesizer']:,} trainable + {p['synthesizer_buffers']:,} frozen "
                 f"(buffers), rest {p['rest']:,}, total trainable {p['total']:,}")
    lines.append(f"  weights: {', '.join(info['weight_files']) or 'none'}")
    lines.append(f"  code (trust_remote_code): {', '.join(info['code_files']) or 'none'}"
                 + ("" if info["auto_map_complete"] or not info["code_files"] else "  [auto_map incomplete]"))
    return "\n".join(lines)


def run(args) -> int:
    try:
        info = checkpoint_info(args.path)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"hf-synthesizer info: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
