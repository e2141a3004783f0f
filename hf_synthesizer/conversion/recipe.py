"""The recommended recipe in one call: a stock BERT checkpoint and a labelled task file in, a synthesizer sequence
classifier out (`hf-synthesizer distill STOCK DST --train_file train.csv ...`, or `distill(...)` in Python with a
labelled `train_file`). The stages, each a `Trainer` run:

1. teacher: STOCK fine-tuned on the labelled training file (`num_train_epochs`; saved to DST/teacher), or the
   fine-tuned checkpoint given as `--teacher`;
2. calibration: the student's synthesizer initialised in closed form from STOCK's attention on the training texts
   (`hf_synthesizer.conversion.calibration`);
3. general distillation: `general_steps` steps of attention transfer from STOCK on the training texts (labels unused)
   and any `--unlabeled_file` text (`DistillationTrainer`);
4. task stage (TinyBERT's second stage, Jiao et al. 2020, arXiv 1909.10351): `num_train_epochs` epochs against the
   fine-tuned teacher: KL to its logits plus its per-layer attention and hidden states, on the same texts, no labels;

then the student's and the teacher's accuracy on the validation file. DST is a synthesizer classifier checkpoint
(`AutoModelForSequenceClassification.from_pretrained(DST)`) whose card and `distillation.json` say what was done and
measured. benchmarks/QUALITY.md measures this recipe (its "task-distilled" rows); docs/conversion.md documents it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import TrainingArguments

from .distillation import (DistillationResult, build_student, calibrate, check_request, distillation_trainer,
                           loss_table, read_texts, save_student, stage_facts, teacher_text, text_length)

BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {})}


def load_labelled(train_file, validation_file, text_column: str, label_column: str):
    """The labelled files as a `datasets.DatasetDict` ("train", and "validation" when given) and the sorted label
    values (a ClassLabel's names). Raises ValueError naming the flag to fix (format, missing column, no rows)."""
    import datasets

    files = {"train": str(train_file), **({"validation": str(validation_file)} if validation_file else {})}
    suffixes = {Path(f).suffix.lower() for f in files.values()}
    if len(suffixes) != 1 or not suffixes <= set(BUILDERS):
        raise ValueError(f"--train_file and --validation_file must both be .csv, .tsv, .json or .jsonl for the task "
                         f"recipe, got {sorted(files.values())}.")
    builder, options = BUILDERS[suffixes.pop()]
    raw = datasets.load_dataset(builder, data_files=files, **options)
    for split, data in raw.items():
        for flag, column in (("--text_column", text_column), ("--label_column", label_column)):
            if column not in data.column_names:
                raise ValueError(f"{files[split]} has no column {column!r} (columns: {data.column_names}); name it "
                                 f"with {flag}.")
        if len(data) == 0:
            raise ValueError(f"{files[split]} has no rows.")
    feature = raw["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return raw, list(feature.names)
    if feature.dtype in ("float32", "float64"):
        raise ValueError(f"Labels in {label_column!r} are floats: the task recipe distills classifiers (integer or "
                         f"string labels).")
    return raw, sorted({x for data in raw.values() for x in data[label_column] if x is not None})


def label_fields(labels: list, teacher_dir=None) -> dict:
    """num_labels / id2label / label2id for `labels`; a given teacher's own order when its label2id names them all
    (raises ValueError when its number of labels differs)."""
    names = [str(x) for x in labels]
    if teacher_dir is not None:
        from .checkpoints import read_config_dict

        teacher = read_config_dict(teacher_dir)
        label2id = teacher.get("label2id") or {}
        count = len(teacher.get("id2label") or {}) or teacher.get("num_labels")
        if count != len(names):
            raise ValueError(f"--teacher {teacher_dir} classifies {count} labels, the data has {len(names)} "
                             f"({', '.join(names)}): pass the teacher fine-tuned on this task.")
        if set(label2id) == set(names):
            names = sorted(names, key=lambda n: int(label2id[n]))
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def encode(data, tokenizer, text_column, label_column, label2id, max_length):
    """Tokenized `data` with `labels` ids (`label2id` keyed by the label's string)."""
    def tokenize(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded["labels"] = [label2id[str(x)] for x in batch[label_column]]
        return encoded

    return data.map(tokenize, batched=True, remove_columns=data.column_names)


def stage_args(training_args: TrainingArguments, dst: Path, stage: str, **fields) -> TrainingArguments:
    """The user's `TrainingArguments` for one stage: its own output folder DST/stages/<stage>, no evaluation during
    training (the recipe evaluates at the end), `fields` on top."""
    return dataclasses.replace(training_args, output_dir=str(dst / "stages" / stage), eval_strategy="no",
                               load_best_model_at_end=False, **fields)


def fine_tune_teacher(stock: Path, train, tokenizer, fields: dict, training_args, dst: Path) -> tuple[Path, dict]:
    """Stage 1: STOCK (its own class and attention) fine-tuned on `train` (tokenized, with labels) with `Trainer`,
    saved with the tokenizer to DST/teacher. Returns the folder and what was done."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

    from .loading import quiet_logs

    with quiet_logs():  # the new classification head is "missing" by design
        model = AutoModelForSequenceClassification.from_pretrained(stock, **fields)
    model.accepts_loss_kwargs = False  # per-batch mean loss (see examples/run_classification.py)
    args = stage_args(training_args, dst, "teacher", max_steps=-1)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    output = trainer.train()
    folder = dst / "teacher"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, {"epochs": args.num_train_epochs, "steps": trainer.state.global_step,
                    "learning_rate": args.learning_rate, "train_runtime_s": output.metrics.get("train_runtime")}


def validation_metrics(model, data, tokenizer, training_args, dst: Path, metric) -> dict:
    """`metric` (a `hf_synthesizer.conversion.metrics.Metric`) and the loss of `model` on `data` (with labels)."""
    from transformers import DataCollatorWithPadding, Trainer

    def compute(prediction):
        return metric.compute(predictions=prediction.predictions.argmax(-1), references=prediction.label_ids)

    trainer = Trainer(model=model, args=stage_args(training_args, dst, "evaluation"), compute_metrics=compute,
                      data_collator=DataCollatorWithPadding(tokenizer))
    found = trainer.evaluate(data, metric_key_prefix="validation")
    return {k.removeprefix("validation_"): v for k, v in found.items()
            if k.removeprefix("validation_") in (metric.name, "loss")}


def task_card_section(facts: dict) -> str:
    """The card's "Distillation" section for the task recipe: the stages, their losses, the validation results."""
    tuned = facts["teacher_fine_tuning"]
    general, task = facts["general"], facts["task"]
    teacher = (f"the stock model fine-tuned here on the training file ({tuned['epochs']:g} epochs, {tuned['steps']} "
               f"steps, learning rate {tuned['learning_rate']:g})" if tuned else f"`{facts['teacher']}` (given)")
    lines = [
        "## Distillation",
        "",
        f"Made by `hf-synthesizer distill`'s task recipe (`hf_synthesizer.conversion.recipe`) from the stock model "
        f"{teacher_text({'teacher': facts['stock'], 'teacher_config_name': facts['stock_config_name']})}, for the "
        f"{len(facts['labels'])} labels of `{facts['train_file']}` ({facts['train_texts']:,} labelled texts"
        + (f" and {facts['unlabeled_texts']:,} unlabeled ones" if facts["unlabeled_texts"] else "")
        + f", truncated to {facts['max_seq_length']} tokens):",
        "",
        f"1. teacher: {teacher};",
        f"2. calibration: " + (f"closed form on {facts['calibration_texts']:,} texts;" if facts["calibrated"] else
                               "skipped;"),
        f"3. general distillation from the stock model: {general['steps']:,} steps of {general['texts_per_step']:g} "
        f"texts on average, learning rate {general['learning_rate']:g} ({general['attention_learning_rate']:g} for "
        f"the synthesizer parameters), attention KL + hidden-state {facts['hidden_loss']} loss;",
        f"4. task stage against the fine-tuned teacher: {task['steps']:,} steps ({task['epochs']:.2f} epochs) of "
        f"{task['texts_per_step']:g} texts, KL to its logits (temperature 1) + the same per-layer losses, no labels.",
        "",
        "The teachers were frozen; the student's dropout was off while distilling.",
        "",
        "Losses of the general stage:",
        "",
        *loss_table(general["losses"]),
        "",
        "Losses of the task stage:",
        "",
        *loss_table(task["losses"]),
    ]
    validation = facts.get("validation")
    if validation:
        name = validation["metric"]
        lines += ["", f"On `{validation['file']}` ({validation['examples']:,} examples; {name}: "
                      f"{validation['metric_source']}):", "", f"| model | {name} | loss |", "|---|---|---|"]
        for who in ("student", "teacher"):
            row = validation[who]
            lines.append(f"| {who} | {row[name]:.4f} | {row['loss']:.4f} |")
    return "\n".join(lines)


def _plan(stock, dst, attn_implementation, args, labels, texts, general_steps, epochs, batch, max_length) -> str:
    teacher = (f"{args.teacher} (given)" if args.teacher else
               f"fine-tune {stock} on {args.train_file}, {epochs:g} epochs (saved to {dst / 'teacher'})")
    calibration = (f"closed form on {min(len(texts), args.calibration_samples)} texts" if args.calibrate_first
                   else "skipped (--no_calibrate_first)")
    return (f"Distilling {stock} into {dst} ({attn_implementation} sequence classifier, {len(labels)} labels: "
            f"{', '.join(map(str, labels[:10]))}{' ...' if len(labels) > 10 else ''}), 4 stages:\n"
            f"  1. teacher: {teacher}\n  2. calibration: {calibration}\n"
            f"  3. general distillation: {general_steps} steps of {batch} texts (of {len(texts)}, length <= "
            f"{max_length}) against {stock}\n"
            f"  4. task stage: {epochs:g} epochs against the fine-tuned teacher (logits, attention, hidden states)\n"
            + (f"  then the student's and the teacher's accuracy on {args.validation_file}" if args.validation_file
               else "  (no --validation_file: no validation metrics)"))


def distill_for_task(stock, training_args: TrainingArguments, args, attn_implementation: str | None, *,
                     verbose: bool = True, **synthesizer_options) -> DistillationResult:
    """Run the recipe (module docstring) from the stock checkpoint folder `stock` on `args.train_file` (labelled:
    `args.text_column`, `args.label_column`) and save the student classifier to `training_args.output_dir`.

    args: `DistillationArguments`; `synthesizer_options`: config fields of the student (synthesizer_length ...).
    `verbose`: print the stages up front, each stage as it starts, the calibration summary when it is done and the
    validation results. Returns a `DistillationResult` (the task stage's trainer). Raises ValueError /
    `CheckpointError` naming the fix (a T5 source, resuming, a teacher with other labels, bad files)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .calibration import load_teacher
    from .checkpoints import family_of
    from .loading import quiet_logs
    from .metrics import load_metric

    say = print if verbose else (lambda *a, **k: None)
    stock, dst = Path(stock), Path(training_args.output_dir)
    check_request(stock, attn_implementation, training_args, args)
    family, config_dict = family_of(stock)
    if family.name != "bert":
        raise ValueError(f"The task recipe distills BERT classifiers; {stock} is a {family.name} checkpoint. Distill "
                         f"a T5 encoder on a text file (one text per line) instead, then fine-tune it.")
    if training_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint resumes general distillation of a text file; the task recipe "
                         "runs several stages: rerun it (--overwrite), or pass --teacher to skip the fine-tuning.")
    raw, labels = load_labelled(args.train_file, args.validation_file, args.text_column, args.label_column)
    fields = label_fields(labels, args.teacher)
    texts = [str(t) for t in raw["train"][args.text_column]][: args.max_train_samples]
    extra = read_texts(args.unlabeled_file) if args.unlabeled_file else []
    tokenizer = AutoTokenizer.from_pretrained(stock)
    model, stock_teacher, _ = build_student(stock, attn_implementation, "sequence-classification", training_args.seed,
                                            **synthesizer_options, **fields)
    max_length = text_length(model.config, args.max_seq_length)
    epochs, batch = training_args.num_train_epochs, training_args.per_device_train_batch_size
    say(_plan(stock, dst, attn_implementation, args, labels, texts + extra, args.general_steps, epochs, batch,
              max_length), flush=True)
    encoded = {split: encode(data.select(range(min(len(data), args.max_train_samples or len(data))))
                             if split == "train" else data, tokenizer, args.text_column, args.label_column,
                             fields["label2id"], max_length) for split, data in raw.items()}
    tuned = None
    if args.teacher:
        teacher_dir = Path(args.teacher)
    else:
        say(f"Stage 1/4: fine-tuning the teacher ({epochs:g} epochs)", flush=True)
        teacher_dir, tuned = fine_tune_teacher(stock, encoded["train"], tokenizer, fields, training_args, dst)
    say("Stage 2/4: calibration", flush=True)
    calibration = calibrate(model, stock_teacher, texts + extra, tokenizer, max_length, args, say)
    say(f"Stage 3/4: general distillation ({args.general_steps} steps)", flush=True)
    general = distillation_trainer(model, stock_teacher, stage_args(training_args, dst, "general",
                                                                    max_steps=args.general_steps),
                                   texts + extra, tokenizer, max_length, args)
    general_facts = stage_facts(general, general.train())
    say(f"Stage 4/4: task stage ({epochs:g} epochs against {teacher_dir})", flush=True)
    with quiet_logs():
        task_teacher = load_teacher(teacher_dir, like=model)
    task = distillation_trainer(model, task_teacher, stage_args(training_args, dst, "task", max_steps=-1),
                                texts + extra, tokenizer, max_length, args, prediction_loss_weight=1.0)
    task_facts = stage_facts(task, task.train())
    facts = {
        "recipe": "task", "stock": str(stock), "stock_config_name": config_dict.get("_name_or_path"),
        "teacher": str(args.teacher) if args.teacher else str(teacher_dir), "teacher_fine_tuning": tuned,
        "base_model": args.base_model, "variant": model.config.synthesizer_variant, "head": "sequence-classification",
        "labels": [str(x) for x in labels], "train_file": str(args.train_file), "train_texts": len(texts),
        "unlabeled_texts": len(extra), "max_seq_length": max_length, "calibrated": calibration is not None,
        "calibration_texts": min(len(texts + extra), args.calibration_samples) if calibration is not None else 0,
        "attention_loss_weight": args.attention_loss_weight, "hidden_loss": args.hidden_loss,
        "hidden_loss_weight": args.hidden_loss_weight, "general": general_facts, "task": task_facts,
    }
    if "validation" in encoded:
        metric = load_metric("accuracy")
        with quiet_logs():
            teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
        facts["validation"] = {
            "file": str(args.validation_file), "examples": len(encoded["validation"]), "metric": metric.name,
            "metric_source": metric.source,
            **{who: validation_metrics(m, encoded["validation"], tokenizer, training_args, dst, metric)
               for who, m in (("student", model), ("teacher", teacher_model))},
        }
    if task.is_world_process_zero():
        save_student(model, tokenizer, stock, dst, facts, task_card_section(facts), task, sentence_transformers=False)
    say(_summary(facts, dst))
    return DistillationResult(model, task, facts, calibration)


def _summary(facts: dict, dst: Path) -> str:
    general, task = facts["general"]["losses"], facts["task"]["losses"]
    lines = [f"Distilled {facts['stock']} into {dst} (variant {facts['variant']}, sequence classifier): general stage "
             f"loss {general['first']['total']:.4f} -> {general['last']['total']:.4f}, task stage "
             f"{task['first']['total']:.4f} -> {task['last']['total']:.4f} (first -> last training batch)."]
    validation = facts.get("validation")
    if validation:
        name = validation["metric"]
        lines.append(f"Validation {name} on {validation['file']} ({validation['examples']} examples, "
                     f"{validation['metric_source']}): student {validation['student'][name]:.4f}, teacher "
                     f"{validation['teacher'][name]:.4f}.")
    lines.append(f"Load it with AutoModelForSequenceClassification.from_pretrained({str(dst)!r}) after "
                 f"`import hf_synthesizer` (or with trust_remote_code=True).")
    return "\n".join(lines)
