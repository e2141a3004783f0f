"""The `hf-synthesizer` console command. Each subcommand lives in its own module, which exposes
`add_parser(subparsers)` registering its parser with `set_defaults(func=run)`; `run(args)` returns an exit code."""

import argparse
import importlib

# Modules of hf_synthesizer that provide a subcommand.
SUBCOMMAND_MODULES = ["compare"]


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


if __name__ == "__main__":
    raise SystemExit(main())
