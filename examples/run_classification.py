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

Writes `train_results.json`, `eval_results.json` and `all_results.json` (accuracy, macro F1, loss; MSE and
Pearson r for regression) and the model (safetensors) with its tokenizer into `--output_dir`. A synthesizer
checkpoint saved here reloads as the same variant with no `--attn_implementation`.
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
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
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


def load_raw_datasets(data_args: DataArguments) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        return datasets.load_dataset(data_args.dataset_name, data_args.dataset_config)
    files = {}
    if data_args.train_file:
        files["train"] = data_args.train_file
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    if not files:
        raise ValueError("Give --dataset_name (online) or --train_file/--validation_file (CSV or JSON).")
    extensions = {os.path.splitext(f)[1].lstrip(".") for f in files.values()}
    if len(extensions) != 1:
        raise ValueError(f"--train_file and --validation_file must have the same format, got {sorted(extensions)}.")
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


def classification_metrics(eval_pred, is_regression: bool) -> dict:
    """Accuracy and macro F1 (classification) or MSE and Pearson r (regression), with scikit-learn and scipy: no
    metric download (`evaluate.load("accuracy")` fetches its module from the Hub)."""
    predictions, labels = eval_pred
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    if is_regression:
        predictions = np.squeeze(predictions, axis=-1)
        pearson = float(pearsonr(predictions, labels).statistic) if len(labels) > 1 else float("nan")
        return {"mse": float(mean_squared_error(labels, predictions)), "pearson": pearson}
    predictions = np.argmax(predictions, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        # Macro average over the classes present in the labels or the predictions; a class never predicted
        # correctly scores 0.
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


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
    do_train = training_args.do_train or not training_args.do_eval
    do_eval = training_args.do_eval or not training_args.do_train
    do_train = do_train and "train" in raw
    eval_split = next((s for s in ("validation", "validation_matched", "test") if s in raw), None)
    do_eval = do_eval and eval_split is not None
    if not (do_train or do_eval):
        raise ValueError("Nothing to do: no training or validation split in the data.")
    reference = raw["train" if do_train else eval_split]
    text_columns = choose_text_columns(data_args, reference.column_names)
    if data_args.label_column not in reference.column_names:
        raise ValueError(
            f"Label column {data_args.label_column!r} not in the data (columns: {reference.column_names}); "
            f"name it with --label_column."
        )

    label_feature = reference.features[data_args.label_column]
    is_regression = label_feature.dtype in ("float32", "float64")
    if is_regression:
        label_list, config_kwargs = None, {"num_labels": 1, "problem_type": "regression"}
    else:
        if isinstance(label_feature, datasets.ClassLabel):
            label_list = label_feature.names
        else:
            label_list = sorted({x for split in raw.values() for x in split[data_args.label_column] if x is not None})
        config_kwargs = {
            "num_labels": len(label_list),
            "id2label": dict(enumerate(str(x) for x in label_list)),
            "label2id": {str(x): i for i, x in enumerate(label_list)},
        }

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

    if not is_regression and not isinstance(label_feature, datasets.ClassLabel):
        to_id = {x: i for i, x in enumerate(label_list)}
    else:
        to_id = None

    def preprocess(batch):
        texts = [batch[c] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        labels = batch[data_args.label_column]
        encoded["labels"] = [to_id[x] for x in labels] if to_id is not None else labels
        return encoded

    def prepare(split, limit):
        data = raw[split]
        if limit is not None:
            data = data.select(range(min(limit, len(data))))
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            return data.map(preprocess, batched=True, remove_columns=data.column_names, desc=f"Tokenizing {split}")

    train_dataset = prepare("train", data_args.max_train_samples) if do_train else None
    eval_dataset = prepare(eval_split, data_args.max_eval_samples) if do_eval else None

    trainer = SynthesizerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: classification_metrics(p, is_regression),
    )
    metrics = {}
    if do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # safetensors, config with the synthesizer fields, tokenizer
        train_metrics = dict(result.metrics, train_samples=len(train_dataset))
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if do_eval:
        eval_metrics = dict(trainer.evaluate(), eval_samples=len(eval_dataset))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


if __name__ == "__main__":
    main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Leave a multi-process launch (accelerate / torchrun) cleanly: an undestroyed gloo group can abort a rank
        # at interpreter exit ("terminate called without an active exception").
        torch.distributed.destroy_process_group()
