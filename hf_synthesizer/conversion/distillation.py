"""Attention-transfer distillation: a short continued-training stage on unlabeled text in which a converted
synthesizer (the student) learns to attend and represent like the stock checkpoint it was converted from (the frozen
teacher), as MiniLM was made by distilling self-attention distributions (Wang et al. 2020, arXiv 2002.10957, sec. 3).

For every layer `l`, head `h` and real query token `i` of a batch (padding excluded):

- attention loss: `KL(A_t[l, h, i] || A_s[l, h, i])`, the teacher's attention probabilities over the real keys
  against the student's (`output_attentions=True`: the teacher runs plain `eager` attention, the student synthesizer
  attention's reference route), averaged over layers, heads and real queries;
- hidden-state loss: per layer output (embeddings excluded), the mean squared error over the hidden size
  (`hidden_loss="mse"`) or `1 - cosine` (`"cosine"`) of each real token, averaged over tokens and layers; the widths
  are equal (same checkpoint), so no projection is learned.

`loss = attention_loss_weight * attention + hidden_loss_weight * hidden`, plus, for TinyBERT's task stage (Jiao et al.
2020, arXiv 1909.10351, sec. 3.1: the teacher is the stock model fine-tuned on the task, the student a classifier),
`prediction_loss_weight * T^2 * KL(softmax(teacher logits / T) || softmax(student logits / T))` (`prediction_kl`;
`DistillationTrainer(prediction_loss_weight=..., temperature=T)`). The teacher's weights are frozen; every
weight of the student trains (synthesizer parameters, and the value/output/feed-forward weights they feed). Dropout
is off in the student while `DistillationTrainer.train` runs (the teacher runs in eval mode: the targets are its
eval-mode function).
T5: the encoder is distilled; a decoder's synthesized self-attention (if `synthesizer_stacks` includes it) is
initialised by `calibrate_first` only.

Built on `Trainer` (`DistillationTrainer.compute_loss`), so progress, checkpoints, `--resume_from_checkpoint`,
gradient accumulation, bf16 and logging behave as in any Trainer run (in one process: the student's encoder is
called directly, so multi-process DDP launches are refused rather than left unsynchronised). The result is a normal
synthesizer checkpoint (plus the source's tokenizer; sentence-transformers files only for an encoder student) whose
model card says how it was distilled; the same facts are in `distillation.json`.

`distill` (and `hf-synthesizer distill`) with a text file (one text per line) runs general distillation: calibration,
then `general_steps` steps of the losses above against the stock model; the student keeps the checkpoint's head.
With a labelled file (.csv/.tsv/.json/.jsonl: `--text_column`, `--label_column`) it runs the whole recommended task
recipe (`distill_for_task`), each stage a `Trainer` run, and writes a sequence classifier:

1. teacher: STOCK fine-tuned on the training file (`num_train_epochs`; kept with `--teacher_output_dir`), or
   `--teacher`;
2. calibration on the training texts (`hf_synthesizer.conversion.calibration`);
3. general distillation from STOCK on the training texts (labels unused) and any `--unlabeled_file` text;
4. task stage: `num_train_epochs` epochs against the fine-tuned teacher (logit KL + the per-layer losses, no labels);

then the student's and the teacher's accuracy on the validation file. docs/conversion.md documents both.

    hf-synthesizer distill STOCK DST --attn_implementation synthesizer_random --train_file train.csv \\
        --validation_file dev.csv --text_column text --label_column label [--teacher FINETUNED_DIR]
    hf-synthesizer distill STOCK DST --attn_implementation synthesizer_random --train_file texts.txt \\
        [--no_calibrate_first] [--hidden_loss cosine] [any TrainingArguments flag: --max_steps 300 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

HIDDEN_LOSSES = ("mse", "cosine")
DISTILLATION_FILE = "distillation.json"


# ----------------------------------------------------------------------------------------------------- losses
def attention_kl(teacher_probs: torch.Tensor, student_probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over heads and real query rows of `KL(teacher row || student row)`.

    teacher_probs, student_probs: `(B, H, l, l)` attention probabilities (padded keys hold 0 in both);
    token_mask: `(B, l)`, 1 for real tokens. Returns a scalar (nats). Entries where the teacher puts no mass
    contribute nothing (and no gradient), so the -inf log of a masked student probability never appears.
    """
    dtype = torch.promote_types(teacher_probs.dtype, torch.float32)  # fp32 at least (bf16 runs), fp64 kept
    t, s = teacher_probs.to(dtype), student_probs.to(dtype)
    tiny = torch.finfo(dtype).tiny
    kl = torch.special.xlogy(t, t) - torch.special.xlogy(t, s.clamp_min(tiny))  # (B, H, l, l)
    rows = kl.sum(-1)  # (B, H, l)
    real = token_mask.to(rows.dtype)[:, None, :]
    return (rows * real).sum() / (real.sum() * rows.shape[1]).clamp_min(1)


def hidden_state_loss(teacher_hidden: torch.Tensor, student_hidden: torch.Tensor, token_mask: torch.Tensor,
                      kind: str = "mse") -> torch.Tensor:
    """Mean over real tokens of the squared error averaged over the hidden size (`"mse"`) or of `1 - cosine`
    (`"cosine"`). teacher_hidden, student_hidden: `(B, l, d)`; token_mask `(B, l)`. Returns a scalar."""
    dtype = torch.promote_types(teacher_hidden.dtype, torch.float32)
    t, s = teacher_hidden.to(dtype), student_hidden.to(dtype)
    if kind == "mse":
        per_token = (s - t).pow(2).mean(-1)
    elif kind == "cosine":
        per_token = 1 - nn.functional.cosine_similarity(s, t, dim=-1)
    else:
        raise ValueError(f"hidden_loss must be one of {HIDDEN_LOSSES}, got {kind!r}.")
    real = token_mask.to(per_token.dtype)
    return (per_token * real).sum() / real.sum().clamp_min(1)


def prediction_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                  token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Prediction-layer distillation (Hinton et al. 2015, arXiv 1503.02531; TinyBERT's task stage, Jiao et al.
    2020, arXiv 1909.10351 eq. 10): `T² · KL(softmax(t / T) ‖ softmax(s / T))` per prediction, averaged.

    teacher_logits, student_logits: `(B, C)` (one prediction per sequence) or `(B, l, C)` (per token, averaged over
    the real tokens of `token_mask` `(B, l)`). Returns a scalar (nats · T²); 0 when the logits are equal. Same
    gradient as the soft cross-entropy (they differ by the teacher's entropy, a constant)."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"Teacher and student logits differ in shape ({tuple(teacher_logits.shape)} vs "
                         f"{tuple(student_logits.shape)}): task distillation needs the same head (same num_labels).")
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    t = torch.log_softmax(teacher_logits.to(dtype) / temperature, -1)
    s = torch.log_softmax(student_logits.to(dtype) / temperature, -1)
    per_prediction = (t.exp() * (t - s)).sum(-1) * temperature**2
    if per_prediction.dim() == 2 and token_mask is not None:
        real = token_mask.to(per_prediction.dtype)
        return (per_prediction * real).sum() / real.sum().clamp_min(1)
    return per_prediction.mean()


def distillation_losses(teacher_out, student_out, token_mask, *, hidden_loss: str = "mse") -> dict[str, torch.Tensor]:
    """`{"attention": ..., "hidden": ...}` (0-dim tensors) averaged over layers, from two encoder outputs run with
    `output_attentions=True, output_hidden_states=True` on the same batch; `token_mask` `(B, l)`, 1 on real tokens.
    Attention: `attention_kl` (nats, per head, real tokens); hidden: `hidden_state_loss` of each layer's output.
    Raises ValueError when the two do not return one attention map per layer each, in the same number."""
    t_att, s_att = teacher_out.attentions, student_out.attentions
    if not t_att or not s_att or len(t_att) != len(s_att):
        raise ValueError(
            f"Teacher and student must return one attention map per layer (got {len(t_att or ())} and "
            f"{len(s_att or ())}): distillation pairs layer l of the student with layer l of the stock model it was "
            f"converted from, so both must have the same number of layers."
        )
    attention = sum(attention_kl(t, s, token_mask) for t, s in zip(t_att, s_att)) / len(t_att)
    t_hid, s_hid = teacher_out.hidden_states[1:], student_out.hidden_states[1:]  # layer outputs, not embeddings
    hidden = sum(hidden_state_loss(t, s, token_mask, hidden_loss) for t, s in zip(t_hid, s_hid)) / len(t_hid)
    return {"attention": attention, "hidden": hidden}


def encoder_of(model: nn.Module) -> nn.Module:
    """The part of `model` that maps `input_ids` to per-layer hidden states and attentions: the encoder stack of an
    encoder-decoder (T5), else the base model (BERT's `bert`, without the task head)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model.base_model


# ---------------------------------------------------------------------------------------------------- Trainer
class DistillationTrainer(Trainer):
    """`Trainer` whose loss is the attention-transfer distillation loss against a frozen `teacher` (module
    docstring). Batches need `input_ids` and `attention_mask` only (no labels). Logs `attention_loss` and
    `hidden_loss` (and `eval_*` ones) beside `loss`; `batch_losses["first"]` / `["last"]` keep the parts and total of
    the first and last training batch (unweighted parts, weighted `total`), `texts_seen` / `batches_seen` what it
    trained on, whatever the logging settings. The student's dropout is off while `train` runs.

    Task distillation (TinyBERT's second stage): with `prediction_loss_weight > 0` the teacher is the stock model
    fine-tuned on the task and the student the same head class (e.g. both `...ForSequenceClassification`, same
    `num_labels`); both run their heads and `prediction_loss_weight · prediction_kl(teacher logits, student logits,
    temperature)` is added (logged as `prediction_loss`). The teacher's soft labels are the only targets: batches
    carry no `labels`, so unlabeled in-domain text can be distilled on too."""

    # compute_loss returns a per-batch mean: Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher: nn.Module, attention_loss_weight: float = 1.0, hidden_loss: str = "mse",
                 hidden_loss_weight: float = 1.0, attention_learning_rate: float | None = None,
                 prediction_loss_weight: float = 0.0, temperature: float = 1.0, **kwargs):
        if hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden_loss must be one of {HIDDEN_LOSSES}, got {hidden_loss!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise ValueError(
                "DistillationTrainer runs in one process: it calls the student's encoder directly (not the "
                "DistributedDataParallel wrapper), so gradients would not be synchronised across processes. Launch it "
                "without torchrun/accelerate's multi-process launchers."
            )
        self.attention_learning_rate = attention_learning_rate
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.attention_loss_weight = attention_loss_weight
        self.hidden_loss = hidden_loss
        self.hidden_loss_weight = hidden_loss_weight
        self.prediction_loss_weight = prediction_loss_weight
        self.temperature = temperature
        self._parts = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": 0, "eval": 0}
        # The first and last training batch's losses and the texts trained on, whatever the logging settings.
        self.batch_losses: dict[str, dict[str, float]] = {}
        self.texts_seen = 0
        self.batches_seen = 0

    def train(self, *args, **kwargs):
        """`Trainer.train` with every dropout of the student off for the whole run (forward, and the recomputed
        forward of gradient checkpointing), restored afterwards: the targets are the teacher's eval-mode function, and
        with dropout on the logged losses measure the noise (an attention KL ~20x its dropout-free value on MiniLM)."""
        saved = _disable_dropout(self.model)
        try:
            return super().train(*args, **kwargs)
        finally:
            _restore(saved)

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the synthesizer parameters (`*.synthesizer.*`: R, dense W1/W2, mixture weights)
        in groups of their own at `attention_learning_rate`: they start far from what they must learn (or at the
        calibrated average), where the pretrained weights around them need the small fine-tuning rate."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if not fresh or self.attention_learning_rate is None:
            return optimizer
        opt_model = self.model if model is None else model
        synthesizer = {id(p) for n, p in opt_model.named_parameters() if ".synthesizer." in n}
        for group in list(optimizer.param_groups):
            own = [p for p in group["params"] if id(p) in synthesizer]
            if own:
                group["params"] = [p for p in group["params"] if id(p) not in synthesizer]
                settings = {k: v for k, v in group.items() if k != "params"}
                optimizer.add_param_group({**settings, "params": own, "lr": self.attention_learning_rate})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unused = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unused:
            raise ValueError(
                f"DistillationTrainer batches carry input_ids, attention_mask and token_type_ids only, got "
                f"{sorted(unused)}: the teacher's attention, hidden states (and logits) are the targets. Remove "
                f"those columns from the dataset."
            )
        mask = inputs["attention_mask"]
        encoder_inputs = {**inputs, "output_attentions": True, "output_hidden_states": True}
        student = self.accelerator.unwrap_model(model)
        # Task distillation runs both heads (logits); otherwise the encoders alone (no pretraining head to pay for).
        run = (lambda m: m) if self.prediction_loss_weight else encoder_of
        with torch.no_grad():
            teacher_out = run(self.teacher)(**encoder_inputs)
        student_out = run(student)(**encoder_inputs)
        parts = distillation_losses(teacher_out, student_out, mask, hidden_loss=self.hidden_loss)
        loss = self.attention_loss_weight * parts["attention"] + self.hidden_loss_weight * parts["hidden"]
        if self.prediction_loss_weight:
            parts["prediction"] = prediction_kl(teacher_out.logits, student_out.logits, self.temperature, mask)
            loss = loss + self.prediction_loss_weight * parts["prediction"]
        split = "train" if model.training else "eval"
        values = {name: value.detach().item() for name, value in parts.items()}
        for name, value in values.items():
            self._parts[split][name] += value
        self._counts[split] += 1
        if split == "train":
            values["total"] = loss.detach().item()
            self.batch_losses.setdefault("first", values)
            self.batch_losses["last"] = values
            self.texts_seen += len(mask)
            self.batches_seen += 1
        return (loss, student_out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for split, prefix, key in (("train", "", "loss"), ("eval", "eval_", "eval_loss")):
            if key in logs and self._counts[split]:
                for name, total in self._parts[split].items():
                    logs[f"{prefix}{name}_loss"] = round(total / self._counts[split], 6)
                self._parts[split].clear()
                self._counts[split] = 0
        super().log(logs, start_time)


# --------------------------------------------------------------------------------------------------- arguments
# The recommended recipe's settings (docs/conversion.md, benchmarks/QUALITY.md): the CLI's defaults, and
# `recipe_training_args` in Python. General distillation runs GENERAL_STEPS optimizer steps unless --max_steps is given.
GENERAL_STEPS = 120
RECIPE_TRAINING_DEFAULTS = {"learning_rate": 2e-4, "per_device_train_batch_size": 16, "warmup_steps": 0.1,
                            "weight_decay": 0.01, "report_to": "none", "save_strategy": "no"}  # DST: the model only
LABELLED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def recipe_training_args(output_dir, **overrides) -> TrainingArguments:
    """`TrainingArguments` with the recommended recipe's defaults (`RECIPE_TRAINING_DEFAULTS`: learning rate 2e-4,
    16 texts per step, 10 % warmup, weight decay 0.01, no trackers, no Trainer checkpoints in DST: pass
    `save_strategy="steps"` for `checkpoint-N` folders to resume from), `overrides` on top; the `distill` CLI's
    defaults."""
    return TrainingArguments(output_dir=str(output_dir), **{**RECIPE_TRAINING_DEFAULTS, **overrides})


@dataclass
class DistillationArguments:
    """What to distill on and how (`hf-synthesizer distill` flags; the rest are `TrainingArguments` and the
    synthesizer config fields)."""

    train_file: str = field(metadata={"help": (
        "A text file (one text per line): general distillation only (calibration + attention transfer), the student "
        "keeps STOCK's head. A labelled .csv/.tsv/.json/.jsonl file (--text_column, --label_column): the whole task "
        "recipe, a sequence classifier (teacher fine-tuning unless --teacher, calibration, general distillation on "
        "its text, task stage against the fine-tuned teacher).")})
    validation_file: Optional[str] = field(default=None, metadata={"help": (
        "Held-out data in the train file's format: text lines give eval_loss (--eval_strategy); a labelled file gives "
        "the student's and the teacher's accuracy at the end.")})
    text_column: str = field(default="text", metadata={"help": "Text column of a labelled file."})
    label_column: str = field(default="label", metadata={"help": "Label column of a labelled file (integers or "
                                                                 "strings)."})
    teacher: Optional[str] = field(default=None, metadata={"help": (
        "Labelled files: a checkpoint folder of STOCK already fine-tuned on the task (a sequence classifier with the "
        "same labels): the task stage's teacher. Default: fine-tune STOCK on --train_file first.")})
    teacher_output_dir: Optional[str] = field(default=None, metadata={"help": (
        "Labelled files: keep the teacher fine-tuned here in this folder (outside DST; for --teacher in a later run; "
        "the size of STOCK, ~90 MB for MiniLM-L6). Default: not kept (a temporary folder, deleted at the end).")})
    unlabeled_file: Optional[str] = field(default=None, metadata={"help": (
        "Labelled files: more in-domain text (one per line, no labels) for calibration, general distillation and the "
        "task stage, besides the training texts.")})
    general_steps: int = field(default=GENERAL_STEPS, metadata={"help": (
        f"Optimizer steps of general distillation (default {GENERAL_STEPS}, measured in docs/conversion.md); 0 skips "
        f"it. For a text file --max_steps, when given, overrides it.")})
    calibrate_first: bool = field(
        default=True, metadata={"help": "Initialise the synthesizer by closed-form calibration on the first "
                                "--calibration_samples texts before distilling (docs/conversion.md); "
                                "--no_calibrate_first skips it."})
    calibration_samples: int = field(default=512, metadata={"help": "Texts calibration reads."})
    max_seq_length: Optional[int] = field(
        default=None, metadata={"help": "Truncate texts to this many tokens (default: the synthesizer length, at "
                                "most 128)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training texts."})
    attention_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the attention KL loss."})
    hidden_loss: str = field(default="mse", metadata={"help": "Hidden-state loss per layer.",
                                                       "choices": list(HIDDEN_LOSSES)})
    hidden_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the hidden-state loss."})
    attention_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Learning rate of the synthesizer parameters (default: 10 × --learning_rate; "
                                "the other weights use --learning_rate)."})
    head: Optional[str] = field(default=None, metadata={"help": "Text files: the model head to save (default: the "
                                                                "source's)."})
    base_model: Optional[str] = field(default=None, metadata={"help": "Hub id of the teacher, for the model card "
                                                                      "(default: the STOCK path as given)."})
    overwrite: bool = field(default=False, metadata={"help": "Write into DST even if it holds a checkpoint."})


def is_labelled(path) -> bool:
    """Whether `path` is a labelled table (.csv/.tsv/.json/.jsonl) rather than plain text lines."""
    return Path(path).suffix.lower() in LABELLED_SUFFIXES


def read_texts(path, limit: int | None = None) -> list[str]:
    """Non-empty lines of a UTF-8 text file (stripped), at most `limit`."""
    with open(path, encoding="utf-8") as handle:
        texts = [line.strip() for line in handle if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text: distillation trains on unlabeled text, one example per line.")
    return texts[:limit] if limit else texts


def tokenized_dataset(texts: list[str], tokenizer, max_length: int):
    import datasets

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return datasets.Dataset.from_dict({"text": texts}).map(tokenize, batched=True, remove_columns=["text"])


def _disable_dropout(model: nn.Module) -> list:
    """Set every dropout probability of `model` to 0 (nn.Dropout modules, and T5 attention's float `dropout`);
    returns what to restore."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            saved.append((module, "p", module.p))
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            saved.append((module, "dropout", module.dropout))
            module.dropout = 0.0
    return saved


def _restore(saved) -> None:
    for module, name, value in saved:
        setattr(module, name, value)


# ------------------------------------------------------------------------------------------------- the record
LOSS_ROWS = (("first training batch", "first"), ("last training batch", "last"),
             ("held-out, before distilling", "eval_first"), ("held-out, at the end", "eval"))


def loss_table(losses: dict) -> list[str]:
    """Markdown rows of a stage's loss record (`stage_losses`); always the first/last training batch."""
    lines = ["| | attention KL | hidden-state loss | prediction KL | total |", "|---|---|---|---|---|"]
    for label, key in LOSS_ROWS:
        row = losses.get(key)
        if row:
            prediction = f"{row['prediction']:.4f}" if "prediction" in row else "–"
            lines.append(f"| {label} | {row['attention']:.4f} | {row['hidden']:.4f} | {prediction} | "
                         f"{row['total']:.4f} |")
    return lines


def count(number, unit: str, spec: str = "g") -> str:
    """`number` formatted with `spec` and `unit`, singular when it reads 1: "1 epoch", "2 epochs", "1.50 epochs"."""
    text = format(number, spec)
    return f"{text} {unit if text == '1' else unit + 's'}"


def teacher_text(name: str) -> str:
    """The teacher as the card names it: the Hub id (--base_model) or the path exactly as the user gave it. Not its
    config's `_name_or_path`: that records the model the teacher was made from (e.g. MiniLM's base model before
    fine-tuning), not the teacher."""
    return f"`{name}`"


def card_section(facts: dict) -> str:
    """The model card's "Distillation" section from the facts `distill` records (`distillation.json`): the task
    recipe's (`task_card_section`) or general distillation's (`general_card_section`)."""
    return task_card_section(facts) if facts.get("recipe") == "task" else general_card_section(facts)


def general_card_section(facts: dict) -> str:
    """The "Distillation" section of general distillation (records written before `texts_per_step` existed give
    the batch size only)."""
    per_step = facts.get("texts_per_step")
    batch = (f"{count(per_step, 'text')} per step on average (batch size {facts['batch_size']})"
             if per_step is not None else f"{count(facts['batch_size'], 'text')} per step")
    hidden = {"mse": "mean squared error", "cosine": "1 − cosine similarity"}[facts["hidden_loss"]]
    if facts["steps"] == 0:
        return skipped_card_section(facts)
    lines = [
        "## Distillation",
        "",
        f"Attention-transfer distillation (`hf-synthesizer distill`, `hf_synthesizer.conversion.distillation`) from the stock "
        f"teacher {teacher_text(facts['teacher'])} on {facts['train_texts']:,} unlabeled texts "
        f"({facts['train_tokens']:,} tokens, "
        f"truncated to {facts['max_seq_length']}): {count(facts['steps'], 'optimizer step', ',')} "
        f"({count(facts['epochs'], 'epoch', '.2f')}, {batch}, learning rate {facts['learning_rate']:g}, "
        f"{facts['attention_learning_rate']:g} for the synthesizer parameters)"
        + (f", after closed-form calibration on {count(facts['calibration_texts'], 'text', ',')}"
           if facts.get("calibrated") else "")
        + ".",
        "",
        f"Loss: {facts['attention_loss_weight']:g} × KL(teacher ‖ student) of every layer's attention probabilities "
        f"over real tokens, per head, + {facts['hidden_loss_weight']:g} × {hidden} of every layer's hidden states "
        f"(averaged over layers and real tokens). The teacher was frozen; dropout was off.",
        "",
    ]
    return "\n".join(lines + loss_table(facts["losses"]))


def skipped_card_section(facts: dict) -> str:
    """The "Distillation" section of a text-file run with `--general_steps 0`: no distillation step was taken."""
    calibrated = (f"closed-form calibration on {count(facts['calibration_texts'], 'text')} from the stock teacher "
                  f"{teacher_text(facts['teacher'])} only" if facts.get("calibrated") else
                  f"no calibration either: the student is the stock model {teacher_text(facts['teacher'])} converted, "
                  f"its synthesizer at its plain initialisation")
    return "\n".join(["## Distillation", "", f"`hf-synthesizer distill` with general distillation skipped "
                      f"(`--general_steps 0`, no optimizer step): {calibrated}."])


def stage_losses(trainer: DistillationTrainer, before: dict | None = None) -> dict:
    """First/last training batch (recorded by the trainer whatever the logging settings) and, when evaluated, the
    held-out losses before and after: `{"first": {"attention", "hidden", ["prediction"], "total"}, ...}`."""
    weights = {"attention": trainer.attention_loss_weight, "hidden": trainer.hidden_loss_weight,
               "prediction": trainer.prediction_loss_weight}
    losses = {key: dict(row) for key, row in trainer.batch_losses.items()}
    evals = [e for e in ([before] if before else []) + trainer.state.log_history if "eval_attention_loss" in e]
    for key, entry in (("eval_first", evals[0] if evals else None), ("eval", evals[-1] if len(evals) > 1 else None)):
        if entry:
            row = {name: entry[f"eval_{name}_loss"] for name in weights if f"eval_{name}_loss" in entry}
            losses[key] = {**row, "total": sum(weights[n] * v for n, v in row.items())}
    return losses


def stage_facts(trainer: DistillationTrainer, train_output, before: dict | None = None) -> dict:
    """Steps, epochs, texts per step (really trained on), learning rates, runtime and losses of one stage
    (`train_output` None: the stage was skipped, 0 steps)."""
    args = trainer.args
    per_step = trainer.texts_seen * args.gradient_accumulation_steps / max(trainer.batches_seen, 1)
    return {
        "steps": trainer.state.global_step,
        "epochs": float(trainer.state.epoch or 0.0),
        "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1),
        "texts_per_step": round(per_step, 2),
        "train_tokens": int(sum(len(ids) for ids in trainer.train_dataset["input_ids"])),
        "learning_rate": args.learning_rate,
        "attention_learning_rate": trainer.attention_learning_rate,
        "train_runtime_s": train_output.metrics.get("train_runtime") if train_output is not None else None,
        "losses": stage_losses(trainer, before),
    }


@dataclass
class DistillationResult:
    """What `distill` returns: the distilled student (also saved to `output_dir`), its (last) `DistillationTrainer`,
    the facts its card and `distillation.json` record (teacher, texts, tokens, steps, learning rates, losses; the task
    recipe adds its stages and validation metrics) and the `CalibrationReport` when calibration ran (else None)."""

    model: nn.Module
    trainer: DistillationTrainer
    facts: dict
    calibration: object = None  # the CalibrationReport when calibrate_first


# ----------------------------------------------------------------------------------------------- the pipeline
def check_request(stock: Path, attn_implementation: str | None, training_args: TrainingArguments, args) -> None:
    """Refuse, naming the fix: a synthesizer STOCK, a student that is not a synthesizer variant, DST == STOCK, an
    existing DST without --overwrite, a negative --general_steps, --teacher_output_dir inside DST (raises
    ValueError / CheckpointError)."""
    from ..modeling.configuration_synthesizer import ATTN_PREFIX, NAMED_VARIANTS
    from .checkpoints import CheckpointError, family_of

    _, config_dict = family_of(stock)
    if config_dict.get("synthesizer_variant", "vanilla") != "vanilla":
        raise ValueError(
            f"{stock} is already a synthesizer checkpoint (variant {config_dict['synthesizer_variant']}): distillation "
            f"needs the stock (dot-product) checkpoint as its teacher. Pass the stock folder it was converted from."
        )
    out, kept = Path(training_args.output_dir).resolve(), Path(args.teacher_output_dir or "/").resolve()
    if args.teacher_output_dir and out in (kept, *kept.parents):
        raise ValueError(f"--teacher_output_dir {args.teacher_output_dir} is inside DST ({training_args.output_dir}), "
                         f"which holds the student only (pushing DST would upload the teacher): pass a folder beside "
                         f"it, e.g. {out.name}-teacher.")
    if args.general_steps < 0:
        raise ValueError(f"--general_steps {args.general_steps}: pass the number of steps, or 0 to skip general "
                         f"distillation.")
    if not attn_implementation or not attn_implementation.startswith(ATTN_PREFIX):
        raise ValueError(
            f"--attn_implementation must name the student's synthesizer variant (synthesizer_<variant>), got "
            f"{attn_implementation!r}; e.g. {', '.join(ATTN_PREFIX + v for v in NAMED_VARIANTS)}."
        )
    dst = Path(training_args.output_dir)
    if dst.resolve() == stock.resolve():
        raise CheckpointError("DST must differ from STOCK (the teacher is read from STOCK).")
    if (dst / "config.json").exists() and not args.overwrite and not training_args.resume_from_checkpoint:
        raise CheckpointError(f"{dst} already holds a checkpoint; pass --overwrite to replace it.")


def build_student(stock: Path, attn_implementation: str, head: str | None, seed: int, **config_fields):
    """STOCK converted to `attn_implementation` with head `head` (default: STOCK's) and `config_fields` (synthesizer
    options, num_labels ...), new parameters seeded by `seed`; and STOCK as its eager teacher of the same class.
    Returns `(student, teacher, head)`."""
    from ..modeling.configuration_synthesizer import ATTN_PREFIX, canonical_variant
    from .calibration import load_teacher
    from .checkpoints import default_head, load_config
    from .loading import quiet_logs

    options = {k: v for k, v in config_fields.items() if v is not None}
    options["synthesizer_variant"] = canonical_variant(attn_implementation[len(ATTN_PREFIX):])
    family, config = load_config(stock, **options)
    head = head or default_head(family, config)
    if head not in family.heads:
        raise ValueError(f"--head {head!r} is not a {family.name} head; choose one of {', '.join(sorted(family.heads))}.")
    torch.manual_seed(seed)  # the new synthesizer parameters (before calibration, if any) and a new head
    with quiet_logs():  # the per-key load report: the new synthesizer weights are "missing" by design
        model = family.heads[head].from_pretrained(stock, config=config)
        teacher = load_teacher(stock, like=model)
    return model, teacher, head


def text_length(config, requested: int | None) -> int:
    """Tokens per text: `requested` (default 128) capped by the synthesizer length and the position limit."""
    limit = min(config.synthesizer_length, getattr(config, "max_position_embeddings", config.synthesizer_length))
    return min(requested or min(limit, 128), limit)


def calibrate(model, teacher, texts, tokenizer, max_length: int, args, say=print):
    """Closed-form calibration on the first `args.calibration_samples` texts (when `args.calibrate_first`); prints its
    summary as soon as it is done. Returns the `CalibrationReport` or None."""
    from .calibration import calibrate_synthesizer

    if not args.calibrate_first:
        return None
    report = calibrate_synthesizer(model, teacher, texts[: args.calibration_samples], tokenizer,
                                   max_length=max_length, max_samples=args.calibration_samples)
    say(report.summary(convert_holds_out=False) + ".")  # distill measures on its calibration texts, holds none out
    return report


def distillation_trainer(model, teacher, training_args, texts, tokenizer, max_length, args, evaluation=None,
                         prediction_loss_weight: float = 0.0) -> DistillationTrainer:
    """A `DistillationTrainer` on `texts` (tokenized to `max_length`) with the loss settings of `args`."""
    from transformers import DataCollatorWithPadding

    return DistillationTrainer(
        model=model, args=training_args, train_dataset=tokenized_dataset(texts, tokenizer, max_length),
        eval_dataset=evaluation, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        teacher=teacher, attention_loss_weight=args.attention_loss_weight, hidden_loss=args.hidden_loss,
        hidden_loss_weight=args.hidden_loss_weight, prediction_loss_weight=prediction_loss_weight,
        attention_learning_rate=(10 * training_args.learning_rate if args.attention_learning_rate is None
                                 else args.attention_learning_rate),  # an explicit 0 freezes the synthesizer
    )


def save_student(model, tokenizer, stock: Path, dst: Path, facts: dict, section: str, trainer, *,
                 sentence_transformers: bool) -> None:
    """Save the student to `dst`: weights, config, code, the card (`section` + the Trainer's settings), tokenizer,
    `distillation.json`; STOCK's other files (sentence-transformers' modules.json, pooling ...) only when the student
    is an encoder like STOCK (`sentence_transformers`): a classifier or MLM is not a sentence-transformers model."""
    from .convert import cap_tokenizer_length, carry_over
    from .model_card import trainer_card_kwargs

    card = trainer_card_kwargs(trainer, model_name=dst.name, finetuned_from=facts.get("base_model"))
    model.save_pretrained(dst, model_card_kwargs={
        "base_model": facts.get("base_model"), "tags": ["distillation"],
        "extra_sections": section + "\n\n" + card["extra_sections"].replace(
            "## Training procedure", "### Trainer settings (last stage)"),
    })
    tokenizer.save_pretrained(dst)
    cap_tokenizer_length(dst / "tokenizer_config.json", model.config.synthesizer_length)
    if sentence_transformers:
        carry_over(stock, dst, model.config)
    (dst / DISTILLATION_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")


def general_steps(training_args: TrainingArguments, args) -> int:
    """Steps of general distillation: --max_steps when given (text files), else --general_steps."""
    return training_args.max_steps if training_args.max_steps > 0 else args.general_steps


def step_size(texts: int, training_args: TrainingArguments) -> str:
    """Texts per optimizer step as the plan states it: the batch size (per device x accumulation x devices), or all
    `texts` when there are fewer (every step sees all `texts`), e.g. "2 texts (all of them; batch size 16)"."""
    batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
             * max(training_args.world_size, 1))
    if texts < batch:
        return f"{count(texts, 'text')} (all of them; batch size {batch})"
    return f"{count(batch, 'text')} (of {texts})"


def _general_plan(stock, dst, attn_implementation, head, args, texts: int, steps, per_step: str, max_length) -> str:
    calibration = (f"  1. calibration on {count(min(texts, args.calibration_samples), 'text')}\n"
                   if args.calibrate_first else
                   "  1. calibration: skipped (--no_calibrate_first)\n")
    general = (f"{count(steps, 'step')} of {per_step}, length <= {max_length}, against {stock}" if steps else
               "skipped (--general_steps 0): the student is saved as calibrated")
    return (f"Distilling {stock} into {dst} ({attn_implementation}, head {head}), general distillation only (a text "
            f"file; a labelled .csv/.json runs the task recipe):\n{calibration}  2. general distillation: {general}")


def general_facts(stock: Path, config, head: str, texts, max_length: int, args, calibrated: bool) -> dict:
    """What general distillation used (teacher as given, texts, tokens, settings), for the
    card and `distillation.json`; `stage_facts` adds what the run did."""
    return {
        "teacher": args.base_model or str(stock),
        "base_model": args.base_model,
        "variant": config.synthesizer_variant,
        "head": head,
        "train_file": str(args.train_file),
        "train_texts": len(texts),
        "max_seq_length": max_length,
        "calibrated": calibrated,
        "calibration_texts": min(len(texts), args.calibration_samples) if calibrated else 0,
        "attention_loss_weight": args.attention_loss_weight,
        "hidden_loss": args.hidden_loss,
        "hidden_loss_weight": args.hidden_loss_weight,
    }


def distill(stock, training_args: TrainingArguments, distillation_args: DistillationArguments,
            attn_implementation: str | None = None, *, verbose: bool = True,
            **synthesizer_options) -> DistillationResult:
    """Convert the stock checkpoint folder `stock` to `attn_implementation` (as `hf-synthesizer convert` does),
    calibrate it, distill it from the stock model and save it to `training_args.output_dir`.

    A labelled `distillation_args.train_file` (.csv/.tsv/.json/.jsonl) runs the whole task recipe
    (`distill_for_task`: a sequence classifier). A text file runs general
    distillation only: the student keeps STOCK's head; `general_steps` steps (or `training_args.max_steps`).
    `verbose`: print the stages up front, the calibration summary when it is done, and a summary at the end.
    Returns the student, the trainer and the recorded facts. Raises `CheckpointError`/`ValueError` naming the fix
    for a bad source, an existing output folder or empty text.
    """
    stock = Path(stock)
    if is_labelled(distillation_args.train_file):
        return distill_for_task(stock, training_args, distillation_args, attn_implementation, verbose=verbose,
                                **synthesizer_options)
    from transformers import AutoTokenizer

    say = print if verbose else (lambda *a, **k: None)
    args, dst = distillation_args, Path(training_args.output_dir)
    check_request(stock, attn_implementation, training_args, args)
    texts = read_texts(args.train_file, args.max_train_samples)
    steps = general_steps(training_args, args)
    training_args = dataclasses.replace(training_args, max_steps=steps)
    model, teacher, head = build_student(stock, attn_implementation, args.head, training_args.seed,
                                         **synthesizer_options)
    tokenizer = AutoTokenizer.from_pretrained(stock)
    config = model.config
    max_length = text_length(config, args.max_seq_length)
    say(_general_plan(stock, dst, attn_implementation, head, args, len(texts), steps,
                      step_size(len(texts), training_args), max_length), flush=True)
    if getattr(config, "is_encoder_decoder", False) and "decoder" in (getattr(config, "synthesizer_stacks", ()) or ()):
        logger.warning("Distillation trains the encoder's attention; the decoder's synthesized self-attention is "
                       + ("calibrated only." if args.calibrate_first else "left at its plain initialisation "
                          "(pass --calibrate_first to initialise it from the teacher)."))
    calibration = calibrate(model, teacher, texts, tokenizer, max_length, args, say)
    evaluation = None
    if args.validation_file:
        evaluation = tokenized_dataset(read_texts(args.validation_file), tokenizer, max_length)
    trainer = distillation_trainer(model, teacher, training_args, texts, tokenizer, max_length, args, evaluation)
    before = None
    if evaluation is not None and not training_args.resume_from_checkpoint:
        before = trainer.evaluate()  # the held-out loss before distilling (train() restarts the log history)
    train_output = None
    if steps:  # Trainer's max_steps=0 would mean "train num_train_epochs": 0 skips the stage instead
        train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or None)
        if evaluation is not None:
            trainer.evaluate()
    facts = {**general_facts(stock, model.config, head, texts, max_length, args, calibration is not None),
             **stage_facts(trainer, train_output, before)}
    if trainer.is_world_process_zero():
        save_student(model, tokenizer, stock, dst, facts, general_card_section(facts), trainer,
                     sentence_transformers=head == "base")
    losses = facts["losses"]
    if not steps:
        say(f"Saved {stock} converted into {dst} (variant {facts['variant']}), "
            + ("calibrated" if calibration is not None else "not calibrated") + ", not distilled (--general_steps 0).")
        return DistillationResult(model, trainer, facts, calibration)
    say(f"Distilled {stock} into {dst} (variant {facts['variant']}): {count(facts['steps'], 'step')} on "
        f"{count(len(texts), 'text')}; "
        f"loss (first -> last training batch) {losses['first']['total']:.4f} -> {losses['last']['total']:.4f}"
        + (f"; held-out {losses['eval_first']['total']:.4f} -> {losses['eval']['total']:.4f}"
           if "eval" in losses else "") + ".")
    return DistillationResult(model, trainer, facts, calibration)


# ------------------------------------------------------------------------------------------ the task recipe
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
        missing = sum(x is None for x in data[label_column])
        if missing:
            raise ValueError(f"{files[split]} has {missing} row(s) without a {label_column!r} value: drop them, or "
                             f"give them a label (the task recipe trains and evaluates on labelled rows only).")
    feature = raw["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return raw, list(feature.names)
    if feature.dtype in ("float32", "float64"):
        raise ValueError(f"Labels in {label_column!r} are floats: the task recipe distills classifiers (integer or "
                         f"string labels).")
    return raw, sorted({x for data in raw.values() for x in data[label_column]})


def label_fields(labels: list, teacher_dir=None) -> dict:
    """num_labels / id2label / label2id for `labels`; a given teacher's own order when its label2id names them all
    (raises ValueError when its number of labels differs)."""
    names = [str(x) for x in labels]
    if teacher_dir is not None:
        from transformers import AutoConfig

        from .checkpoints import read_config_dict

        read_config_dict(teacher_dir)  # a CheckpointError naming the problem when it is no checkpoint folder
        teacher = AutoConfig.from_pretrained(teacher_dir)  # num_labels even where config.json leaves it out
        label2id, count = teacher.label2id or {}, teacher.num_labels
        if count != len(names):
            raise ValueError(f"--teacher {teacher_dir} classifies {count} labels, the data has {len(names)} "
                             f"({', '.join(names)}): pass the teacher fine-tuned on this task.")
        if set(label2id) == set(names):
            names = sorted(names, key=lambda n: int(label2id[n]))
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def encode(data, tokenizer, text_column, label_column, label2id, max_length):
    """Tokenized `data` with `labels` ids (`label2id` keyed by the label's string)."""
    def tokenize(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded["labels"] = [label2id[str(x)] for x in batch[label_column]]
        return encoded

    return data.map(tokenize, batched=True, remove_columns=data.column_names)


def stage_args(training_args: TrainingArguments, work: Path, stage: str, **fields) -> TrainingArguments:
    """The user's `TrainingArguments` for one stage: its own output folder `work/<stage>` (a temporary folder, not
    DST), no checkpoints (the recipe cannot resume a stage), no evaluation during training (the recipe evaluates at
    the end), `fields` on top."""
    return dataclasses.replace(training_args, output_dir=str(work / stage), eval_strategy="no", save_strategy="no",
                               load_best_model_at_end=False, **fields)


def fine_tune_teacher(stock: Path, train, tokenizer, fields: dict, training_args, work: Path,
                      folder: Path) -> tuple[Path, dict]:
    """Stage 1: STOCK (its own class and attention) fine-tuned on `train` (tokenized, with labels) with `Trainer`
    (in `work`), saved with the tokenizer to `folder`. Returns the folder and what was done."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

    from .loading import quiet_logs

    with quiet_logs():  # the new classification head is "missing" by design
        model = AutoModelForSequenceClassification.from_pretrained(stock, **fields)
    model.accepts_loss_kwargs = False  # per-batch mean loss (see examples/run_classification.py)
    args = stage_args(training_args, work, "teacher-training", max_steps=-1)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    output = trainer.train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, {"epochs": args.num_train_epochs, "steps": trainer.state.global_step,
                    "learning_rate": args.learning_rate, "train_runtime_s": output.metrics.get("train_runtime")}


def validation_metrics(model, data, tokenizer, training_args, work: Path, metric) -> dict:
    """`metric` (a `hf_synthesizer.conversion.metrics.Metric`) and the loss of `model` on `data` (with labels)."""
    from transformers import DataCollatorWithPadding, Trainer

    def compute(prediction):
        return metric.compute(predictions=prediction.predictions.argmax(-1), references=prediction.label_ids)

    trainer = Trainer(model=model, args=stage_args(training_args, work, "evaluation"), compute_metrics=compute,
                      data_collator=DataCollatorWithPadding(tokenizer))
    found = trainer.predict(data, metric_key_prefix="validation").metrics  # evaluate() would log "epoch 0"
    return {k.removeprefix("validation_"): v for k, v in found.items()
            if k.removeprefix("validation_") in (metric.name, "loss")}


def task_card_section(facts: dict) -> str:
    """The card's "Distillation" section for the task recipe: the stages, their losses, the validation results."""
    tuned = facts["teacher_fine_tuning"]
    general, task = facts["general"], facts["task"]
    teacher = (f"the stock model fine-tuned here on the training file ({count(tuned['epochs'], 'epoch')}, "
               f"{count(tuned['steps'], 'step')}, learning rate {tuned['learning_rate']:g})" if tuned
               else f"`{facts['teacher']}` (given)")
    lines = [
        "## Distillation",
        "",
        f"Made by `hf-synthesizer distill`'s task recipe "
        f"(`hf_synthesizer.conversion.distillation.distill_for_task`) from the stock model "
        f"{teacher_text(facts['stock'])}, for the "
        f"{len(facts['labels'])} labels of `{facts['train_file']}` ({facts['train_texts']:,} labelled texts"
        + (f" and {facts['unlabeled_texts']:,} unlabeled ones" if facts["unlabeled_texts"] else "")
        + f", truncated to {facts['max_seq_length']} tokens):",
        "",
        f"1. teacher: {teacher};",
        "2. calibration: " + (f"closed form on {count(facts['calibration_texts'], 'text', ',')};"
                              if facts["calibrated"] else
                               "skipped;"),
        "3. general distillation from the stock model: " + (
            f"{count(general['steps'], 'step', ',')} of {count(general['texts_per_step'], 'text')} on average, "
            f"learning rate {general['learning_rate']:g} ({general['attention_learning_rate']:g} for the synthesizer "
            f"parameters), attention KL + hidden-state {facts['hidden_loss']} loss;" if general
            else "skipped (`--general_steps 0`);"),
        f"4. task stage against the fine-tuned teacher: {count(task['steps'], 'step', ',')} "
        f"({count(task['epochs'], 'epoch', '.2f')}) of {count(task['texts_per_step'], 'text')}, KL to its logits "
        f"(temperature 1) + the same per-layer losses, no labels.",
        "",
        "The teachers were frozen; the student's dropout was off while distilling.",
        "",
        *(["Losses of the general stage:", "", *loss_table(general["losses"]), ""] if general else []),
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


def _plan(stock, dst, attn_implementation, args, labels, texts, general_steps, epochs, per_step: str,
          max_length) -> str:
    teacher = (f"{args.teacher} (given)" if args.teacher else
               f"fine-tune {stock} on {args.train_file}, {count(epochs, 'epoch')} "
               + (f" (kept in {args.teacher_output_dir})" if args.teacher_output_dir else
                  " (not kept: --teacher_output_dir DIR keeps it)"))
    calibration = (f"closed form on {count(min(len(texts), args.calibration_samples), 'text')}" if args.calibrate_first
                   else "skipped (--no_calibrate_first)")
    return (f"Distilling {stock} into {dst} ({attn_implementation} sequence classifier, {len(labels)} labels: "
            f"{', '.join(map(str, labels[:10]))}{' ...' if len(labels) > 10 else ''}), 4 stages:\n"
            f"  1. teacher: {teacher}\n  2. calibration: {calibration}\n"
            + (f"  3. general distillation: {count(general_steps, 'step')} of {per_step}, length <= {max_length}, "
               f"against {stock}\n" if general_steps else "  3. general distillation: skipped (--general_steps 0)\n")
            + f"  4. task stage: {count(epochs, 'epoch')} against the fine-tuned teacher (logits, attention, hidden "
              f"states)\n"
            + (f"  then the student's and the teacher's accuracy on {args.validation_file}" if args.validation_file
               else "  (no --validation_file: no validation metrics)"))


def check_task_request(stock: Path, training_args: TrainingArguments) -> None:
    """Refuse what the task recipe cannot do, naming what to do instead: a T5 source, --resume_from_checkpoint,
    --max_steps."""
    from .checkpoints import family_of

    family, _ = family_of(stock)
    if family.name != "bert":
        raise ValueError(f"The task recipe distills BERT classifiers; {stock} is a {family.name} checkpoint. Distill "
                         f"a T5 encoder on a text file (one text per line) instead, then fine-tune it.")
    if training_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint resumes general distillation of a text file; the task recipe "
                         "runs several stages: rerun it (--overwrite), or pass --teacher to skip the fine-tuning.")
    if training_args.max_steps > 0:
        raise ValueError("--max_steps sets general distillation's steps for a text file; the task recipe has several "
                         "stages: use --general_steps (stage 3) and --num_train_epochs (stages 1 and 4).")


def distillation_stages(model, stock_teacher, teacher_dir: Path, texts, tokenizer, max_length, training_args, args,
                        work: Path, say=print) -> tuple[DistillationTrainer, dict, dict]:
    """Stages 3 and 4 on `texts`: general distillation from `stock_teacher` (`args.general_steps` steps), then the
    task stage against the fine-tuned classifier in `teacher_dir` (`num_train_epochs`). Returns the task stage's
    trainer and both stages' facts (`stage_facts`; None for a skipped general stage, `--general_steps 0`)."""
    from .calibration import load_teacher
    from .loading import quiet_logs

    general_facts = None  # --general_steps 0 skips the stage (Trainer's max_steps=0 would train whole epochs)
    if args.general_steps:
        say(f"Stage 3/4: general distillation ({count(args.general_steps, 'step')})", flush=True)
        general = distillation_trainer(model, stock_teacher, stage_args(training_args, work, "general",
                                                                        max_steps=args.general_steps),
                                       texts, tokenizer, max_length, args)
        general_facts = stage_facts(general, general.train())
    else:
        say("Stage 3/4: general distillation skipped (--general_steps 0)", flush=True)
    say(f"Stage 4/4: task stage ({count(training_args.num_train_epochs, 'epoch')} against {teacher_dir})", flush=True)
    with quiet_logs():
        task_teacher = load_teacher(teacher_dir, like=model)
    task = distillation_trainer(model, task_teacher, stage_args(training_args, work, "task", max_steps=-1),
                                texts, tokenizer, max_length, args, prediction_loss_weight=1.0)
    return task, general_facts, stage_facts(task, task.train())


def validation_report(student, teacher_dir: Path, data, tokenizer, training_args, work: Path, file) -> dict:
    """Accuracy and loss of the student and of the teacher in `teacher_dir` on `data` (tokenized, with labels), and
    where the accuracy came from (`metrics.load_metric`: evaluate's module, or the local computation)."""
    from transformers import AutoModelForSequenceClassification

    from .loading import quiet_logs
    from .metrics import load_metric

    metric = load_metric("accuracy")
    with quiet_logs():
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    return {"file": str(file), "examples": len(data), "metric": metric.name, "metric_source": metric.source,
            **{who: validation_metrics(m, data, tokenizer, training_args, work, metric)
               for who, m in (("student", student), ("teacher", teacher))}}


def distill_for_task(stock, training_args: TrainingArguments, args, attn_implementation: str | None, *,
                     verbose: bool = True, **synthesizer_options) -> DistillationResult:
    """`run_task_recipe` with a temporary folder for the stages' Trainers (and the fine-tuned teacher unless
    `args.teacher_output_dir`), deleted at the end: DST holds the student only."""
    with tempfile.TemporaryDirectory(prefix="hf-synthesizer-distill-") as work:
        return run_task_recipe(stock, training_args, args, attn_implementation, Path(work), verbose=verbose,
                               **synthesizer_options)


def run_task_recipe(stock, training_args: TrainingArguments, args, attn_implementation: str | None, work: Path, *,
                    verbose: bool = True, **synthesizer_options) -> DistillationResult:
    """Run the recipe (module docstring) from the stock checkpoint folder `stock` on `args.train_file` (labelled:
    `args.text_column`, `args.label_column`) and save the student classifier to `training_args.output_dir`.

    args: `DistillationArguments`; `synthesizer_options`: config fields of the student (synthesizer_length ...).
    `verbose`: print the stages up front, each stage as it starts, the calibration summary when it is done and the
    validation results. Returns a `DistillationResult` (the task stage's trainer). Raises ValueError /
    `CheckpointError` naming the fix (a T5 source, resuming, a teacher with other labels, bad files)."""
    from transformers import AutoTokenizer

    say = print if verbose else (lambda *a, **k: None)
    stock, dst = Path(stock), Path(training_args.output_dir)
    check_request(stock, attn_implementation, training_args, args)
    check_task_request(stock, training_args)
    raw, labels = load_labelled(args.train_file, args.validation_file, args.text_column, args.label_column)
    if args.max_train_samples:
        raw["train"] = raw["train"].select(range(min(len(raw["train"]), args.max_train_samples)))
    fields = label_fields(labels, args.teacher)
    texts = [str(t) for t in raw["train"][args.text_column]]
    extra = read_texts(args.unlabeled_file) if args.unlabeled_file else []
    tokenizer = AutoTokenizer.from_pretrained(stock)
    model, stock_teacher, _ = build_student(stock, attn_implementation, "sequence-classification", training_args.seed,
                                            **synthesizer_options, **fields)
    max_length = text_length(model.config, args.max_seq_length)
    say(_plan(stock, dst, attn_implementation, args, labels, texts + extra, args.general_steps,
              training_args.num_train_epochs, step_size(len(texts + extra), training_args), max_length), flush=True)
    encoded = {split: encode(data, tokenizer, args.text_column, args.label_column, fields["label2id"], max_length)
               for split, data in raw.items()}
    teacher_dir, tuned = Path(args.teacher or args.teacher_output_dir or work / "teacher"), None
    if not args.teacher:
        say(f"Stage 1/4: fine-tuning the teacher ({count(training_args.num_train_epochs, 'epoch')})", flush=True)
        teacher_dir, tuned = fine_tune_teacher(stock, encoded["train"], tokenizer, fields, training_args, work,
                                               teacher_dir)
    say("Stage 2/4: calibration", flush=True)
    calibration = calibrate(model, stock_teacher, texts + extra, tokenizer, max_length, args, say)
    task, general_facts, task_facts = distillation_stages(model, stock_teacher, teacher_dir, texts + extra, tokenizer,
                                                          max_length, training_args, args, work, say)
    facts = {
        "recipe": "task", "stock": str(stock),
        "teacher": args.teacher or args.teacher_output_dir, "teacher_fine_tuning": tuned, "base_model": args.base_model,
        "variant": model.config.synthesizer_variant, "head": "sequence-classification",
        "labels": [str(x) for x in labels], "train_file": str(args.train_file), "train_texts": len(texts),
        "unlabeled_texts": len(extra), "max_seq_length": max_length, "calibrated": calibration is not None,
        "calibration_texts": min(len(texts + extra), args.calibration_samples) if calibration is not None else 0,
        "attention_loss_weight": args.attention_loss_weight, "hidden_loss": args.hidden_loss,
        "hidden_loss_weight": args.hidden_loss_weight, "general": general_facts, "task": task_facts,
    }
    if "validation" in encoded:
        facts["validation"] = validation_report(model, teacher_dir, encoded["validation"], tokenizer, training_args,
                                                work, args.validation_file)
    if task.is_world_process_zero():
        save_student(model, tokenizer, stock, dst, facts, task_card_section(facts), task, sentence_transformers=False)
    say(_summary(facts, dst))
    return DistillationResult(model, task, facts, calibration)


def _summary(facts: dict, dst: Path) -> str:
    general, task = (facts["general"] or {}).get("losses"), facts["task"]["losses"]
    stage3 = (f"general stage loss {general['first']['total']:.4f} -> {general['last']['total']:.4f}" if general
              else "general stage skipped")
    lines = [f"Distilled {facts['stock']} into {dst} (variant {facts['variant']}, sequence classifier): {stage3}, "
             f"task stage {task['first']['total']:.4f} -> {task['last']['total']:.4f} (first -> last training batch)."]
    validation = facts.get("validation")
    if validation:
        name = validation["metric"]
        lines.append(f"Validation {name} on {validation['file']} ({validation['examples']} examples, "
                     f"{validation['metric_source']}): student {validation['student'][name]:.4f}, teacher "
                     f"{validation['teacher'][name]:.4f}.")
    lines.append(f"Load it with AutoModelForSequenceClassification.from_pretrained({str(dst)!r}) after "
                 f"`import hf_synthesizer` (or with trust_remote_code=True).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- CLI
@dataclass
class StudentArguments:
    """`--attn_implementation`: the student's variant (distill refuses sdpa/eager: the teacher is the stock model)."""

    attn_implementation: Optional[str] = field(default=None, metadata={"help": (
        "synthesizer_<variant> of the student, e.g. synthesizer_random, synthesizer_dense, synthesizer_random+vanilla "
        "(any '+' mixture of components). Required.")})


def argument_classes():
    """`HfArgumentParser` dataclasses of `hf-synthesizer distill`: what to distill on, the student's variant, the
    `--synthesizer_*` fields of every family (BERT and T5, as `convert` takes them) and `TrainingArguments`."""
    from .convert import convert_options

    return (DistillationArguments, StudentArguments, convert_options(), TrainingArguments)


def add_parser(subparsers) -> None:
    from transformers import HfArgumentParser

    flags = HfArgumentParser(argument_classes(), add_help=False)
    flags.set_defaults(**RECIPE_TRAINING_DEFAULTS)  # the recommended recipe (docs/conversion.md)
    parser = subparsers.add_parser(
        "distill", parents=[flags], help="Distill a stock BERT/T5 checkpoint into a synthesizer variant: general "
        "distillation on text, or the whole task recipe on a labelled file.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stock", type=Path, help="Stock BERT/T5 checkpoint folder (the teacher).")
    parser.add_argument("dst", type=Path, help="Output folder: the student only (Trainer checkpoint-N folders "
                        "only with --save_strategy steps, to --resume_from_checkpoint; delete them before pushing).")
    parser.set_defaults(func=run)


def _dataclass_from(namespace, cls):
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(namespace, f.name)}
    return cls(**values)


def run(args) -> int:
    from .checkpoints import CheckpointError

    if args.output_dir not in (None, "trainer_output") and Path(args.output_dir).resolve() != args.dst.resolve():
        print(f"hf-synthesizer distill: error: DST ({args.dst}) is the output folder; --output_dir "
              f"{args.output_dir} differs from it. Drop --output_dir.", file=sys.stderr)
        return 2
    args.output_dir = str(args.dst)
    try:
        distillation_args, student, synth_args, training_args = (
            _dataclass_from(args, cls) for cls in argument_classes()
        )
        distill(args.stock, training_args, distillation_args, student.attn_implementation, **synth_args.options())
    except (CheckpointError, ValueError, OSError) as e:
        print(f"hf-synthesizer distill: error: {e}", file=sys.stderr)
        return 2
    return 0
