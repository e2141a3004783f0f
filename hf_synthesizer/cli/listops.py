"""ListOps-style data, generated deterministically (Nangia & Bowman 2018; the Long Range Arena task, arXiv 2011.04006).

An example is a nested prefix expression over digits and its value, a digit 0-9:

    [MAX 2 9 [MIN 4 7 ] 0 ]   -> 9
    [SM 3 [MED 1 8 5 ] 6 ]    -> 4      (SM = sum modulo 10, MED = median: sorted(args)[len(args) // 2])

The label depends on every token and on the bracket structure, so a model must route information across the
whole sequence: a task where attention matters. LRA uses depth 10 and up to 2,000 tokens; the defaults here are
small enough to fine-tune in minutes on a CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPERATORS = {
    "MAX": max,
    "MIN": min,
    "MED": lambda args: sorted(args)[len(args) // 2],
    "SM": lambda args: sum(args) % 10,
}

# Words a WordPiece tokenizer sees ("[MAX" splits into "[" + "max"): the whole vocabulary of the task.
TASK_WORDS = ["[", "]", "max", "min", "med", "sm"] + [str(d) for d in range(10)]


@dataclass(frozen=True)
class ListOpsSpec:
    """Shape of the generated expressions. `max_words` counts words as a WordPiece tokenizer splits them
    ("[MAX" is two: "[" and "max"), i.e. tokens without [CLS]/[SEP]. `operators`: a subset of `OPERATORS`."""

    max_depth: int = 3
    max_args: int = 4
    max_words: int = 62
    min_words: int = 8
    operators: tuple[str, ...] = tuple(OPERATORS)

    def __post_init__(self):
        unknown = sorted(set(self.operators) - set(OPERATORS))
        if unknown or not self.operators:
            raise ValueError(f"ListOps operators must be a non-empty subset of {list(OPERATORS)}, got "
                             f"{list(self.operators)}.")


def _expression(rng: random.Random, depth: int, spec: ListOpsSpec) -> list:
    """A random tree: an operator with 2..max_args arguments, each a digit or (while depth allows) a subtree."""
    op = rng.choice(spec.operators)
    args = []
    for _ in range(rng.randint(2, spec.max_args)):
        if depth < spec.max_depth and rng.random() < 0.35:
            args.append(_expression(rng, depth + 1, spec))
        else:
            args.append(rng.randint(0, 9))
    return [op, args]


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree
    return OPERATORS[op]([evaluate(a) for a in args])


def to_text(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    op, args = tree
    return f"[{op} " + " ".join(to_text(a) for a in args) + " ]"


def num_words(text: str) -> int:
    """Tokens of `text` under a WordPiece tokenizer: every "[OP" is two, digits and "]" one."""
    return sum(2 if w.startswith("[") else 1 for w in text.split())


def generate(n: int, seed: int, spec: ListOpsSpec = ListOpsSpec()) -> list[dict]:
    """`n` examples `{"text": ..., "label": int}`; the same seed gives the same examples."""
    rng = random.Random(seed)
    examples = []
    while len(examples) < n:
        tree = _expression(rng, 1, spec)
        text = to_text(tree)
        if spec.min_words <= num_words(text) <= spec.max_words:
            examples.append({"text": text, "label": evaluate(tree)})
    return examples


def write_vocab(path) -> None:
    """A WordPiece vocab.txt covering the task (BERT special tokens first), for a built-in from-scratch model."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with open(path, "w") as f:
        f.write("\n".join(special + TASK_WORDS) + "\n")
