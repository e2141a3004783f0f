#!/usr/bin/env python
"""Fine-tune T5 with synthesizer self-attention (Tay et al., arXiv 2005.00743) on a seq2seq task with
`Seq2SeqTrainer`. Copy this script and adapt it.

- `--model_name_or_path`: a stock T5 checkpoint (converted at load time: pass `--attn_implementation
  synthesizer_<variant>` and optionally the `--synthesizer_*` options) or a saved synthesizer checkpoint (loads as
  the variant it was saved with; the `--synthesizer_*` options are then refused, they would not match its weights).
- Data: `--train_file` / `--validation_file` / `--test_file` (CSV or JSON lines with `--source_column` and
  `--target_column`, default `source` / `target`), which works offline, or `--dataset_name` from the Hub.
- `--predict_with_generate` scores generated text: exact match after whitespace normalisation, computed here with
  numpy, plus any `--metrics` (names or paths of evaluate metric modules, e.g. `sacrebleu` online or `./my_metric.py`,
  loaded with `evaluate.load`; the log says whether evaluate's module or a local computation ran). Each pass prints
  its metrics, which are also written as JSON to `--output_dir` (`all_results.json`, `train_results.json`,
  `eval_results.json`, `predict_results.json`).

Example (stock t5-small converted to a random+vanilla mixture):

    python examples/run_seq2seq.py --model_name_or_path google-t5/t5-small \\
        --attn_implementation synthesizer_random+vanilla --synthesizer_length 128 \\
        --train_file train.csv --validation_file dev.csv --source_prefix "translate: " \\
        --output_dir out --do_train --do_eval --predict_with_generate --num_train_epochs 3
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainingArguments,
    set_seed,
)

import hf_synthesizer  # noqa: F401  (registers the synthesizer configs, models and attn_implementations)
from hf_synthesizer.conversion.checkpoints import TOKENIZER_FILES
from hf_synthesizer.conversion.loading import set_model_max_length, synthesizer_arguments
from hf_synthesizer.conversion.metrics import load_metric
# push_to_hub uploads the synthesizer model card
from hf_synthesizer.conversion.trainer import SynthesizerSeq2SeqTrainer
from hf_synthesizer import T5SynthesizerConfig

logger = logging.getLogger(__name__)

# --attn_implementation and one flag per synthesizer config field of T5 (named like the field, help from the config).
T5SynthesizerArguments = synthesizer_arguments("T5SynthesizerArguments", [T5SynthesizerConfig])


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Stock T5 checkpoint or saved synthesizer checkpoint."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: model_name_or_path."})


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "CSV or JSON(L) training file."})
    validation_file: str | None = field(default=None, metadata={"help": "CSV or JSON(L) validation file."})
    test_file: str | None = field(default=None, metadata={"help": "CSV or JSON(L) test file (--do_predict)."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (needs network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of --dataset_name."})
    source_column: str = field(default="source", metadata={"help": "Column with the input text."})
    target_column: str = field(default="target", metadata={"help": "Column with the output text."})
    source_prefix: str = field(default="", metadata={"help": "Prepended to every source (T5 task prefix)."})
    max_source_length: int | None = field(
        default=None, metadata={"help": "Truncate sources to this many tokens (default: synthesizer_length)."}
    )
    max_target_length: int | None = field(
        default=None, metadata={"help": "Truncate targets to this many tokens (default: synthesizer_length)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N train rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N eval rows."})
    metrics: list[str] | None = field(default=None, metadata={"help": (
        "More metrics of the generated text (--predict_with_generate) besides exact_match: names or paths of evaluate "
        "metric modules (evaluate.load), e.g. sacrebleu or ./my_metric.py.")})


def load_model(model_args: ModelArguments, synth_args):
    options = synth_args.options()
    config_dict, _ = T5SynthesizerConfig.get_config_dict(model_args.model_name_or_path)
    if config_dict.get("synthesizer_variant", "vanilla") != "vanilla" and options:
        raise ValueError(
            f"{model_args.model_name_or_path} is already a synthesizer checkpoint "
            f"(synthesizer_{config_dict['synthesizer_variant']}); the options {sorted(options)} only apply when "
            f"converting a stock T5 checkpoint."
        )
    # Through the constructor, so the synthesizer options are validated like any config field.
    config = T5SynthesizerConfig.from_dict({**config_dict, **options})
    return AutoModelForSeq2SeqLM.from_pretrained(
        model_args.model_name_or_path, config=config, attn_implementation=synth_args.attn_implementation
    )


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None):
    from datasets import load_dataset

    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    files = {
        split: path
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        )
        if path is not None
    }
    if not files:
        raise ValueError("Give --train_file/--validation_file/--test_file (CSV or JSON) or --dataset_name.")
    extensions = {os.path.splitext(p)[1].lstrip(".") for p in files.values()}
    if len(extensions) != 1 or not extensions <= {"csv", "json", "jsonl"}:
        raise ValueError(f"Data files must all be .csv or all .json/.jsonl, got {sorted(files.values())}.")
    builder = "csv" if extensions == {"csv"} else "json"
    return load_dataset(builder, data_files=files, cache_dir=cache_dir)


def exact_match_metric(tokenizer, metrics=()):
    """`compute_metrics` for generated ids: exact match of whitespace-normalised decoded text, with numpy, and each of
    `metrics` (`hf_synthesizer.conversion.metrics.Metric`) on the decoded texts.

    A prediction or reference holding the unknown token never matches: decoding drops `<unk>`, so a tokenizer that
    maps everything to it would decode every text to the same string and "match" everywhere."""

    def normalise(text: str) -> str:
        return " ".join(text.split())

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        if isinstance(preds, tuple):
            preds = preds[0]
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        matches = np.array([normalise(p) == normalise(t) for p, t in zip(decoded_preds, decoded_labels)])
        if tokenizer.unk_token_id is not None and len(matches):
            matches &= ~((preds == tokenizer.unk_token_id).any(-1) | (labels == tokenizer.unk_token_id).any(-1))
        results = {"exact_match": float(matches.mean()) if len(matches) else 0.0}
        for metric in metrics:
            results.update(metric.compute(predictions=[normalise(p) for p in decoded_preds],
                                          references=[normalise(t) for t in decoded_labels]))
        return results

    return compute_metrics


def unknown_word_rate(tokenizer, texts: list[str]) -> float:
    """Fraction of the whitespace-separated words of `texts` that `tokenizer` maps (partly) to its unknown token."""
    words = [w for text in texts for w in text.split()]
    if tokenizer.unk_token_id is None or not words:
        return 0.0
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    return sum(tokenizer.unk_token_id in ids for ids in encoded) / len(words)


def check_tokenizer_covers(tokenizer, raw, data_args: "DataArguments", name: str, rows: int = 200) -> None:
    """Refuse a tokenizer that cannot represent the data (e.g. the placeholder transformers builds for a folder
    without tokenizer files, which maps every word to `<unk>`): nothing trained or scored with it means anything."""
    split = next(iter(raw.values()))
    sample = split.select(range(min(rows, len(split))))
    for column in (data_args.source_column, data_args.target_column):
        if column not in sample.column_names:
            continue
        rate = unknown_word_rate(tokenizer, [str(t) for t in sample[column]])
        if rate > 0.5:
            files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(name, f))]
            hint = (f"{name} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}), so transformers built a "
                    f"placeholder tokenizer. " if os.path.isdir(name) and not files else "")
            raise ValueError(
                f"The tokenizer maps {rate:.0%} of the words of column {column!r} to {tokenizer.unk_token!r}: it "
                f"cannot represent this data, and training or exact match on it would be meaningless. {hint}Pass "
                f"--tokenizer_name_or_path with the tokenizer the model was trained with."
            )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, T5SynthesizerArguments, DataArguments, Seq2SeqTrainingArguments))
    model_args, synth_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    model = load_model(model_args, synth_args)
    set_model_max_length(tokenizer, model)  # saved with the model: truncation=True then cuts at the model's limit
    length = model.config.synthesizer_length
    max_source_length = data_args.max_source_length or length
    max_target_length = data_args.max_target_length or length
    if model.config.synthesizer_variant != "vanilla" and max(max_source_length, max_target_length) > length:
        raise ValueError(
            f"--max_source_length/--max_target_length ({max_source_length}/{max_target_length}) exceed the model's "
            f"synthesizer_length ({length})."
        )
    if training_args.generation_max_length is None:
        training_args.generation_max_length = max_target_length

    raw = load_raw_datasets(data_args, cache_dir=None)
    tokenizer_name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    check_tokenizer_covers(tokenizer, raw, data_args, tokenizer_name)

    def preprocess(batch):
        sources = [data_args.source_prefix + str(s) for s in batch[data_args.source_column]]
        targets = [str(t) for t in batch[data_args.target_column]]
        features = tokenizer(sources, max_length=max_source_length, truncation=True)
        features["labels"] = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
        return features

    def prepare(split: str, limit: int | None):
        if split not in raw:
            raise ValueError(f"No {split} split: give the matching --*_file or a dataset that has it.")
        dataset = raw[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return dataset.map(preprocess, batched=True, remove_columns=dataset.column_names)

    train_dataset = prepare("train", data_args.max_train_samples) if training_args.do_train else None
    eval_dataset = prepare("validation", data_args.max_eval_samples) if training_args.do_eval else None
    test_dataset = prepare("test", data_args.max_eval_samples) if training_args.do_predict else None

    trainer = SynthesizerSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=exact_match_metric(tokenizer, [load_metric(m) for m in data_args.metrics or ()])
        if training_args.predict_with_generate else None,
    )

    all_metrics = {}
    if training_args.do_train:
        result = trainer.train()
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        all_metrics.update(result.metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_predict:
        output = trainer.predict(test_dataset, metric_key_prefix="predict")
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
        all_metrics.update(output.metrics)
        if training_args.predict_with_generate:
            predictions = np.where(output.predictions < 0, tokenizer.pad_token_id, output.predictions)
            texts = tokenizer.batch_decode(predictions, skip_special_tokens=True)
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w") as f:
                f.write("\n".join(t.strip() for t in texts) + "\n")
    os.makedirs(training_args.output_dir, exist_ok=True)
    with open(os.path.join(training_args.output_dir, "all_results.json"), "w") as f:
        json.dump(all_metrics, f, indent=2, sort_keys=True)
    return all_metrics


if __name__ == "__main__":
    main(sys.argv[1:])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Leave a multi-process launch (accelerate / torchrun) cleanly: an undestroyed gloo group can abort a rank
        # at interpreter exit ("terminate called without an active exception").
        torch.distributed.destroy_process_group()
