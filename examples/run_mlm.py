#!/usr/bin/env python
"""Continued masked-LM pre-training of a BERT synthesizer (or a stock BERT converted on the fly) with `Trainer`.

After conversion the new synthesizer parameters start near uniform attention; a little masked-LM training on
in-domain text lets them learn something before fine-tuning.

    python examples/run_mlm.py \
        --model_name_or_path path/to/bert --attn_implementation synthesizer_random+vanilla \
        --synthesizer_length 128 --train_file corpus.txt --max_seq_length 128 --output_dir out/mlm

The text file holds raw text; by default lines are concatenated and cut into blocks of `--max_seq_length`
tokens (`--line_by_line` keeps one example per non-empty line). Without `--validation_file`,
`--validation_split_percentage` of the lines are held out. Writes `train_results.json`, `eval_results.json`
(loss, perplexity, masked-token accuracy: evaluate's `accuracy` where it loads, else computed locally) and the model (safetensors) with its tokenizer into `--output_dir`.
"""

import logging
import math
import sys
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import torch
import datasets
import transformers
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
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
from hf_synthesizer.conversion.metrics import load_metric
from hf_synthesizer.conversion.trainer import SynthesizerTrainer

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "A stock BERT checkpoint (converted when --attn_implementation synthesizer_... is given) "
                  "or a saved synthesizer checkpoint: a local folder or, online, a Hub id."}
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer, if not the model's."})


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "A plain text file (.txt) of training text."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "A plain text file for evaluation."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Percent of the training lines held out when there is no --validation_file."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per example (also capped by the model's synthesizer_length)."}
    )
    line_by_line: bool = field(default=False, metadata={"help": "One example per non-empty line, not packed blocks."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens masked."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many evaluation examples."})


def preprocess_logits_for_metrics(logits, labels):
    """Keep only the argmax: full vocabulary logits of the whole evaluation set would not fit in memory."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(dim=-1)


def masked_accuracy(eval_pred, metric=None) -> dict:
    """Top-1 accuracy on the masked positions (labels -100 are the unmasked ones): `metric` (default
    `load_metric("accuracy")`: evaluate's module where it loads, else computed locally; the log says which)."""
    predictions, labels = eval_pred
    masked = labels != -100
    if not masked.any():
        return {"masked_accuracy": 0.0}
    metric = metric or load_metric("accuracy")
    found = metric.compute(predictions=predictions[masked], references=labels[masked])
    return {"masked_accuracy": float(found["accuracy"])}


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, SynthesizerArguments, DataArguments, TrainingArguments))
    parser.set_defaults(report_to="none", output_dir="outputs/run_mlm")
    model_args, synth_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    files = {"train": data_args.train_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    raw = datasets.load_dataset("text", data_files=files)
    if "validation" not in raw and data_args.validation_split_percentage > 0:
        split = raw["train"].train_test_split(
            test_size=data_args.validation_split_percentage / 100, seed=training_args.seed, shuffle=False
        )
        raw = datasets.DatasetDict(train=split["train"], validation=split["test"])

    set_seed(training_args.seed)
    model = load_synthesizer_model(
        AutoModelForMaskedLM, model_args.model_name_or_path, synth_args.attn_implementation, **synth_args.options()
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

    if data_args.line_by_line:
        def tokenize(batch):
            lines = [line for line in batch["text"] if line.strip()]
            return tokenizer(lines, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    else:
        def tokenize(batch):
            return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group(batch):
        """Concatenate and cut into blocks of `max_length` tokens (the tail shorter than a block is dropped)."""
        joined = {k: list(chain(*batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // max_length) * max_length
        return {k: [v[i : i + max_length] for i in range(0, total, max_length)] for k, v in joined.items()}

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")
        if not data_args.line_by_line:
            # Packed blocks of raw text hold no [CLS]/[SEP] per block; the tokenizer's per-line ones are kept.
            tokenized = tokenized.map(group, batched=True, desc=f"Packing into blocks of {max_length}")

    def limit(split, n):
        data = tokenized[split]
        return data.select(range(min(n, len(data)))) if n is not None else data

    train_dataset = limit("train", data_args.max_train_samples)
    eval_dataset = limit("validation", data_args.max_eval_samples) if "validation" in tokenized else None
    if len(train_dataset) == 0:
        raise ValueError(
            f"No training example: the text in {data_args.train_file} is shorter than one block of {max_length} "
            f"tokens. Use --line_by_line or a smaller --max_seq_length."
        )

    trainer = SynthesizerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=data_args.mlm_probability, seed=training_args.seed
        ),
        compute_metrics=(lambda p, metric=load_metric("accuracy"): masked_accuracy(p, metric))
        if eval_dataset is not None else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if eval_dataset is not None else None,
    )
    metrics = {}
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # safetensors, config with the synthesizer fields, tokenizer
    train_metrics = dict(result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    metrics.update(train_metrics)
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        try:
            eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"])
        except OverflowError:
            eval_metrics["perplexity"] = float("inf")
        eval_metrics["eval_samples"] = len(eval_dataset)
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
