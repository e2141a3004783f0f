"""PNG heatmaps of the synthesized attention, per layer and head, like the figures of Tay et al. (2021).

- Input-independent layers (random, fixed random, factorized random and mixtures of them): the exact map
  `softmax(R_h[:n, :n])` (resp. `softmax(R1 R2^T)`), the same for every input.
- Input-dependent layers (dense, factorized dense, any mixture with vanilla): the attention probabilities
  averaged over a few inputs (given texts, or random token ids of length n): row i is the mean of the
  attention distributions of query i over the inputs in which position i is a real token (padded keys get
  probability 0), so every row still sums to 1.
- `mixture_weights.png`: the mixture weights `alpha` per layer (rows) and head (columns), one panel per component.

`write_attention_maps(model, out_dir, ...)` writes `layer_XX.png` (one grid of heads per synthesizer layer)
and, for mixtures, `mixture_weights.png`. CLI: `hf-synthesizer attention-maps MODEL_DIR --output DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from transformers.utils import logging

from ..modeling.synthesizer_attention import SynthesizerLogits

logger = logging.get_logger(__name__)

INPUT_INDEPENDENT = {"random", "fixed_random", "factorized_random"}
# Every probability within this fraction of uniform attention (1 / number of keys): the map draws as one colour.
NEAR_UNIFORM = 0.25
NEAR_UNIFORM_NOTE = (
    "near-uniform attention (every weight within 25% of 1/n), hence one flat colour: the synthesizer is still at its "
    "initialisation, which starts close to uniform on purpose. Calibrate it (hf-synthesizer convert ... "
    "--calibrate_on texts.txt) or fine-tune it to see a pattern."
)


def _synthesizer_layers(model: nn.Module) -> list[tuple[str, SynthesizerLogits]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SynthesizerLogits) and not m.is_vanilla]


@torch.no_grad()
def synthesized_attention(model: nn.Module, length: int | None = None, input_ids=None, attention_mask=None,
                          num_inputs: int = 8, seed: int = 0) -> dict[str, tuple[torch.Tensor, str]]:
    """Per synthesizer module name: `(maps (H, n, n), how)` where `how` says whether the map is exact
    ("softmax(R)") or averaged over inputs."""
    layers = _synthesizer_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no synthesizer layers (variant vanilla?): nothing to draw.")
    n = min(length or 64, min(m.length for _, m in layers))
    maps = {}
    dynamic = [(name, m) for name, m in layers if not set(m.components) <= INPUT_INDEPENDENT]
    for name, module in layers:
        if set(module.components) <= INPUT_INDEPENDENT:
            logits = module(None, None, None, None, 0, n, n)
            maps[name] = (torch.softmax(logits[0].float(), -1).cpu(), "softmax(R), input-independent")
    if not dynamic:
        return maps
    if input_ids is None:
        generator = torch.Generator().manual_seed(seed)
        vocab = model.config.vocab_size
        input_ids = torch.randint(min(1000, vocab // 2), vocab, (num_inputs, n), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        source = f"mean over {num_inputs} random-token inputs"
    else:
        input_ids = input_ids[:, :n]
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, :n]
        source = f"mean over {input_ids.shape[0]} inputs"
    l = input_ids.shape[1]
    real = attention_mask.bool()
    rows = real.float()[:, None, :, None]  # (B, 1, l, 1): query i is a real token
    sums, captured = {}, {}
    hooks = []
    for name, module in dynamic:
        def hook(mod, args, output, name=name):
            captured[name] = output[1]  # the attention call's (output, probabilities), output_attentions=True
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, module in dynamic:
        probs = captured[name].float().cpu()  # (B, H, l, l), padding and causal masks applied (eval: no dropout)
        sums[name] = (probs * rows).sum(0) / rows.sum(0).clamp_min(1)
        maps[name] = (sums[name], source)
    return {name: maps[name] for name, _ in layers}


def is_near_uniform(probs: torch.Tensor) -> bool:
    """True when every row of `probs` (H, n, n) is within `NEAR_UNIFORM` of uniform over its keys."""
    keys = (probs > 0).sum(-1, keepdim=True).clamp_min(1)
    return bool(((probs * keys - 1).abs() * (probs > 0)).max() < NEAR_UNIFORM)


def mixture_weight_table(model: nn.Module) -> tuple[list[str], tuple[str, ...], torch.Tensor] | None:
    """`(layer names, components, weights (layers, n, H))` of the mixtures in `model`, or None."""
    rows, components = [], None
    names = []
    for name, module in _synthesizer_layers(model):
        if len(module.components) < 2:
            continue
        weights = module.mixture_weights().detach().float().cpu()  # (n, H or 1)
        rows.append(weights.expand(len(module.components), module.num_heads))
        components = components or module.components
        names.append(name)
    if not rows:
        return None
    return names, components, torch.stack(rows)


def _short(name: str) -> str:
    return name.replace(".attention.self.synthesizer", "").replace(".synthesizer", "").replace("encoder.", "")


def write_attention_maps(model: nn.Module, out_dir, *, tokenizer=None, texts=None, length: int | None = None,
                         num_inputs: int = 8, seed: int = 0, dpi: int = 90, cmap: str = "viridis") -> list[Path]:
    """Write `layer_XX.png` per synthesizer layer (a grid of heads) and `mixture_weights.png` for mixtures.
    Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    out_dir = Path(out_dir)
    input_ids = attention_mask = None
    if texts:
        if tokenizer is None:
            raise ValueError("Averaging attention over texts needs the model's tokenizer.")
        enc = tokenizer(list(texts)[:num_inputs], padding=True, truncation=True,
                        max_length=length or 64, return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    maps = synthesized_attention(model, length, input_ids, attention_mask, num_inputs, seed)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to draw
    variant = getattr(model.config, "synthesizer_variant", "")
    written, flat_files = [], []
    for index, (name, (probs, how)) in enumerate(maps.items()):
        heads = probs.shape[0]
        cols = min(heads, 4)
        rows = -(-heads // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols + 0.8, 2.4 * rows + 0.6), squeeze=False,
                                 layout="constrained")
        vmax = float(probs.max())
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= heads:
                ax.axis("off")
                continue
            image = ax.imshow(probs[h].numpy(), cmap=cmap, norm=PowerNorm(0.5, vmin=0.0, vmax=vmax),
                              interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=9)
            ax.tick_params(labelsize=7)
            if h % cols == 0:
                ax.set_ylabel("query", fontsize=8)
            if h // cols == rows - 1:
                ax.set_xlabel("key", fontsize=8)
        flat = is_near_uniform(probs)
        title = f"{_short(name)} — {variant}: {how}"
        if flat:
            title += "\nnear-uniform (still at its initialisation: calibrate or fine-tune to see a pattern)"
        fig.suptitle(title, fontsize=10)
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention probability (square-root scale)")
        path = out_dir / f"layer_{index:02d}.png"
        if flat:
            flat_files.append(path.name)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    if flat_files:
        logger.warning(f"{', '.join(flat_files)}: {NEAR_UNIFORM_NOTE}")
    table = mixture_weight_table(model)
    if table is not None:
        names, components, weights = table
        fig, axes = plt.subplots(1, len(components), figsize=(3.2 * len(components) + 1.2, 0.45 * len(names) + 1.8),
                                 squeeze=False, layout="constrained")
        for c, component in enumerate(components):
            ax = axes[0][c]
            image = ax.imshow(weights[:, c].numpy(), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"alpha[{component}]", fontsize=9)
            ax.set_xlabel("head", fontsize=8)
            ax.set_xticks(range(weights.shape[-1]))
            ax.set_yticks(range(len(names)), [_short(n) for n in names] if c == 0 else [""] * len(names), fontsize=7)
            ax.tick_params(labelsize=7)
            if weights.shape[-1] * len(names) <= 96:
                for (row, head), value in zip(torch.cartesian_prod(torch.arange(len(names)),
                                                                   torch.arange(weights.shape[-1])).tolist(),
                                              weights[:, c].flatten().tolist()):
                    ax.text(head, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 0.6 else "black")
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mixture weight")
        fig.suptitle(f"mixture weights — {variant}", fontsize=10)
        path = out_dir / "mixture_weights.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention-maps",
        help="write PNG heatmaps of the synthesized attention per layer and head",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a saved synthesizer checkpoint (folder)")
    parser.add_argument("--output", "-o", required=True, help="folder the PNG files are written to")
    parser.add_argument("--texts", help="text file (one input per line) to average input-dependent maps over; "
                        "default: random token ids")
    parser.add_argument("--length", type=int, default=64, help="positions drawn (default 64, at most L)")
    parser.add_argument("--num-inputs", type=int, default=8, help="inputs averaged for input-dependent layers")
    parser.add_argument("--verbose", action="store_true", help="show transformers' load report and progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys

    from transformers import AutoTokenizer

    from .checkpoints import CheckpointError, default_head, load_config
    from .loading import quiet_logs

    try:
        family, config = load_config(args.model)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"hf-synthesizer attention-maps: error: {e}", file=sys.stderr)
        return 2
    if config.synthesizer_variant == "vanilla":
        print(f"hf-synthesizer attention-maps: error: {args.model} is a stock {family.name} checkpoint (dot-product "
              f"attention): it has no synthesized attention to draw. Convert it first, e.g. `hf-synthesizer convert "
              f"{args.model} DST --attn_implementation synthesizer_random --calibrate_on texts.txt`, and draw DST.",
              file=sys.stderr)
        return 2
    with quiet_logs(args.verbose):  # loaded as the head it was saved with: no weight is missing or left over
        model = family.heads[default_head(family, config)].from_pretrained(args.model)
    tokenizer = texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    paths = write_attention_maps(model, args.output, tokenizer=tokenizer, texts=texts, length=args.length,
                                 num_inputs=args.num_inputs)
    for path in paths:
        print(path)
    return 0
