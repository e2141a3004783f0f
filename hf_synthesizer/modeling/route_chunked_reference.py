"""The chunked reference route: the reference math (mixed logits -> masked softmax -> dropout -> @ V) one chunk of
query rows at a time, under activation checkpointing. The route of factorized dense mixtures, whose logits have no
low-dimensional form: the whole-length reference builds several `(B, H, lq, lk)` fp32 tensors (page-faulted afresh
each call). Exact: the logits of a query row depend only on that row; the plain math it is tested against is
`SynthesizerLogits.logits` + `attention_probabilities` in one piece (`chunked=False`).

This file ships with saved checkpoints (trust_remote_code): it imports only torch and its flat siblings.
"""

import functools
from dataclasses import replace

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .synthesizer_fast import CHUNK_ELEMENTS
from .synthesizer_math import attention_probabilities


def chunked_reference_attention(synthesizer, x, attention_mask, call, training: bool, chunked: bool = True):
    """The reference math one chunk of query rows at a time (`chunked`, CPU-tuned; else in one piece); returns
    `(B, lq, H, dh)`. x: the call's `AttentionInputs`; attention_mask: the whole mask (causal part included) or None;
    call: its `AttentionCall` (dropout already 0 outside training). With gradients, each chunk is recomputed in
    backward (activation checkpointing, RNG preserved for dropout), so nothing l x l outlives its chunk."""
    value, lq, lk = x.value, call.lq, call.lk
    chunk = functools.partial(_reference_chunk, synthesizer, call, x, training)
    if not chunked:
        return chunk(call.q0, x.hidden_states, x.query, attention_mask, call.position_bias).transpose(1, 2).contiguous()
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, value.shape[0] * value.shape[1] * lk))
    outputs = []
    for start in range(0, lq, rows_per_chunk):
        rows = slice(start, min(lq, start + rows_per_chunk))

        def per_query(t):  # a tensor with a query axis at dim 2 of length lq (or 1: broadcast)
            return None if t is None else t if t.shape[2] == 1 else t[:, :, rows]

        args = (
            call.q0 + start, x.hidden_states[:, rows], per_query(x.query), per_query(attention_mask),
            per_query(call.position_bias),
        )
        outputs.append(checkpoint(chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else chunk(*args))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


def _reference_chunk(synthesizer, call, x, training: bool, q0, hidden, query, mask, position_bias):
    """`softmax(mixed logits + mask)`, dropout, `@ x.value` for the query rows `hidden` / `query` starting at slot
    `q0`, their mask and position bias rows: `(B, H, rows, dh)`."""
    chunk_call = replace(call, q0=q0, lq=hidden.shape[1], position_bias=position_bias)
    logits = synthesizer.mixed_logits(replace(x, hidden_states=hidden, query=query), chunk_call)
    probs = F.dropout(attention_probabilities(logits, mask), p=call.dropout, training=training)
    return torch.matmul(probs.to(x.value.dtype), x.value)
