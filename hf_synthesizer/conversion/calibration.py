"""Attention-transfer calibration: initialise a converted synthesizer so that it reproduces how the stock
(teacher) checkpoint attended, instead of starting its attention from noise.

The teacher runs on a small unlabeled sample. A recording attention function (registered with
`AttentionInterface` and `AttentionMaskInterface` under `PROBE_NAME`) captures, for every self-attention
layer, the teacher's logits `S = Q K^T * scaling (+ position bias)`, its queries `Q`, and which (query, key)
pairs are real (padding and causal masks). From these, each component of the student's `SynthesizerLogits`
is initialised in closed form:

- random / fixed random: `R_h = log(mean_x P_h(x))`, the log of the teacher's attention probabilities
  averaged over the examples in which both positions are real tokens, each row centred (softmax is
  invariant to a per-row constant). Positions never seen (beyond the longest calibration input) are
  filled with the mean of the observed entries on the same diagonal `j - i`, else the row minimum.
- factorized random: the best rank-k approximation of that matrix (truncated SVD of the observed block
  `U S V^T`, `R1 = U_k S_k^{1/2}`, `R2 = V_k S_k^{1/2}`); rows of unseen positions are the least-squares
  fit of the filled matrix against the other factor.
- dense: `W1, b1` are the teacher's query projection with each hidden unit shifted by the negative of its
  1st percentile over the sample (`b1 = b_q + c`, `c >= 0`), so the relu is the identity on ~99 % of
  tokens and `z = relu(W1 x + b1)` is (almost) an affine function of the teacher query. Given W1, the
  output layer is a ridge regression per key position `j`: `[W2_h[:, j]; b2_h[j]] =
  argmin sum_{x, i: (i, j) real} (z_i . w + b - S_h(x)[i, j])^2 + lambda |w|^2`, solved in closed form
  from accumulated normal equations. (With the key held at its positional average this is exactly
  dot-product attention, so the fit learns "the average key at position j".) A shared W2 pools all heads.
  Key positions never seen get the count-weighted average solution of the observed positions > 0.
- factorized dense: not calibrated (the product `A_i[j mod a] B_i[j // a]` is bilinear, no closed form);
  it keeps the plain near-uniform initialisation.
- mixtures: the weight of the vanilla component starts at `vanilla_weight` (default 0.9), the others share
  the rest; mixtures without vanilla keep equal weights (each component already approximates the teacher).

T5: the teacher's logits include the relative position bias `B`. A student that adds `B` to its synthesized logits
too (`synthesizer_position_bias=True`, the default) is fitted to the teacher minus `B` (`R = log mean P - B`, dense
target `S - B`), so that `B` counts once. An encoder-decoder teacher reads each text on both sides (the decoder the
same tokens shifted right, as for labels): encoder and decoder self-attention are calibrated, the decoder on its
causal rows (entries above the diagonal are never read). Cross-attention stays dot-product and is not recorded.

`calibrate_synthesizer(model, teacher, texts, tokenizer)` runs both steps; `record_teacher_attention` and
`apply_calibration` are the two halves (record once, calibrate several students). `compare_to_teacher`
measures how close a student is to the teacher (hidden-state cosine, masked-LM top-1 agreement).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AttentionInterface, DataCollatorWithPadding
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

from ..modeling.synthesizer_attention import SynthesizerLogits
from ..modeling.synthesizer_math import attention_probabilities

PROBE_NAME = "attention_transfer_probe"
logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------- recording
@dataclass
class LayerRecord:
    """What the teacher did in one self-attention layer over the calibration sample (one entry per batch)."""

    logits: list[torch.Tensor] = field(default_factory=list)  # (B, H, l, l) float32, unmasked
    queries: list[torch.Tensor] = field(default_factory=list)  # (B, H, l, dh)
    pairs: list[torch.Tensor] = field(default_factory=list)  # (B, l, l) bool: query i and key j both real
    position_bias: list[torch.Tensor] = field(default_factory=list)  # (H, l, l) T5's relative bias, in `logits`
    query_weight: torch.Tensor | None = None  # (H*dh, d) the teacher's query projection
    query_bias: torch.Tensor | None = None  # (H*dh,)


@dataclass
class TeacherAttention:
    """Per attention-module name (as in the teacher), the recorded layer."""

    layers: dict[str, LayerRecord]
    num_examples: int

    def max_length(self) -> int:
        return max(p.shape[-1] for rec in self.layers.values() for p in rec.pairs)


class _Recorder:
    active: "_Recorder | None" = None

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.records: dict[str, LayerRecord] = {}
        self.token_mask: torch.Tensor | None = None  # (B, l) of the current batch
        self.decoder_token_mask: torch.Tensor | None = None  # (B, l') of an encoder-decoder's decoder inputs


def _probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager dot-product attention that also records logits, queries and real (query, key) pairs."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        logits = logits + position_bias.float()
    probs = attention_probabilities(logits, attention_mask)
    output = torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous()
    recorder = _Recorder.active
    name = recorder.names.get(id(module)) if recorder is not None else None
    if name is not None and query.shape[2] == key.shape[2]:  # self-attention only
        batch, _, lq, lk = logits.shape
        if attention_mask is None:
            keep = torch.ones(batch, lq, lk, dtype=torch.bool, device=logits.device)
        elif attention_mask.dtype == torch.bool:
            keep = attention_mask[:, 0].expand(batch, lq, lk)
        else:
            keep = (attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min / 2).expand(batch, lq, lk)
        token_mask = recorder.token_mask
        if getattr(module, "is_decoder", False) and recorder.decoder_token_mask is not None:
            token_mask = recorder.decoder_token_mask
        if token_mask is not None and token_mask.shape[-1] == lq:
            keep = keep & token_mask[:, :, None].bool() & token_mask[:, None, :].bool()
        rec = recorder.records.setdefault(name, LayerRecord())
        rec.logits.append(logits.detach().cpu())
        rec.queries.append(query.detach().float().cpu())
        rec.pairs.append(keep.detach().cpu())
        if position_bias is not None:
            rec.position_bias.append(position_bias.detach().float().expand(1, -1, lq, lk)[0].cpu())
    return output, (probs if kwargs.get("output_attentions") else None)


def _probe_mask(*args, **kwargs):
    """The full boolean mask `(B, 1, lq, lk)`, causal part included and always materialised: the probe reads which
    pairs are real from it (synthesizer attention's own mask hands over padding alone, its modules add causality)."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(PROBE_NAME, _probe_attention)
AttentionMaskInterface.register(PROBE_NAME, _probe_mask)


def _query_projection(module: nn.Module) -> nn.Linear | None:
    for name in ("query", "q", "q_proj"):
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    return None


# Cross-attention modules of the stock models (BERT decoders, T5): their queries and keys come from different
# sequences, and the synthesizer replaces self-attention only.
CROSS_ATTENTION_NAMES = ("crossattention", "EncDecAttention")


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Self-attention modules that own a query projection (the teacher side), by qualified name."""
    return {
        name: m for name, m in model.named_modules()
        if _query_projection(m) is not None and not any(part in CROSS_ATTENTION_NAMES for part in name.split("."))
    }


def make_batches(texts, tokenizer=None, *, max_length=128, batch_size=32, max_samples=None, text_column="text"):
    """Calibration batches from a list of strings, a text file (one example per line), a `datasets` dataset
    (column `text_column`) or an iterable of already tokenized dicts with `input_ids` (and `attention_mask`).

    Text is tokenized with `Dataset.map`, sorted by length (similar lengths together: less padding, and every
    batch's pairs are mostly real) and padded per batch by `DataCollatorWithPadding` in a `DataLoader`."""
    from datasets import Dataset

    source = "The calibration sample"
    if isinstance(texts, (str, os.PathLike)):
        source = f"The file {os.fspath(texts)}"
        with open(texts, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    if isinstance(texts, Dataset):
        source = f"Column {text_column!r} of the dataset"
        dataset = texts.select_columns([text_column]).rename_column(text_column, "text")
    elif isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
        dataset = Dataset.from_dict({"text": list(texts)})
    else:  # already tokenized batches
        batches = []
        for batch in texts:
            ids = torch.as_tensor(batch["input_ids"])
            mask = torch.as_tensor(batch["attention_mask"]) if "attention_mask" in batch else torch.ones_like(ids)
            batches.append({"input_ids": ids, "attention_mask": mask})
        return batches
    if not any(t.strip() for t in dataset["text"]):
        raise ValueError(
            f"{source} has no text: calibration runs the stock model on unlabeled text (one example per line) and "
            f"needs at least one non-empty line."
        )
    if tokenizer is None:
        raise ValueError("Calibration on raw text needs the tokenizer of the teacher checkpoint.")
    if max_samples:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    dataset = dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length, return_token_type_ids=False),
        batched=True, remove_columns=["text"],
    )
    lengths = [len(ids) for ids in dataset["input_ids"]]
    dataset = dataset.select(sorted(range(len(dataset)), key=lengths.__getitem__))
    return DataLoader(dataset, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


# Fewer raw texts than this are all used for calibration: holding some out would leave too few to calibrate on.
MIN_TEXTS_TO_HOLD_OUT = 10


def split_held_out(texts, fraction: float):
    """`(calibration texts, held-out texts or None)`: every `round(1 / fraction)`-th text is held out (0.2: one in 5;
    0.4 rounds to one in 2), to measure agreement on text the calibration did not see. Only raw text (a list of
    strings, a text file, a `datasets` dataset) with at least `MIN_TEXTS_TO_HOLD_OUT` texts is split; anything else
    comes back whole, with None."""
    from datasets import Dataset

    if fraction == 0:
        return texts, None
    if not 0 < fraction < 0.5:
        raise ValueError(f"hold_out must be a fraction in [0, 0.5), got {fraction}.")
    items = texts
    if isinstance(texts, (str, os.PathLike)):
        with open(texts, encoding="utf-8") as handle:
            items = [line.strip() for line in handle if line.strip()]
    is_text_list = isinstance(items, (list, tuple)) and all(isinstance(t, str) for t in items)
    if not (is_text_list or isinstance(items, Dataset)) or len(items) < MIN_TEXTS_TO_HOLD_OUT:
        return texts, None
    step = round(1 / fraction)
    held = [i for i in range(len(items)) if i % step == step - 1]
    kept = [i for i in range(len(items)) if i % step != step - 1]
    if isinstance(items, Dataset):
        return items.select(kept), items.select(held)
    return [items[i] for i in kept], [items[i] for i in held]


@torch.no_grad()
def record_teacher_attention(teacher: nn.Module, batches: Iterable[dict]) -> TeacherAttention:
    """Run the teacher on `batches` with the recording attention function and return what it attended to.

    An encoder-decoder teacher (T5) reads each text on both sides: the encoder gets it as is, the decoder the
    same tokens shifted right behind the decoder start token (`teacher._shift_right`, as for labels), so that its
    causal self-attention is recorded on the same text."""
    modules = _attention_modules(teacher)
    if not modules:
        raise ValueError(
            f"{type(teacher).__name__} has no attention module with a query projection (query/q): it cannot be "
            f"a teacher. Pass a stock checkpoint (its path, or a model with dot-product attention)."
        )
    recorder = _Recorder({id(m): n for n, m in modules.items()})
    # Every config in the tree: T5's encoder and decoder stacks hold copies of the model's config.
    configs = {
        id(m.config): m.config for m in teacher.modules()
        if hasattr(getattr(m, "config", None), "_attn_implementation")
    }
    previous = {key: config._attn_implementation for key, config in configs.items()}
    was_training = teacher.training
    teacher.eval()
    for config in configs.values():
        config._attn_implementation = PROBE_NAME
    _Recorder.active = recorder
    count = 0
    try:
        device = next(teacher.parameters()).device
        takes_decoder_inputs = "decoder_input_ids" in inspect.signature(teacher.forward).parameters
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            recorder.token_mask = batch["attention_mask"].to(device)
            inputs = {"input_ids": input_ids, "attention_mask": recorder.token_mask}
            if takes_decoder_inputs:
                # position 0 holds the start token; position i + 1 the i-th input token
                recorder.decoder_token_mask = torch.cat(
                    [torch.ones_like(recorder.token_mask[:, :1]), recorder.token_mask[:, :-1]], dim=1
                )
                inputs.update(decoder_input_ids=teacher._shift_right(input_ids),
                              decoder_attention_mask=recorder.decoder_token_mask)
            teacher(**inputs)
            count += input_ids.shape[0]
    finally:
        _Recorder.active = None
        for key, config in configs.items():
            config._attn_implementation = previous[key]
        teacher.train(was_training)
    for name, rec in recorder.records.items():
        proj = _query_projection(modules[name])
        rec.query_weight = proj.weight.detach().float().cpu().clone()
        rec.query_bias = None if proj.bias is None else proj.bias.detach().float().cpu().clone()
    return TeacherAttention(recorder.records, count)


# ------------------------------------------------------------------------------------------------- fitting
def _recorded_position_bias(rec: LayerRecord, seen: int) -> torch.Tensor:
    """`(H, seen, seen)`: the position bias the teacher added to its logits. T5's bias depends on `j - i` only, so
    the longest batch's bias holds every shorter one's."""
    return max(rec.position_bias, key=lambda b: b.shape[-1])[:, :seen, :seen]


def mean_attention_log_probs(rec: LayerRecord, length: int, floor: float = 1e-6,
                             without_position_bias: bool = False) -> torch.Tensor:
    """`(H, L, L)`: log of the teacher's mean attention probabilities, rows centred, unseen entries filled.

    `without_position_bias`: minus the position bias `B` the teacher added (T5), for a student that adds `B` to
    `R` itself: `softmax(R + B)` is then the teacher's mean attention, not `B` counted twice."""
    heads = rec.logits[0].shape[1]
    seen = min(max(p.shape[-1] for p in rec.pairs), length)
    total = torch.zeros(heads, seen, seen)
    count = torch.zeros(seen, seen)
    for logits, pairs in zip(rec.logits, rec.pairs):
        l = min(logits.shape[-1], seen)
        logits, pairs = logits[..., :l, :l], pairs[:, :l, :l]
        probs = torch.softmax(logits.masked_fill(~pairs[:, None], -torch.inf), dim=-1).nan_to_num(0.0)
        total[:, :l, :l] += (probs * pairs[:, None]).sum(0)
        count[:l, :l] += pairs.sum(0)
    observed = count > 0
    mean = total / count.clamp_min(1)
    logm = mean.clamp_min(floor).log()
    if without_position_bias and rec.position_bias:
        logm = logm - _recorded_position_bias(rec, seen)
    # Centre each row over its observed entries.
    row_n = observed.sum(-1).clamp_min(1)
    logm = logm - ((logm * observed).sum(-1) / row_n)[..., None]
    # Fill: unseen entries take the mean of observed ones on the same diagonal (j - i), else the head minimum.
    full = torch.zeros(heads, length, length)
    full_obs = torch.zeros(length, length, dtype=torch.bool)
    full[:, :seen, :seen] = logm
    full_obs[:seen, :seen] = observed
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None] + length - 1  # (L, L) in [0, 2L-2]
    obs_off = offsets[full_obs]
    diag_sum = torch.zeros(heads, 2 * length - 1).index_add_(1, obs_off, full[:, full_obs])
    diag_n = torch.zeros(2 * length - 1).index_add_(0, obs_off, torch.ones(obs_off.shape[0]))
    head_min = full[:, full_obs].min(-1).values if full_obs.any() else torch.zeros(heads)
    diag_mean = torch.where(diag_n > 0, diag_sum / diag_n.clamp_min(1), head_min[:, None])
    fill = diag_mean[:, offsets]
    return torch.where(full_obs, full, fill)


def best_rank_k(r: torch.Tensor, seen: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`R1, R2` `(H, L, k)` with `R1 R2^T` the best rank-k fit of `r[:, :seen, :seen]` (truncated SVD, singular
    values split evenly); rows of unseen positions are least-squares fits of `r` against the other factor."""
    heads, length, _ = r.shape
    seen = min(seen, length)
    u, s, vh = torch.linalg.svd(r[:, :seen, :seen])
    k = min(rank, seen)
    root = s[:, :k].sqrt()
    r1 = torch.zeros(heads, length, rank)
    r2 = torch.zeros(heads, length, rank)
    r1[:, :seen, :k] = u[:, :, :k] * root[:, None]
    r2[:, :seen, :k] = vh[:, :k].transpose(-1, -2) * root[:, None]
    if seen < length:
        r1[:, seen:] = r[:, seen:, :seen] @ torch.linalg.pinv(r2[:, :seen].transpose(-1, -2))
        r2[:, seen:] = r[:, :seen, seen:].transpose(-1, -2) @ torch.linalg.pinv(r1[:, :seen].transpose(-1, -2))
    return r1, r2


def dense_fit(rec: LayerRecord, length: int, shared_w2: bool, ridge: float = 1e-3, quantile: float = 0.01,
              without_position_bias: bool = False):
    """Closed-form dense synthesizer fit. Returns `(w1, b1, w2 (H or 1, dh, L), b2 (H or 1, L))`.

    `without_position_bias`: the target is the teacher's logits minus the position bias it added (T5), for a
    student that adds the bias to the dense logits itself."""
    heads, dh = rec.queries[0].shape[1], rec.queries[0].shape[-1]
    # Shift each hidden unit so the relu passes ~all of its calibration values.
    token_values = torch.cat(
        [q.permute(0, 2, 1, 3)[p.diagonal(dim1=1, dim2=2)] for q, p in zip(rec.queries, rec.pairs)]
    )  # (N, H, dh) over real tokens
    sample = token_values.flatten(1)
    if sample.shape[0] > 20000:
        sample = sample[torch.randperm(sample.shape[0], generator=torch.Generator().manual_seed(0))[:20000]]
    shift = (-torch.quantile(sample, quantile, dim=0)).clamp_min(0).view(heads, dh)
    dim = dh + 1
    gram = torch.zeros(heads, length, dim, dim, dtype=torch.float64)
    rhs = torch.zeros(heads, length, dim, dtype=torch.float64)
    count = torch.zeros(length, dtype=torch.float64)
    biases = rec.position_bias if without_position_bias and rec.position_bias else [None] * len(rec.logits)
    for q, logits, pairs, bias in zip(rec.queries, rec.logits, rec.pairs, biases):
        if bias is not None:
            logits = logits - bias
        l = min(q.shape[2], length)
        q, logits, w = q[:, :, :l], logits[..., :l, :l], pairs[:, :l, :l].double()
        z = torch.relu(q + shift[None, :, None]).double()
        z = torch.cat([z, torch.ones_like(z[..., :1])], -1)  # (B, H, l, dh+1)
        outer = z[..., :, None] * z[..., None, :]  # (B, H, l, D, D)
        gram[:, :l] += torch.einsum("bij,bhide->hjde", w, outer)
        rhs[:, :l] += torch.einsum("bij,bhid,bhij->hjd", w, z, logits.double() * w[:, None])
        count[:l] += w.sum((0, 1))
    if shared_w2:
        gram, rhs = gram.sum(0, keepdim=True), rhs.sum(0, keepdim=True)
    diag_scale = gram[..., :dh, :dh].diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (H', L)
    reg = torch.zeros(dim, dim, dtype=torch.float64)
    reg[:dh, :dh] = torch.eye(dh, dtype=torch.float64)
    observed = count > 0
    solution = torch.zeros(gram.shape[0], length, dim, dtype=torch.float64)
    a = gram[:, observed] + ridge * diag_scale[:, observed, None, None] * reg
    solution[:, observed] = torch.linalg.solve(a, rhs[:, observed])
    if not observed.all():
        weights = count * observed
        if observed.sum() > 1:
            weights[0] = 0  # the first position (e.g. [CLS]) is special: not a model for unseen positions
        avg = (solution * weights[None, :, None]).sum(1) / weights.sum()
        solution[:, ~observed] = avg[:, None]
    w1 = rec.query_weight.clone()
    bias = rec.query_bias if rec.query_bias is not None else torch.zeros(w1.shape[0])
    b1 = bias + shift.flatten()
    w2 = solution[..., :dh].transpose(-1, -2).float()  # (H', dh, L)
    b2 = solution[..., dh].float()  # (H', L)
    return w1, b1, w2, b2


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    target = getattr(module, name)
    with torch.no_grad():
        target.copy_(value.to(device=target.device, dtype=target.dtype))


def _match_teacher_name(student_name: str, teacher_names) -> str | None:
    """The teacher attention module for a student attention module: same name, or equal after dropping a
    leading model prefix on either side (a `BertModel` teacher for a `BertForMaskedLM` student)."""
    if student_name in teacher_names:
        return student_name
    for t in teacher_names:
        if student_name.endswith("." + t) or t.endswith("." + student_name):
            return t
    return None


@torch.no_grad()
def apply_calibration(
    model: nn.Module,
    teacher_attention: TeacherAttention,
    *,
    vanilla_weight: float = 0.9,
    ridge: float = 1e-3,
    floor: float = 1e-6,
) -> "CalibrationReport":
    """Initialise every `SynthesizerLogits` of `model` from the recorded teacher attention (in place).

    Returns a `CalibrationReport`: per synthesizer module name, the components that were calibrated (a dict), with
    the agreement of the calibrated attention with the teacher's and the components left uncalibrated (logged)."""
    if not 0.0 < vanilla_weight < 1.0:
        raise ValueError(f"vanilla_weight must be in (0, 1), got {vanilla_weight}.")
    report = {}
    names = list(teacher_attention.layers)
    for name, module in model.named_modules():
        if not isinstance(module, SynthesizerLogits) or module.is_vanilla:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        teacher_name = _match_teacher_name(parent, names)
        if teacher_name is None:
            raise ValueError(
                f"No recorded teacher attention matches {parent!r} (recorded: {names[:3]}...). The teacher must "
                f"be the stock checkpoint the model was converted from."
            )
        rec = teacher_attention.layers[teacher_name]
        if rec.logits[0].shape[1] != module.num_heads:
            raise ValueError(f"{parent}: teacher has {rec.logits[0].shape[1]} heads, student {module.num_heads}.")
        # T5: the teacher's logits include the relative position bias. A student that adds it to the synthesized
        # logits as well (synthesizer_position_bias=True) is fitted to the teacher without it.
        without_bias = bool(rec.position_bias) and getattr(model.get_submodule(parent), "bias_synthesized", True)
        done = []
        length = module.length
        seen = min(max(p.shape[-1] for p in rec.pairs), length)
        needs_r = {"random", "fixed_random", "factorized_random"} & set(module.components)
        r = mean_attention_log_probs(rec, length, floor, without_bias) if needs_r else None
        if "random" in module.components:
            _set(module, "random_r", r)
            done.append("random")
        if "fixed_random" in module.components:
            _set(module, "fixed_random_r", r)
            done.append("fixed_random")
        if "factorized_random" in module.components:
            r1, r2 = best_rank_k(r, seen, module.factorized_random_r1.shape[-1])
            _set(module, "factorized_random_r1", r1)
            _set(module, "factorized_random_r2", r2)
            done.append("factorized_random")
        if "dense" in module.components:
            shared = module.dense_w2.shape[0] == 1 and module.num_heads > 1
            w1, b1, w2, b2 = dense_fit(rec, length, shared, ridge, without_position_bias=without_bias)
            _set(module.dense_w1, "weight", w1)
            _set(module.dense_w1, "bias", b1)
            _set(module, "dense_w2", w2)
            _set(module, "dense_b2", b2)
            done.append("dense")
        if len(module.components) > 1 and "vanilla" in module.components:
            others = len(module.components) - 1
            if module.mixture == "gate":
                # weights (sigmoid(a), 1 - sigmoid(a)) over (synthesizer, vanilla)
                _set(module, "mixture_gate", torch.tensor([math.log((1 - vanilla_weight) / vanilla_weight)]))
            else:
                logits = torch.full_like(module.mixture_logits, math.log((1 - vanilla_weight) / others))
                logits[module.components.index("vanilla")] = math.log(vanilla_weight)
                _set(module, "mixture_logits", logits)
            done.append("mixture")
        report[name] = done
    report = CalibrationReport(report, model, teacher_attention)
    if report.skipped:
        logger.warning("; ".join(report.skipped_lines()))
    return report


# Components without a closed-form calibration, and why.
NOT_CALIBRATED = {
    "factorized_dense": "bilinear in its parameters (A_i[j mod a] * B_i[j // a]): no closed form",
}


def _overlap(student: torch.Tensor, logits: torch.Tensor, pairs: torch.Tensor) -> tuple[float, float, float]:
    """Summed over real query rows and heads: `sum_j min(p_student, p_teacher)` for `student` logits, the same for
    uniform attention over the real keys, and the number of rows."""
    keep = pairs[:, None]  # (B, 1, l, l)
    teacher = torch.softmax(logits.masked_fill(~keep, -torch.inf), -1).nan_to_num(0.0)
    probs = torch.softmax(student.float().masked_fill(~keep, -torch.inf), -1).nan_to_num(0.0)
    uniform = keep / keep.sum(-1, keepdim=True).clamp_min(1)
    rows = keep.any(-1).expand(-1, logits.shape[1], -1)  # (B, H, l)
    return (
        torch.minimum(probs, teacher).sum(-1)[rows].sum().item(),
        torch.minimum(uniform, teacher).sum(-1)[rows].sum().item(),
        rows.sum().item(),
    )


@torch.no_grad()
def _component_logits(module: nn.Module, name: str, rec: LayerRecord, batch: int) -> torch.Tensor | None:
    """What component `name` of a calibrated `module` synthesizes for recorded batch `batch`, from the recording alone
    (dense: `W1 = W_q` after calibration, so `relu(W1 x + b1) = relu(q + b1 - b_q)`); None when it cannot be known."""
    l = rec.logits[batch].shape[-1]
    if name == "vanilla":
        return rec.logits[batch]  # the stock query/key weights: exactly the teacher's logits
    if name in ("random", "fixed_random"):
        return getattr(module, f"{name}_r")[None, :, :l, :l].detach().float().cpu()
    if name == "factorized_random":
        r1, r2 = module.factorized_random_r1.detach().float().cpu(), module.factorized_random_r2.detach().float().cpu()
        return (r1[:, :l] @ r2[:, :l].transpose(-1, -2))[None]
    if name == "dense":
        q = rec.queries[batch]  # (B, H, l, dh)
        bias = rec.query_bias if rec.query_bias is not None else torch.zeros(q.shape[1] * q.shape[-1])
        shift = (module.dense_w1.bias.detach().float().cpu() - bias).view(q.shape[1], 1, q.shape[-1])
        w2, b2 = module.dense_w2.detach().float().cpu(), module.dense_b2.detach().float().cpu()
        return torch.relu(q + shift) @ w2[..., :l] + b2[:, None, :l]
    return None


class CalibrationReport(dict):
    """`{synthesizer module name: [components calibrated]}` (what `apply_calibration` returns), plus how close the
    calibrated attention comes to the teacher's, and what was left as it was and why.

    agreement: `{component or "mixture": (calibrated, uniform)}`: `sum_j min(p_student, p_teacher)` averaged over the
    real query positions, heads and layers (1 = the teacher's attention; `uniform` is what near-uniform attention,
    the plain initialisation, scores). T5's relative position bias is not part of the synthesized logits compared.
    It is measured on `held_out` (the teacher's attention on texts the calibration did not use) when given, else on
    the calibration texts themselves, which overstates it (0.99 on 2 texts, for a random synthesizer whose embeddings
    reach 0.3-0.6 cosine to the stock model's on other sentences). `held_out_examples`: how many texts (0: none).
    """

    def __init__(self, calibrated: dict[str, list[str]], model: nn.Module, teacher_attention: TeacherAttention,
                 held_out: TeacherAttention | None = None):
        super().__init__(calibrated)
        self.num_examples = teacher_attention.num_examples
        self.held_out_examples = held_out.num_examples if held_out is not None else 0
        teacher_attention = held_out if held_out is not None else teacher_attention
        self.skipped: dict[str, list[str]] = {}  # component -> module names
        sums: dict[str, list[float]] = {}
        names = list(teacher_attention.layers)
        for name, module in model.named_modules():
            if name not in calibrated:
                continue
            for component in module.components:
                if component in NOT_CALIBRATED:
                    self.skipped.setdefault(component, []).append(name)
            rec = teacher_attention.layers[_match_teacher_name(name.rsplit(".", 1)[0] if "." in name else "", names)]
            weights = module.mixture_weights().detach().float().cpu()  # (n, H or 1)
            for b in range(len(rec.logits)):
                parts = {c: _component_logits(module, c, rec, b) for c in module.components}
                for c, logits in parts.items():
                    if logits is not None and c != "vanilla":
                        self._add(sums, c, _overlap(logits, rec.logits[b], rec.pairs[b]))
                if len(parts) > 1 and all(v is not None for v in parts.values()):
                    mixed = sum(w[None, :, None, None] * parts[c] for w, c in zip(weights, module.components))
                    self._add(sums, "mixture", _overlap(mixed, rec.logits[b], rec.pairs[b]))
        self.agreement = {c: (v[0] / max(v[2], 1), v[1] / max(v[2], 1)) for c, v in sums.items()}

    @staticmethod
    def _add(sums, key, values):
        total = sums.setdefault(key, [0.0, 0.0, 0.0])
        for i, v in enumerate(values):
            total[i] += v

    def calibrated_lines(self) -> list[str]:
        layers = {}
        for components in self.values():
            for c in components:
                layers[c] = layers.get(c, 0) + 1
        lines = []
        for c, n in layers.items():
            what = "mixture weights (vanilla starts at 0.9)" if c == "mixture" else c
            line = f"calibrated {what} in {n} layer{'s' * (n != 1)}"
            if c in self.agreement:
                calibrated, uniform = self.agreement[c]
                kind = "mixed attention" if c == "mixture" else "attention"
                line += f": {kind} agreement with the stock model {calibrated:.2f} (near-uniform start: {uniform:.2f})"
            lines.append(line)
        if "mixture" in self.agreement and "mixture" not in layers:
            calibrated, uniform = self.agreement["mixture"]
            lines.append(f"mixture weights kept equal: mixed attention agreement {calibrated:.2f} "
                         f"(near-uniform start: {uniform:.2f})")
        return lines

    def skipped_lines(self) -> list[str]:
        return [
            f"not calibrated: {c} in {len(names)} layer{'s' * (len(names) != 1)} ({NOT_CALIBRATED[c]}); it keeps its "
            f"plain near-uniform initialisation"
            for c, names in self.skipped.items()
        ]

    def measured_on(self, convert_holds_out: bool = True) -> str:
        """Which texts the agreement figures come from, in words; `convert_holds_out`: add that `convert` holds texts
        out (False where the caller, as `distill`, measures on the calibration texts only)."""
        if self.held_out_examples:
            return (f"agreement measured on {self.held_out_examples} held-out texts (not used for calibration; "
                    f"1.00 = the stock model's attention)")
        hint = (f"; with {MIN_TEXTS_TO_HOLD_OUT} or more texts, convert holds some out to measure it"
                if convert_holds_out else "")
        return ("agreement measured on the calibration texts themselves (an upper bound: text the calibration did not "
                f"see scores lower{hint})")

    def summary(self, convert_holds_out: bool = True) -> str:
        """What was calibrated (with the agreement figures), what was not, one clause per component, and which texts
        the agreement was measured on (`convert_holds_out`: see `measured_on`)."""
        clauses = self.calibrated_lines() + self.skipped_lines()
        if self.agreement:
            clauses.append(self.measured_on(convert_holds_out))
        return f"Calibration on {self.num_examples} text{'s' * (self.num_examples != 1)}: " + "; ".join(clauses)


def load_teacher(stock_path, like: nn.Module | None = None, **kwargs) -> nn.Module:
    """The stock checkpoint as a dot-product teacher: loaded into the class of `like` (a synthesizer model of
    the same architecture) with plain eager attention, or into `AutoModel` when `like` is None. A causal `like`
    (`is_decoder=True`, e.g. a stock BERT converted to the causal-lm head) gets a causal teacher: the attention it
    can reproduce is the teacher's over earlier tokens, not the bidirectional attention of the stock config."""
    if like is not None and getattr(like.config, "is_decoder", False):
        kwargs.setdefault("is_decoder", True)
    if like is not None:
        return type(like).from_pretrained(stock_path, attn_implementation="eager", **kwargs).eval()
    from transformers import AutoModel

    return AutoModel.from_pretrained(stock_path, attn_implementation="eager", **kwargs).eval()


def calibrate_synthesizer(
    model: nn.Module,
    teacher,
    texts,
    tokenizer=None,
    *,
    max_length: int = 128,
    batch_size: int = 32,
    max_samples: int | None = 512,
    text_column: str = "text",
    vanilla_weight: float = 0.9,
    ridge: float = 1e-3,
    hold_out: float = 0.0,
) -> "CalibrationReport":
    """Attention-transfer initialisation of a converted synthesizer `model` (in place).

    teacher: the stock model (or the path of the stock checkpoint) `model` was converted from.
    texts: a list of strings, a text file, a `datasets` dataset (`text_column`) or tokenized batches.
    hold_out: the fraction of raw texts (every `1/hold_out`-th, from `MIN_TEXTS_TO_HOLD_OUT` texts on) kept out of the
    calibration to measure the agreement on; 0 (or too few texts): measured on the calibration texts themselves.
    Returns a `CalibrationReport` (see `apply_calibration`); `report.summary()` says what was calibrated, how close
    it comes to the teacher and on which texts, and what was not.
    """
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(teacher, like=model)
    limit = min(getattr(model.config, "synthesizer_length", max_length), max_length)
    limit = min(limit, getattr(model.config, "max_position_embeddings", limit))
    texts, held_out = split_held_out(texts, hold_out)
    batches = make_batches(
        texts, tokenizer, max_length=limit, batch_size=batch_size, max_samples=max_samples, text_column=text_column
    )
    recorded = record_teacher_attention(teacher, batches)
    report = apply_calibration(model, recorded, vanilla_weight=vanilla_weight, ridge=ridge)
    if held_out is None:
        return report
    held_out_batches = make_batches(held_out, tokenizer, max_length=limit, batch_size=batch_size,
                                    max_samples=max_samples, text_column=text_column)
    return CalibrationReport(dict(report), model, recorded, record_teacher_attention(teacher, held_out_batches))


# ---------------------------------------------------------------------------------------------- closeness
@torch.no_grad()
def compare_to_teacher(model, teacher, batches, *, mask_token_id=None, mask_prob=0.15, seed=0) -> dict[str, float]:
    """How close `model` is to `teacher` on held-out `batches`.

    - `hidden_cosine`: cosine similarity of the last hidden states, averaged over real tokens.
    - `mlm_top1_agreement` (when both have an MLM head and `mask_token_id` is given): mask `mask_prob` of the
      real non-special tokens, then the fraction of masked positions where the student's top-1 prediction
      equals the teacher's (agreement with the teacher, not accuracy on the text).
    """
    model.eval()
    teacher.eval()
    generator = torch.Generator().manual_seed(seed)
    cos_sum, cos_n, agree, total = 0.0, 0, 0, 0
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s_out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        cos = torch.nn.functional.cosine_similarity(t_out.hidden_states[-1], s_out.hidden_states[-1], dim=-1)
        cos_sum += (cos * mask).sum().item()
        cos_n += mask.sum().item()
        if mask_token_id is not None and hasattr(t_out, "logits") and hasattr(s_out, "logits"):
            inner = mask.bool().clone()
            inner[:, 0] = False
            inner[torch.arange(ids.shape[0]), mask.sum(1) - 1] = False  # keep [CLS] / [SEP]
            chosen = inner & (torch.rand(ids.shape, generator=generator) < mask_prob)
            masked = ids.masked_fill(chosen, mask_token_id)
            t_pred = teacher(input_ids=masked, attention_mask=mask).logits.argmax(-1)
            s_pred = model(input_ids=masked, attention_mask=mask).logits.argmax(-1)
            agree += (t_pred == s_pred)[chosen].sum().item()
            total += chosen.sum().item()
    result = {"hidden_cosine": cos_sum / max(cos_n, 1)}
    if total:
        result["mlm_top1_agreement"] = agree / total
        result["masked_tokens"] = total
    return result
