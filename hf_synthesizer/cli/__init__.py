"""The `hf-synthesizer` console command (also `python -m hf_synthesizer`). Each subcommand lives in its own module,
which exposes `add_parser(subparsers)` registering its parser with `set_defaults(func=run)`; `run(args)` returns an
exit code. This folder holds the subcommands that are only a command (compare, info, card) and the ListOps demo task
that `compare` trains on; `convert`, `distill` and `attention-maps` sit next to their code in `conversion/`."""

import argparse
import importlib

# Modules of hf_synthesizer that provide a subcommand (in the order of `--help`): the conversion tools have theirs next
# to their code; those that are only a command live here, with the ListOps demo that `compare` trains on.
SUBCOMMAND_MODULES = ["cli.compare", "conversion.convert", "cli.info", "cli.card", "conversion.attention_maps",
                      "conversion.distillation"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-synthesizer", description="Synthesizer attention for transformers BERT and T5."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"hf_synthesizer.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0
