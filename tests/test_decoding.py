"""Cached decoding on every supported transformers (issue 11): T5 and a BERT decoder, every named variant plus
factorized random + vanilla, a gate mixture, vanilla and a mixture of every component, in float64 with synthesizer
parameters far from uniform (std 0.5) so that a wrong row, a lost cache entry or a dropped mask shows.

- teacher forcing one token at a time through a dynamic and through a static cache equals the full forward;
- the cache holds n positions after n steps;
- `generate` greedy, beam 3 and seeded sampling on left- and right-padded batches gives the same tokens with a
  dynamic cache, a static cache and no cache;
- decoding past `synthesizer_length` raises the documented ValueError, cached or not.

The cache is passed under the name the installed transformers uses (`cache=` from 5.24, `past_key_values=` before).
"""

import inspect

import pytest
import torch
from conftest import padded_batch, spread_synthesizer, tiny_bert_config
from transformers import DynamicCache, EncoderDecoderCache, StaticCache, T5ForConditionalGeneration

from hf_synthesizer import (
    NAMED_VARIANTS,
    BertSynthesizerConfig,
    BertSynthesizerLMHeadModel,
    T5SynthesizerConfig,
    T5SynthesizerForConditionalGeneration,
)

LENGTH = 12  # synthesizer_length of the tiny models
VARIANTS = NAMED_VARIANTS + (
    "factorized_random+vanilla",
    "gate:random+vanilla",
    "vanilla",
    "dense+factorized_dense+random+fixed_random+factorized_random+vanilla",  # every component at once
)
# The keyword under which this transformers takes the decoding cache (renamed in 5.24).
CACHE = "cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters else "past_key_values"

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str, variant: str):
    """A tiny float64 T5 or BERT decoder of `variant` ("gate:" prefix: gate mixture), synthesizer tensors N(0, 0.5)."""
    fields = dict(synthesizer_variant=variant, synthesizer_length=LENGTH)
    if variant.startswith("gate:"):
        fields.update(synthesizer_variant=variant[5:], synthesizer_mixture="gate")
    torch.manual_seed(0)
    if family == "t5":
        config = T5SynthesizerConfig(
            vocab_size=40, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
            eos_token_id=1, **fields,
        )
        model = T5SynthesizerForConditionalGeneration(config)
    else:
        config = BertSynthesizerConfig(**tiny_bert_config(is_decoder=True, pad_token_id=0).to_dict(), **fields)
        model = BertSynthesizerLMHeadModel(config)
    if variant != "vanilla":
        spread_synthesizer(model)
    return model.double().eval()


def caches(family, model, source_length):
    """A fresh dynamic and a fresh static cache for `model`."""
    if family == "t5":
        return {
            "dynamic": EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config)),
            "static": EncoderDecoderCache(
                StaticCache(config=model.config, max_cache_len=LENGTH),
                StaticCache(config=model.config, max_cache_len=source_length),
            ),
        }
    static = StaticCache(config=model.config, max_cache_len=LENGTH)
    return {"dynamic": DynamicCache(config=model.config), "static": static}


def teacher_forcing_batch(family):
    """8 target tokens for 3 examples; T5 also gets a left-padded source (its encoder inputs), BERT decodes alone.
    Returns (n, source, target, the model's other inputs, the keyword the target goes in)."""
    n = 8
    source, source_mask = padded_batch("left", lengths=(5, 3, 4))
    target = torch.randint(2, 40, (3, n), generator=torch.Generator().manual_seed(5))
    inputs = dict(input_ids=source, attention_mask=source_mask) if family == "t5" else {}
    return n, source, target, inputs, ("decoder_input_ids" if family == "t5" else "input_ids")


@pytest.mark.parametrize("family", ["t5", "bert"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forced_steps_through_each_cache_equal_the_full_forward(family, variant):
    """A 3-token prefix, then one token per step (no position_ids: the model takes positions from the cache)."""
    model = build(family, variant)
    n, source, target, inputs, key = teacher_forcing_batch(family)
    with torch.no_grad():
        full = model(**inputs, **{key: target}).logits
        for name, cache in caches(family, model, source.shape[1]).items():
            steps, start = [], 0
            for end in [3, *range(4, n + 1)]:
                out = model(**inputs, **{key: target[:, start:end], CACHE: cache}, use_cache=True)
                steps.append(out.logits)
                assert int(cache.get_seq_length()) == end, name
                start = end
            error = (torch.cat(steps, dim=1) - full).abs().max().item()
            assert error <= 1e-10, f"{name} cache: {error}"
    # the logits depend on the tokens (an input-blind model would pass trivially)
    assert (full[:, 1:] - full[:, :-1]).abs().max() > 1e-2


def _generate(model, family, ids, mask, cache: str, **kwargs):
    options = dict(use_cache=cache != "none", return_dict_in_generate=True, output_logits=True, **kwargs)
    if cache == "static":
        options["cache_implementation"] = "static"
    if family == "bert":
        options["pad_token_id"] = 0
    if kwargs.get("do_sample"):
        torch.manual_seed(123)
    return model.generate(input_ids=ids, attention_mask=mask, **options)


@pytest.mark.parametrize("family", ["t5", "bert"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_with_dynamic_static_and_no_cache_gives_the_same_tokens(family, variant):
    model = build(family, variant)
    new = LENGTH - 5 if family == "bert" else LENGTH - 2
    modes = {
        "greedy": dict(do_sample=False),
        "beam": dict(do_sample=False, num_beams=3, num_return_sequences=2),
        "sampling": dict(do_sample=True, top_k=0),
    }
    for side in ("left", "right"):
        ids, mask = padded_batch(side, lengths=(5, 3, 4))
        for mode, kwargs in modes.items():
            out = {
                cache: _generate(model, family, ids, mask, cache, max_new_tokens=new, min_new_tokens=new, **kwargs)
                for cache in ("none", "dynamic", "static")
            }
            reference = torch.stack(out["none"].logits)
            for cache in ("dynamic", "static"):
                where = f"{side} padding, {mode}, {cache} cache"
                assert torch.equal(out[cache].sequences, out["none"].sequences), where
                assert (torch.stack(out[cache].logits) - reference).abs().max() < 1e-8, where
            assert (reference[:, 0] - reference[:, 1]).abs().max() > 1e-2  # rows differ: the test can see a mix-up


@pytest.mark.parametrize("family", ["t5", "bert"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "vanilla"])
def test_decoding_past_the_synthesizer_length_raises(family, variant):
    model = build(family, variant)
    ids, mask = padded_batch("left", lengths=(5, 3, 4))
    # New tokens whose decoding fills the length exactly: the last token generated is never fed back, T5's decoder
    # is fed its start token first, a BERT decoder its prompt.
    reach = LENGTH if family == "t5" else LENGTH - ids.shape[1] + 1
    for cache in ("none", "dynamic", "static"):
        out = _generate(model, family, ids, mask, cache, max_new_tokens=reach, min_new_tokens=reach, do_sample=False)
        assert out.sequences.shape[1] == LENGTH + 1
        with pytest.raises(ValueError, match=r"config.synthesizer_length.*prompt length \+ max_new_tokens"):
            _generate(model, family, ids, mask, cache, max_new_tokens=reach + 1, min_new_tokens=reach + 1)


@pytest.mark.parametrize("family", ["t5", "bert"])
@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "random+vanilla", "factorized_random"])
def test_static_cache_offset_stays_on_device_on_generic_routes(family, variant, monkeypatch):
    """Off CPU eager (GPU, compile) a StaticCache's offset is used as the on-device tensor it is: every slot is attended
    under the causal mask, a single query included, and a cache longer than synthesizer_length is cut to it (the one
    case that reads the offset in eager mode, to raise the length error). Teacher forcing through it equals the full
    forward (generic routes forced); with a cache of synthesizer_length, attention reads no offset on the host."""
    import hf_synthesizer.modeling.synthesizer_attention as sa

    monkeypatch.setattr(sa, "cpu_tuned", lambda t: False)
    reads = []
    for name in ("__int__", "__index__", "item"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, _f=original: reads.append(t) or _f(t))
    model = build(family, variant)
    n, source, target, inputs, key = teacher_forcing_batch(family)
    with torch.no_grad():
        full = model(**inputs, **{key: target}).logits
        for length in (LENGTH, LENGTH + 3):
            static = StaticCache(config=model.config, max_cache_len=length)
            cache = EncoderDecoderCache(static, DynamicCache(config=model.config)) if family == "t5" else static
            steps, start = [], 0
            reads.clear()
            for end in [3, *range(4, n + 1)]:
                steps.append(model(**inputs, **{key: target[:, start:end], CACHE: cache}, use_cache=True).logits)
                start = end
            if length == LENGTH and family == "t5":  # (BERT's own embeddings slice positions by the offset)
                assert not reads, len(reads)
            error = (torch.cat(steps, dim=1) - full).abs().max().item()
            assert error <= 1e-10, (length, error)
