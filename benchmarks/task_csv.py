"""Write one of benchmarks/quality.py's tasks as CSV files for the one-command recipe (`hf-synthesizer distill`) and
examples/run_classification.py: DIR/train.csv, DIR/dev.csv and, with --split test, DIR/test.csv (columns text,
label; label is the class name), plus DIR/unlabeled.txt (the task's other text of the same source, one per line).

    python benchmarks/task_csv.py fortune-topics /tmp/fortune --split test
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path


def load_quality():
    """benchmarks/quality.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("quality_benchmark", Path(__file__).with_name("quality.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def write_csv(path: Path, pairs: list[tuple[str, int]], labels: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, labels[y]) for text, y in pairs)


def main(argv=None) -> dict[str, Path]:
    quality = load_quality()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=list(quality.TASKS))
    parser.add_argument("output", type=Path)
    parser.add_argument("--train_size", type=int, help="default: the task's (quality.SIZES)")
    parser.add_argument("--dev_size", type=int, help="default: the task's (quality.SIZES)")
    parser.add_argument("--split", choices=["dev", "test"], default="dev", help="test: also write test.csv")
    args = parser.parse_args(argv)
    task = quality.make_task(args.task, args)
    args.output.mkdir(parents=True, exist_ok=True)
    written = {"train": args.output / "train.csv", "dev": args.output / "dev.csv"}
    if args.split == "test":
        written["test"] = args.output / "test.csv"
    for split, path in written.items():
        write_csv(path, getattr(task, split), task.labels)
    written["unlabeled"] = args.output / "unlabeled.txt"
    written["unlabeled"].write_text("".join(text.replace("\n", " ") + "\n" for text in task.unlabeled),
                                    encoding="utf-8")
    return written


if __name__ == "__main__":
    for name, path in main().items():
        print(f"{name}: {path}")
