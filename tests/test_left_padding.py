"""Left padding (issue 14 item 4): synthesized rows and columns are indexed by position, and an example's positions
count from its first kept token, so a left-padded example gives its real tokens the outputs it gives alone.

- the helpers (`left_padding`, `padded_positions`, `rotation_order`, `reorder_slots`, `at_positions`) on small hand-made cases;
- BERT encoder with `position_ids = attention_mask.cumsum(-1) - 1` (as stock BERT needs for its absolute position
  embeddings), T5 encoder as is: outputs, attention maps and gradients of a left-padded batch equal each example's
  alone, fast and reference routes, every variant;
- teacher-forced decoding of a left-padded BERT decoder through a cache (per-example positions) equals its full
  forward;
- `generate` (greedy, beam) on left-padded prompts gives each prompt the tokens and logits it gets alone: BERT as a
  decoder, T5 with left-padded encoder inputs, every variant.

float64, synthesizer parameters far from init (std 0.5): a row or column off by the padding shows at 1e-2 or more.
"""

import pytest
import torch
from conftest import padded_batch, spread_synthesizer, tiny_bert_config
from test_decoding import LENGTH, VARIANTS, build
from test_fast_paths import set_fast

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerModel
from hf_synthesizer.modeling.synthesizer_math import (
    at_positions,
    left_padding,
    padded_positions,
    reorder_slots,
    rotation_order,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SYNTHESIZED = [v for v in VARIANTS if v != "vanilla"]
LENGTHS = (5, 3, 4)  # the left-padded batch: 0, 2 and 1 padded slots


def test_padded_positions_count_from_the_first_kept_slot():
    keep = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 1]]).bool()
    assert torch.equal(left_padding(keep), torch.tensor([2, 0, 0, 0, 1]))
    # slot - left padding (padded slots before the first kept one: 0); a gap after it is counted, as in BERT's slots
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])
    assert torch.equal(padded_positions(keep), expected)


def test_rotation_order_puts_each_example_at_its_positions_and_reorder_slots_undoes_it():
    keep = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1]]).bool()
    order = rotation_order(keep)
    assert order.tolist() == [[2, 3, 4, 0, 1], [0, 1, 2, 3, 4], [1, 2, 3, 4, 0]]
    positions = padded_positions(keep)
    for b in range(3):  # reordered, every kept token sits at the slot of its position
        slots = order[b].argsort()[keep[b]]
        assert torch.equal(positions[b][keep[b]], slots)
    t = torch.arange(3 * 2 * 5).view(3, 2, 5)
    moved = reorder_slots(t, order, 2)
    assert moved[0, 0].tolist() == [2, 3, 4, 0, 1]
    assert torch.equal(reorder_slots(moved, order, 2, undo=True), t)
    assert torch.equal(reorder_slots(t.transpose(1, 2), order, 1), moved.transpose(1, 2))
    assert torch.equal(reorder_slots(t[:1], order, 2)[2], t[0][:, order[2]])  # a batch of 1 broadcasts


def test_at_positions_reads_rows_and_columns_per_example():
    table = torch.randn(1, 2, 6, 6)
    keep = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]).bool()
    k = padded_positions(keep)
    q = k[:, 3:5]  # queries at slots 3, 4
    assert q.tolist() == [[3, 4], [1, 2]] and k.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    out = at_positions(table, q, k)
    assert out.shape == (2, 2, 2, 5)
    assert torch.equal(out[0], table[0, :, 3:5, :5])
    assert torch.equal(out[1][..., 2:], table[0, :, 1:3, :3])


def _alone(ids, mask, row):
    keep = mask[row].bool()
    return ids[row][keep][None]


def _bert_encoder(variant):
    """`build`'s BERT as an encoder (not causal)."""
    torch.manual_seed(0)
    fields = dict(synthesizer_variant=variant.removeprefix("gate:"), synthesizer_length=LENGTH)
    if variant.startswith("gate:"):
        fields["synthesizer_mixture"] = "gate"
    config = BertSynthesizerConfig(**tiny_bert_config(pad_token_id=0).to_dict(), **fields)
    return spread_synthesizer(BertSynthesizerModel(config)).double().eval()


def _encoder_run(family, model, ids, mask):
    """Last hidden states, and the attention maps of every layer `(B, H, l, l)`."""
    if family == "t5":
        out = model.encoder(input_ids=ids, attention_mask=mask, output_attentions=True)
    else:
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0) if mask is not None else None
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, output_attentions=True)
    return out.last_hidden_state, out.attentions


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("variant", SYNTHESIZED)
def test_encoder_left_padding_equals_each_example_alone(family, variant, fast):
    """Outputs, attention maps and the gradient of every parameter: the left-padded batch's real tokens against the
    examples run alone (the sum of their losses)."""
    model = build(family, variant) if family == "t5" else _bert_encoder(variant)
    set_fast(model, fast)
    ids, mask = padded_batch("left", lengths=LENGTHS)
    proj = torch.randn(*ids.shape, model.config.hidden_size if family == "bert" else model.config.d_model,
                       dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out, maps = _encoder_run(family, model, ids, mask)
    (out * mask[..., None] * proj).sum().backward()
    batch_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for row in range(len(LENGTHS)):
        keep = mask[row].bool()
        alone, alone_maps = _encoder_run(family, model, _alone(ids, mask, row), None)
        (alone[0] * proj[row][keep]).sum().backward()
        torch.testing.assert_close(out[row][keep], alone[0], atol=1e-12, rtol=1e-12)
        for layer, (m, a) in enumerate(zip(maps, alone_maps)):
            torch.testing.assert_close(m[row][:, keep][..., keep], a[0], atol=1e-12, rtol=1e-12, msg=f"layer {layer}")
            assert not m[row][:, keep][..., ~keep].any()  # padded keys get no weight
    assert batch_grads
    for name, parameter in model.named_parameters():
        if name in batch_grads:
            torch.testing.assert_close(batch_grads[name], parameter.grad, atol=1e-11, rtol=1e-10, msg=name)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("variant", SYNTHESIZED)
def test_given_position_ids_win_over_a_left_padded_mask(variant, fast):
    """position_ids that differ from the mask's positions (example b counts from b + 1, not from 0) decide the rows
    and columns, as they decide BERT's position embeddings: the left-padded batch equals each example alone with the
    same position_ids, outputs and gradients. Keys of a whole sequence sit at their queries' positions, so a row or
    column taken from the mask shows. (Increasing by 1: transformers reads position_ids that do not as packed
    sequences when no mask is given, and builds a block-diagonal mask.)"""
    model = _bert_encoder(variant)
    set_fast(model, fast)
    ids, mask = padded_batch("left", lengths=LENGTHS)
    gen = torch.Generator().manual_seed(1)
    position_ids = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        position_ids[row, ids.shape[1] - n :] = torch.arange(n) + row + 1
    proj = torch.randn(*ids.shape, model.config.hidden_size, dtype=torch.float64, generator=gen)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    (out * mask[..., None] * proj).sum().backward()
    batch_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for row in range(len(LENGTHS)):
        keep = mask[row].bool()
        alone = model(input_ids=_alone(ids, mask, row), position_ids=position_ids[row][keep][None]).last_hidden_state
        (alone[0] * proj[row][keep]).sum().backward()
        torch.testing.assert_close(out[row][keep], alone[0], atol=1e-12, rtol=1e-12)
    mask_positions = (mask.cumsum(-1) - 1).clamp_min(0)
    differs = model(input_ids=ids, attention_mask=mask, position_ids=mask_positions).last_hidden_state
    assert (differs - out)[mask.bool()].abs().max() > 1e-3  # the given positions matter
    for name, parameter in model.named_parameters():
        if name in batch_grads:
            torch.testing.assert_close(batch_grads[name], parameter.grad, atol=1e-11, rtol=1e-10, msg=name)


@pytest.mark.parametrize("positions", ["generate", "offset"])
@pytest.mark.parametrize("cache_class", ["dynamic", "static-generic"])
@pytest.mark.parametrize("variant", SYNTHESIZED)
def test_bert_decoder_cached_steps_on_left_padded_prompts_equal_the_full_forward(
    variant, cache_class, positions, monkeypatch
):
    """Per-example positions after a cached prefix (3 tokens, 2 more, then single tokens) against the whole-sequence
    forward, on a left-padded batch (example 1's first step is all padding), with generate's position ids, or with
    position ids unlike the mask's ("offset": example b counts from b + 1), which cached keys must keep from the step
    that wrote them. Also with a StaticCache on the device-generic routes, where the query offset is an on-device
    tensor (no host read)."""
    from test_decoding import CACHE
    from transformers import DynamicCache, StaticCache

    import hf_synthesizer.modeling.synthesizer_attention as sa

    model = build("bert", variant)
    ids, mask = padded_batch("left", lengths=(7, 4, 6))
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    if positions == "offset":
        position_ids = position_ids + torch.arange(1, 4)[:, None] * mask
    if cache_class == "static-generic":
        monkeypatch.setattr(sa, "cpu_tuned", lambda t: False)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        cache = (DynamicCache(config=model.config) if cache_class == "dynamic"
                 else StaticCache(config=model.config, max_cache_len=LENGTH))
        steps, start = [], 0
        for end in [3, 5, *range(6, ids.shape[1] + 1)]:  # a 2-token step after the prefix too
            step = dict(input_ids=ids[:, start:end], position_ids=position_ids[:, start:end], **{CACHE: cache})
            steps.append(model(**step, attention_mask=mask[:, :end], use_cache=True).logits)
            start = end
    keep = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[keep], full[keep], atol=1e-10, rtol=1e-10)


def _generate(model, family, ids, mask, **kwargs):
    new = LENGTH - 5 if family == "bert" else LENGTH - 2
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
        return_dict_in_generate=True, output_logits=True, **kwargs,
    )


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_on_left_padded_prompts_gives_each_prompt_its_tokens_alone(family, variant):
    """BERT as a decoder (left-padded prompts) and T5 (left-padded encoder inputs): greedy logits and tokens, and the
    beams' tokens, equal to each prompt alone."""
    model = build(family, variant)
    ids, mask = padded_batch("left", lengths=LENGTHS)
    for mode, kwargs in {"greedy": dict(do_sample=False), "beam": dict(do_sample=False, num_beams=3)}.items():
        batch = _generate(model, family, ids, mask, **kwargs)
        new = len(batch.logits)
        for row in range(len(LENGTHS)):
            alone = _generate(model, family, _alone(ids, mask, row), None, **kwargs)
            where = f"{mode}, prompt {row}"
            assert torch.equal(batch.sequences[row, -new:], alone.sequences[0, -new:]), where
            if mode == "greedy":
                error = (torch.stack(batch.logits)[:, row] - torch.stack(alone.logits)[:, 0]).abs().max().item()
                assert error < 1e-10, f"{where}: {error}"
