#!/usr/bin/env python
"""Fine-tune a BERT synthesizer (or a stock BERT converted on the fly) for text classification with `Trainer`.

Single sentences or sentence pairs; data from the Hub (GLUE-style, when online) or local CSV/JSON files.

    # convert a stock BERT to the random synthesizer and fine-tune on local files
    python examples/run_classification.py \
        --model_name_or_path path/to/bert --attn_implementation synthesizer_random --synthesizer_length 128 \
        --train_file train.csv --validation_file dev.csv --text_columns sentence1 sentence2 \
        --output_dir out/random

    # GLUE (needs network): python examples/run_classification.py --dataset_name nyu-mll/glue --dataset_config mrpc ...
    # 2 CPU processes (gloo DDP through torchrun): the script's --use_cpu true with accelerate's --multi_gpu launcher
    accelerate launch --multi_gpu --num_processes 2 examples/run_classification.py --use_cpu true ...
    # (`accelerate launch --num_processes 2 --cpu` starts 2 processes only through mpirun; without it, ONE process.)
    # Each process logs "Running process i of N" at start: check N.

    # evaluate a saved model on a held-out test file (metrics prefixed test_, predictions written)
    python examples/run_classification.py --model_name_or_path out/random --do_predict --test_file test.csv \
        --output_dir out/random-test

`--do_train`, `--do_eval` (on --validation_file) and `--do_predict` (on --test_file) choose the passes; with none of
them, every pass the given files allow runs. Writes `train_results.json`, `eval_results.json`, `test_results.json`
(with labels in the test file) and `test_predictions.csv`, `all_results.json` and the model (safetensors) with its
tokenizer into `--output_dir`. Metrics (`--metrics`, default accuracy and macro F1; MSE and Pearson r for regression)
are loaded with `evaluate.load(name_or_path)` where that works (online, or a local metric script or folder), else
computed locally (scikit-learn, scipy); the log says which ran. A synthesizer checkpoint saved here reloads as the
same variant with no `--attn_implementation`.
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
import datasets
import numpy as np
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

from hf_synthesizer.conversion.loading import (
    SynthesizerArguments,
    describe_attention,
    load_synthesizer_model,
    set_model_max_length,
)
from hf_synthesizer.conversion.metrics import load_metric
# push_to_hub uploads the synthesizer model card
from hf_synthesizer.conversion.trainer import SynthesizerTrainer

logger = logging.getLogger(__name__)

# Text columns of the GLUE tasks, used when --text_columns is not given.
GLUE_TEXT_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
GUESSED_TEXT_COLUMNS = [("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                        ("sentence",), ("text",)]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "A stock BERT checkpoint (converted when --attn_implementation synthesizer_... is given) "
                  "or a saved synthesizer checkpoint: a local folder or, online, a Hub id."}
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer, if not the model's."})


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset, e.g. nyu-mll/glue (online)."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Its configuration, e.g. mrpc."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Training data, .csv or .json/.jsonl."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Evaluation data, .csv or .json/.jsonl."})
    test_file: Optional[str] = field(default=None, metadata={"help": (
        "Test data (--do_predict), .csv or .json/.jsonl: predictions written; metrics (test_*) when it has labels.")})
    metrics: Optional[list[str]] = field(default=None, metadata={"help": (
        "Metric names or paths of evaluate metric modules (evaluate.load), e.g. accuracy f1 or ./my_metric.py. "
        "Default: accuracy f1 (macro), or mse pearsonr for regression. A name evaluate cannot load (offline) is "
        "computed locally when it is one of accuracy, f1, mse, pearsonr.")})
    text_columns: Optional[list[str]] = field(
        default=None,
        metadata={"help": "One column (single sentences) or two (sentence pairs). Default: the GLUE task's, or the "
                  "first of sentence1+sentence2, premise+hypothesis, question+sentence, sentence, text present."},
    )
    label_column: str = field(default="label", metadata={"help": "Label column: integers or strings classify, "
                                                                 "floats regress."})
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Truncate inputs to this many tokens (also capped by the model's synthesizer_length)."},
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many evaluation rows."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many test rows."})


def load_raw_datasets(data_args: DataArguments) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        return datasets.load_dataset(data_args.dataset_name, data_args.dataset_config)
    files = {split: path for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file),
                                             ("test", data_args.test_file)) if path}
    if not files:
        raise ValueError("Give --dataset_name (online) or --train_file/--validation_file/--test_file (CSV or JSON).")
    extensions = {os.path.splitext(f)[1].lstrip(".") for f in files.values()}
    if len(extensions) != 1:
        raise ValueError(f"--train_file, --validation_file and --test_file must have the same format, got "
                         f"{sorted(extensions)}.")
    extension = extensions.pop()
    builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(extension)
    if builder is None:
        raise ValueError(f"Unsupported data file extension .{extension}: use .csv, .tsv, .json or .jsonl.")
    kwargs = {"delimiter": "\t"} if extension == "tsv" else {}
    return datasets.load_dataset(builder, data_files=files, **kwargs)


def choose_text_columns(data_args: DataArguments, columns: list[str]) -> tuple[str, ...]:
    if data_args.text_columns:
        chosen = tuple(data_args.text_columns)
        if len(chosen) not in (1, 2):
            raise ValueError(f"--text_columns takes one column or a pair, got {list(chosen)}.")
    elif data_args.dataset_config in GLUE_TEXT_COLUMNS:
        chosen = GLUE_TEXT_COLUMNS[data_args.dataset_config]
    else:
        chosen = next((c for c in GUESSED_TEXT_COLUMNS if all(name in columns for name in c)), None)
        if chosen is None:
            raise ValueError(f"Cannot guess the text columns among {columns}: pass --text_columns.")
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise ValueError(f"Text column(s) {missing} not in the data (columns: {columns}).")
    return chosen


# evaluate's argument of each default metric, and the result names this script has always written.
METRIC_ARGUMENTS = {"f1": {"average": "macro"}}
RESULT_NAMES = {"f1": "macro_f1", "pearsonr": "pearson"}


def load_metrics(names: Optional[list[str]], is_regression: bool) -> list:
    """The metrics to compute (`hf_synthesizer.conversion.metrics.load_metric`: evaluate's module where it loads,
    else the local computation; each logs which ran)."""
    return [load_metric(name) for name in names or (["mse", "pearsonr"] if is_regression else ["accuracy", "f1"])]


def classification_metrics(eval_pred, is_regression: bool, metrics: Optional[list] = None) -> dict:
    """`compute_metrics`: each metric of `metrics` (default: accuracy and macro F1, or MSE and Pearson r for
    regression) on the argmax (classification) or the single output (regression). Macro F1 averages over the classes
    present in the labels or the predictions; a class never predicted correctly scores 0."""
    predictions, labels = eval_pred
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    predictions = np.squeeze(predictions, axis=-1) if is_regression else np.argmax(predictions, axis=-1)
    results = {}
    for metric in metrics if metrics is not None else load_metrics(None, is_regression):
        if metric.name == "pearsonr" and len(labels) < 2:
            results["pearson"] = float("nan")
            continue
        found = metric.compute(predictions=predictions, references=labels, **METRIC_ARGUMENTS.get(metric.name, {}))
        results.update({RESULT_NAMES.get(k, k): float(v) for k, v in found.items()})
    return results


PASSES = (("--do_train", "--train_file", ("train",)),
          ("--do_eval", "--validation_file", ("validation", "validation_matched")),
          ("--do_predict", "--test_file", ("test", "test_matched")))


def choose_splits(training_args, raw) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """The train, evaluation and test split names to run (None: that pass does not run): those of the --do_* flags
    given, each refused when the data lacks its split; with no --do_* flag, every pass whose split the data has."""
    wanted = (training_args.do_train, training_args.do_eval, training_args.do_predict)
    found = [next((s for s in names if s in raw), None) for _, _, names in PASSES]
    if not any(wanted):
        return tuple(found)
    for want, split, (flag, file_flag, _) in zip(wanted, found, PASSES):
        if want and split is None:
            raise ValueError(f"{flag} was given but the data has no split for it: pass {file_flag}.")
    return tuple(split if want else None for want, split in zip(wanted, found))


def label_setup(raw, label_column: str, saved_config: dict, keep_saved_labels: bool):
    """(is_regression, label values in id order or None, config fields for the head). A model that is not trained
    here (`keep_saved_labels`) keeps its own labels (its saved id2label, when it names every label of the data), so
    its ids are read the way it was trained; a test file without labels is then predicted in them."""
    labelled = [split for split in raw.values() if label_column in split.column_names]
    saved_names = list((saved_config.get("id2label") or {}).values())
    if not labelled:  # predictions only: the model's own labels
        regression = saved_config.get("problem_type") == "regression"
        return regression, None if regression else saved_names, {}
    feature = labelled[0].features[label_column]
    if feature.dtype in ("float32", "float64"):
        return True, None, {"num_labels": 1, "problem_type": "regression"}
    if isinstance(feature, datasets.ClassLabel):
        label_list = feature.names
    else:
        label_list = sorted({x for split in labelled for x in split[label_column] if x is not None and x != -1})
    if keep_saved_labels and {str(x) for x in label_list} <= set(saved_names):
        by_name = {str(x): x for x in label_list}
        label_list = [by_name.get(name, name) for name in saved_names]
    config_kwargs = {
        "num_labels": len(label_list),
        "id2label": dict(enumerate(str(x) for x in label_list)),
        "label2id": {str(x): i for i, x in enumerate(label_list)},
    }
    return False, label_list, config_kwargs


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, SynthesizerArguments, DataArguments, TrainingArguments))
    # Sensible defaults for an example (flags still override them): no tracker integrations.
    parser.set_defaults(report_to="none", output_dir="outputs/run_classification")
    model_args, synth_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    # At every log level: a launcher may start fewer processes than asked for (see the docstring).
    logger.warning(
        "Running process %d of %d (%s, device %s)", training_args.process_index, training_args.world_size,
        training_args.parallel_mode.value, training_args.device,
    )

    model_type = transformers.PretrainedConfig.get_config_dict(model_args.model_name_or_path)[0].get("model_type")
    if model_type in ("t5", "t5_synthesizer"):
        raise ValueError(
            f"{model_args.model_name_or_path} holds a T5 checkpoint; this script fine-tunes BERT checkpoints. For T5 "
            f"use examples/run_seq2seq.py (labels as target text), or load the checkpoint with "
            f"T5SynthesizerForSequenceClassification (AutoModelForSequenceClassification picks it) in your own script."
        )

    raw = load_raw_datasets(data_args)
    train_split, eval_split, test_split = choose_splits(training_args, raw)
    if not (train_split or eval_split or test_split):
        raise ValueError("Nothing to do: no training, validation or test split in the data.")
    reference = raw[train_split or eval_split or test_split]
    text_columns = choose_text_columns(data_args, reference.column_names)
    for split in (train_split, eval_split):
        if split and data_args.label_column not in raw[split].column_names:
            raise ValueError(
                f"Label column {data_args.label_column!r} not in the data (columns of its {split} split: "
                f"{raw[split].column_names}); name it with --label_column."
            )
    saved = transformers.PretrainedConfig.get_config_dict(model_args.model_name_or_path)[0]
    is_regression, label_list, config_kwargs = label_setup(raw, data_args.label_column, saved, train_split is None)

    set_seed(training_args.seed)  # new parameters (head, synthesizer weights) are initialised reproducibly
    model = load_synthesizer_model(
        AutoModelForSequenceClassification, model_args.model_name_or_path, synth_args.attn_implementation,
        config_kwargs=config_kwargs, **synth_args.options(),
    )
    # Trainer treats a model whose forward takes **kwargs as one that normalises its loss by `num_items_in_batch`
    # (transformers 5.23): it then skips the division by the gradient-accumulation steps and, under DDP with
    # average_tokens_across_devices, multiplies the loss by the number of processes. BERT's heads (stock and
    # synthesizer) take **kwargs but average the loss per batch, so that would scale the loss and the gradients
    # (a known upstream problem: huggingface/transformers#47688; tests/test_examples.py measures the DDP case).
    model.accepts_loss_kwargs = False
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    set_model_max_length(tokenizer, model)  # saved with the model: truncation=True then cuts at the model's limit
    logger.info("Model: %s, attention %s", type(model).__name__, describe_attention(model))

    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)  # longer inputs would raise

    to_id = None if is_regression or label_list is None else {x: i for i, x in enumerate(label_list)}

    def preprocess(batch):
        texts = [batch[c] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        if data_args.label_column in batch:  # a test file may come without labels (or with -1, as GLUE's)
            labels = batch[data_args.label_column]
            encoded["labels"] = [to_id.get(x, -1) for x in labels] if to_id is not None else labels
        return encoded

    def prepare(split, limit):
        data = raw[split]
        if limit is not None:
            data = data.select(range(min(limit, len(data))))
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            return data.map(preprocess, batched=True, remove_columns=data.column_names, desc=f"Tokenizing {split}")

    train_dataset = prepare(train_split, data_args.max_train_samples) if train_split else None
    eval_dataset = prepare(eval_split, data_args.max_eval_samples) if eval_split else None
    test_dataset = prepare(test_split, data_args.max_predict_samples) if test_split else None
    metric_list = load_metrics(data_args.metrics, is_regression)

    trainer = SynthesizerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: classification_metrics(p, is_regression, metric_list),
    )
    metrics = {}
    if train_split:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # safetensors, config with the synthesizer fields, tokenizer
        train_metrics = dict(result.metrics, train_samples=len(train_dataset))
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if eval_split:
        logger.info("Evaluating on %s (%d examples)", data_args.validation_file or eval_split, len(eval_dataset))
        metrics.update(report(trainer, trainer.evaluate(), "eval", len(eval_dataset), trained=bool(train_split)))
    if test_split:
        metrics.update(predict(trainer, test_dataset, data_args.test_file or test_split, label_list,
                               trained=bool(train_split)))
    return metrics


def report(trainer, found: dict, prefix: str, samples: int, trained: bool) -> dict:
    """Log and save the metrics of a pass (`{prefix}_results.json`); a model not trained in this run has no epoch to
    report (Trainer would log `epoch = 0`)."""
    found = {k: v for k, v in found.items() if trained or k != "epoch"}
    found[f"{prefix}_samples"] = samples
    trainer.log_metrics(prefix, found)
    trainer.save_metrics(prefix, found)
    return found


def predict(trainer, dataset, name: str, label_list, trained: bool) -> dict:
    """The test pass, as transformers' run_glue has it: predictions of every row to `test_predictions.csv` (index,
    prediction) and, when every row has a label, the metrics prefixed `test_` (`test_results.json`)."""
    labelled = "labels" in dataset.column_names and all(y != -1 for y in dataset["labels"])
    logger.info("Predicting %s (%d examples, %s)", name, len(dataset), "labelled" if labelled else "no labels")
    output = trainer.predict(dataset if labelled else dataset.remove_columns(
        [c for c in ("labels",) if c in dataset.column_names]), metric_key_prefix="test")
    predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    if label_list is None:
        shown = np.squeeze(predictions, axis=-1)
    else:
        shown = [label_list[i] for i in np.argmax(predictions, axis=-1)]
    if trainer.is_world_process_zero():
        path = os.path.join(trainer.args.output_dir, "test_predictions.csv")
        os.makedirs(trainer.args.output_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("index,prediction\n" + "".join(f"{i},{p}\n" for i, p in enumerate(shown)))
        logger.info("Predictions written to %s", path)
    if not labelled:
        return {}
    return report(trainer, output.metrics, "test", len(dataset), trained)


if __name__ == "__main__":
    main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Leave a multi-process launch (accelerate / torchrun) cleanly: an undestroyed gloo group can abort a rank
        # at interpreter exit ("terminate called without an active exception").
        torch.distributed.destroy_process_group()
