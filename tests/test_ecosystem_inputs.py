"""The ways the ecosystem feeds attention (issue 25), each as the exact failing input of the issue: float64,
synthesizer tensors N(0, 0.5) so that a wrong row, column or a dropped weight shows at 1e-2 or more.

- packed sequences (position_ids restarting per sequence, block-diagonal mask): each sequence of a packed row gives
  the outputs it gives alone, BERT, every variant, fast and reference routes; also when transformers (5.25) builds
  the packed mask itself from position_ids; T5 (which takes no position_ids) from its block-diagonal mask;
- accelerate offload (device_map with "cpu"/"disk", offload_buffers): the in-memory model's outputs, every variant;
- PEFT prefix tuning and prompt tuning train for every variant, BERT sequence classification and T5 seq2seq;
- a caller's `cache_position` is the position of its queries; one that disagrees with the cache is refused naming
  both; the check reads the host once per model forward; a third-party caller's `cache_position` is used, not dropped;
- module hooks see each synthesizer module called once per attention call, on every route.
"""

import inspect

import pytest
import torch
from conftest import spread_synthesizer, tiny_bert_config
from test_decoding import CACHE, LENGTH, VARIANTS, build
from test_fast_paths import set_fast
from transformers import BertModel, DynamicCache, EncoderDecoderCache

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerModel
from hf_synthesizer.modeling.configuration_synthesizer import attn_implementation_name

pytestmark = pytest.mark.usefixtures("one_thread")

A, B = [2, 5, 9, 3], [2, 7, 4, 8, 3]
IDS = torch.tensor([A + B])
POS = torch.tensor([list(range(len(A))) + list(range(len(B)))])
SEG = torch.tensor([0] * len(A) + [1] * len(B))
BLOCKS = (SEG[:, None] == SEG[None, :])[None, None]  # (1, 1, 9, 9) block-diagonal keep-mask


def bert_encoder(variant):
    fields = dict(synthesizer_variant=variant, synthesizer_length=LENGTH)
    if variant.startswith("gate:"):
        fields.update(synthesizer_variant=variant[5:], synthesizer_mixture="gate")
    torch.manual_seed(0)
    model = BertSynthesizerModel(BertSynthesizerConfig(**tiny_bert_config().to_dict(), **fields))
    if variant != "vanilla":
        spread_synthesizer(model)
    return model.double().eval()


def packed_error(model, mask):
    """Largest difference between each sequence of the packed row and that sequence alone."""
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": mask}
        packed = model(input_ids=IDS, position_ids=POS, **kwargs).last_hidden_state[0]
        first = model(input_ids=torch.tensor([A])).last_hidden_state[0]
        second = model(input_ids=torch.tensor([B])).last_hidden_state[0]
    return max((packed[: len(A)] - first).abs().max().item(), (packed[len(A):] - second).abs().max().item())


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_sequences_equal_each_sequence_alone(variant, fast):
    model = bert_encoder(variant)
    set_fast(model, fast)
    assert packed_error(model, BLOCKS) < 1e-12


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_mask_built_by_transformers_equals_each_sequence_alone(variant):
    """transformers 5.25 builds the block-diagonal mask itself from restarting position_ids when no mask is given;
    wherever stock BERT is then exact, every synthesizer variant is too."""
    model = bert_encoder(variant)
    stock = BertModel(model.config).double().eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    if packed_error(stock, None) > 1e-12:
        pytest.skip("this transformers does not build a packed mask from position_ids")
    assert packed_error(model, None) < 1e-12


def test_packed_gradients_equal_each_sequence_alone():
    """Gradients reach R at the packed positions as they do for each sequence alone (random + vanilla, fast)."""
    grads = []
    for inputs in ({"input_ids": IDS, "position_ids": POS, "attention_mask": BLOCKS},
                   {"input_ids": torch.tensor([A])}, {"input_ids": torch.tensor([B])}):
        model = bert_encoder("random+vanilla")
        model(**inputs).last_hidden_state.pow(2).sum().backward()
        grads.append(model.encoder.layer[0].attention.self.synthesizer.random_r.grad)
    assert torch.allclose(grads[0], grads[1] + grads[2], atol=1e-10)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_t5_encoder_packed_sequences_equal_each_sequence_alone(variant, fast):
    """T5 takes no position_ids: a packed row's positions come from its block-diagonal mask (each row's first kept
    key), and T5's relative position bias depends on j - i only, so each sequence gives the outputs it gives alone."""
    from hf_synthesizer import T5SynthesizerEncoderModel

    model = build("t5", variant)
    encoder = T5SynthesizerEncoderModel(model.config).double().eval()
    encoder.load_state_dict(model.state_dict(), strict=False)
    set_fast(encoder, fast)
    with torch.no_grad():
        packed = encoder(input_ids=IDS, attention_mask=BLOCKS).last_hidden_state[0]
        first = encoder(input_ids=torch.tensor([A])).last_hidden_state[0]
        second = encoder(input_ids=torch.tensor([B])).last_hidden_state[0]
    error = max((packed[: len(A)] - first).abs().max().item(), (packed[len(A):] - second).abs().max().item())
    assert error < 1e-12


# ----------------------------------------------------------------------------------------------- cache_position


def t5_step_inputs(model, cache, start, tokens):
    return {"input_ids": torch.tensor([[5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([tokens]),
            CACHE: cache, "use_cache": True, "cache_position": torch.arange(start, start + len(tokens))}


@pytest.mark.parametrize("family", ["t5", "bert"])
@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "vanilla"])
def test_callers_cache_position_is_the_position(family, variant):
    """A decoding loop written for transformers 5.23 passes cache_position=: it is used (equal outputs), and one
    that disagrees with the cache raises naming both."""
    model = build(family, variant)
    tokens = [0, 4, 9, 3]
    if family == "t5":
        def step(cache, start, toks, **extra):
            return model(**{**t5_step_inputs(model, cache, start, toks), **extra}).logits
        def fresh():
            return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        full = model(input_ids=torch.tensor([[5, 6, 7, 1]]), decoder_input_ids=torch.tensor([tokens])).logits
    else:
        def step(cache, start, toks, **extra):
            return model(input_ids=torch.tensor([toks]), **{CACHE: cache}, use_cache=True,
                         cache_position=torch.arange(start, start + len(toks)), **extra).logits
        def fresh():
            return DynamicCache(config=model.config)
        full = model(input_ids=torch.tensor([tokens])).logits
    with torch.no_grad():
        cache = fresh()
        first = step(cache, 0, tokens[:2])
        second = step(cache, 2, tokens[2:])
        assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-10)
        cache = fresh()
        step(cache, 0, tokens[:2])
        with pytest.raises(ValueError, match=r"cache_position.*5.*2|2.*cache_position.*5"):
            step(cache, 5, tokens[2:])


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_cache_position_is_checked_once_per_model_forward(family, monkeypatch):
    """The check reads the cache position on the host: once per forward (the first layer), not per layer and step."""
    import importlib

    module = importlib.import_module(f"hf_synthesizer.modeling.modeling_{family}_synthesizer")
    calls = []
    check = module.check_cache_position
    monkeypatch.setattr(module, "check_cache_position", lambda *a: calls.append(a) or check(*a))
    model = build(family, "random")
    assert len([m for m in model.modules() if hasattr(m, "synthesizer") and not m.synthesizer.is_vanilla]) > 1
    with torch.no_grad():
        if family == "t5":
            cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
            model(**t5_step_inputs(model, cache, 0, [0, 4]))
        else:
            model(input_ids=torch.tensor([[3, 4]]), **{CACHE: DynamicCache(config=model.config)}, use_cache=True,
                  cache_position=torch.arange(2))
    assert len(calls) == 1


def test_third_party_callers_cache_position_is_used_not_dropped():
    """A caller of the registered attention function that knows no `query_offset` but passes `cache_position` (the
    slots of its queries, here in a static-cache-like key range with empty slots after them): its queries sit there,
    as with `query_offset`; given with a `query_offset` that disagrees, it is refused."""
    from hf_synthesizer.modeling.synthesizer_attention import synthesizer_attention_forward

    model = build("bert", "random")
    layer = model.bert.encoder.layer[0].attention.self
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 1, model.config.hidden_size, dtype=torch.float64, generator=gen)
    value = torch.randn(1, model.config.num_attention_heads, 6, 8, dtype=torch.float64, generator=gen)
    key = torch.zeros(1, model.config.num_attention_heads, 6, 1, dtype=torch.float64)

    def run(**kwargs):
        return synthesizer_attention_forward(layer, None, key, value, None, synthesizer_inputs=hidden, **kwargs)[0]

    with torch.no_grad():
        given = run(cache_position=torch.tensor([2]))
        torch.testing.assert_close(given, run(query_offset=torch.tensor(2)), atol=1e-12, rtol=0)  # a static cache
        assert (given - run()).abs().max() > 1e-3  # (the default: the queries are the last keys)
        with pytest.raises(ValueError, match="cache_position starts at 2"):
            run(cache_position=torch.tensor([2]), query_offset=3)


# ------------------------------------------------------------------------------------------------------ offload


OFFLOAD_IDS = torch.tensor([[2, 15, 27, 39, 4, 3, 0, 0], [2, 41, 53, 65, 77, 89, 3, 0]])


@pytest.mark.parametrize("variant", VARIANTS)
def test_offloaded_weights_give_the_in_memory_outputs(variant, tmp_path):
    """device_map with "cpu" and "disk" (accelerate's hooks load a module's weights only while its own forward runs)
    and offload_buffers (fixed random's R is a buffer): the in-memory model's logits, every variant."""
    from hf_synthesizer import BertSynthesizerForMaskedLM

    fields = dict(synthesizer_variant=variant, synthesizer_length=LENGTH)
    if variant.startswith("gate:"):
        fields.update(synthesizer_variant=variant[5:], synthesizer_mixture="gate")
    torch.manual_seed(0)
    model = BertSynthesizerForMaskedLM(BertSynthesizerConfig(**tiny_bert_config().to_dict(), **fields))
    if variant != "vanilla":
        spread_synthesizer(model)
    model.eval().save_pretrained(tmp_path / "model")
    mask = (OFFLOAD_IDS != 0).long()
    with torch.no_grad():
        expected = model(input_ids=OFFLOAD_IDS, attention_mask=mask).logits
        device_map = {"bert.embeddings": "cpu", "bert.encoder": "disk", "cls": "cpu"}
        for buffers in (False, True):
            offloaded = BertSynthesizerForMaskedLM.from_pretrained(
                tmp_path / "model", device_map=device_map, offload_folder=tmp_path / f"offload{buffers}",
                offload_buffers=buffers,
            ).eval()
            got = offloaded(input_ids=OFFLOAD_IDS, attention_mask=mask).logits
            assert torch.allclose(got, expected, atol=1e-5), (buffers, (got - expected).abs().max())
        # the reference route (attention maps asked for) reads the parameters inside the module's forward too
        maps = model(input_ids=OFFLOAD_IDS, attention_mask=mask, output_attentions=True).attentions
        got = offloaded(input_ids=OFFLOAD_IDS, attention_mask=mask, output_attentions=True).attentions
        assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, maps))


# The stacks' blocks on disk; the tied embeddings stay in memory (a tied weight offloaded under one name is looked up
# under the other).
T5_DEVICE_MAP = {
    "shared": "cpu", "lm_head": "cpu", "encoder.embed_tokens": "cpu", "decoder.embed_tokens": "cpu",
    "encoder.block": "disk", "decoder.block": "disk", "encoder.final_layer_norm": "cpu", "decoder.final_layer_norm": "cpu",
}


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_random", "fixed_random"])
def test_offloaded_t5_gives_the_in_memory_outputs(variant, tmp_path):
    from hf_synthesizer import T5SynthesizerForConditionalGeneration

    model = build("t5", variant).float()
    model.save_pretrained(tmp_path / "model")
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 4, 9]])}
    with torch.no_grad():
        expected = model(**inputs).logits
        offloaded = T5SynthesizerForConditionalGeneration.from_pretrained(
            tmp_path / "model", device_map=T5_DEVICE_MAP,
            offload_folder=tmp_path / "offload", offload_buffers=True,
        ).eval()
        got = offloaded(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ------------------------------------------------------------------------------------------------------ PEFT


def peft_models(family, variant):
    """A tiny float64 model for PEFT's prefix / prompt tuning: BERT sequence classification or T5 seq2seq."""
    if family == "t5":
        return build("t5", variant), "SEQ_2_SEQ_LM"
    from hf_synthesizer import BertSynthesizerForSequenceClassification

    fields = dict(synthesizer_variant=variant, synthesizer_length=LENGTH, num_labels=3)
    if variant.startswith("gate:"):
        fields.update(synthesizer_variant=variant[5:], synthesizer_mixture="gate")
    torch.manual_seed(0)
    model = BertSynthesizerForSequenceClassification(BertSynthesizerConfig(**tiny_bert_config().to_dict(), **fields))
    if variant != "vanilla":
        spread_synthesizer(model)
    return model.double(), "SEQ_CLS"


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_prefix_and_prompt_tuning_train(variant, family, method):
    """PEFT fills the cache with full-width prefix keys (prefix tuning) or prepends virtual tokens (prompt tuning):
    one training step runs, the loss is finite and the virtual tokens get a gradient, every variant."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    model, task = peft_models(family, variant)
    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(task_type=task, num_virtual_tokens=3)
    model = get_peft_model(model, config)
    model.train()
    ids = torch.tensor([[2, 15, 27, 39, 4, 3, 0], [2, 11, 23, 35, 7, 9, 3]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    if family == "t5":
        inputs["labels"] = torch.tensor([[4, 9, 3], [7, 1, 3]])
    else:
        inputs["labels"] = torch.tensor([0, 2])
    loss = model(**inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------- import side effects

REGISTRY_SCRIPT = r"""
import json, sys, torch
from transformers import AttentionInterface, BertConfig, BertModel, T5Config, T5Model
from transformers.masking_utils import AttentionMaskInterface, ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

def registries():
    return {name: dict(getattr(reg, "_global_mapping")) | dict(getattr(reg, "_local_mapping", {}))
            for name, reg in (("attention", ALL_ATTENTION_FUNCTIONS), ("mask", ALL_MASK_ATTENTION_FUNCTIONS))}

def outputs():
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=24, is_decoder=True)).eval()
    t5 = T5Model(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2)).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]]); mask = (ids != 0).long()
    with torch.no_grad():
        return [bert(input_ids=ids, attention_mask=mask).last_hidden_state,
                t5(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).last_hidden_state]

before, stock = registries(), outputs()
import hf_synthesizer
after, again = registries(), outputs()
changed = [f"{kind}:{name}" for kind in before for name in before[kind] if after[kind].get(name) is not before[kind][name]]
assert not changed, changed
assert all(torch.equal(a, b) for a, b in zip(stock, again))
added = sorted(name for kind in after for name in after[kind] if name not in before[kind])
assert added and all(name.startswith("synthesizer_") for name in added), added
print("ok")
"""


def test_import_leaves_transformers_registries_and_stock_models_alone():
    """In a fresh interpreter: every entry of AttentionInterface / AttentionMaskInterface that existed before the
    import is the same object after it, stock BERT (a padded causal batch) and T5 outputs are bit-identical, and the
    only additions are synthesizer names."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", REGISTRY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_random"])
def test_sdpa_backend_still_gets_key_masks(variant, monkeypatch):
    """A synthesizer model under "sdpa" (the default) builds its masks under a name only synthesizer models use (the
    package no longer replaces transformers' "sdpa" entry): the fast routes get padding as `(B, 1, 1, lk)` key masks
    (a padded causal batch here), and the outputs equal those under the variant's own name."""
    import hf_synthesizer.modeling.synthesizer_attention as sa

    model = build("bert", variant)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]])
    seen = []
    original = sa.fast_synthesizer_attention
    monkeypatch.setattr(sa, "fast_synthesizer_attention",
                        lambda *a, **k: seen.append(a[2].given.shape) or original(*a, **k))
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        assert seen and all(shape[2] == 1 for shape in seen), seen
        model.set_attn_implementation(attn_implementation_name(variant))
        named = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    assert torch.allclose(sdpa, named, atol=1e-12)


@pytest.mark.parametrize("route", ["fast", "reference", "output_attentions"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_hooks_fire_once_per_attention_call(variant, route):
    """Module hooks (accelerate's offload, FSDP, user hooks) see each synthesizer module called exactly once per
    attention call, whatever route runs: the reference route computes its logits inside the same call instead of
    calling the module a second time."""
    model = bert_encoder(variant)
    if route == "reference":
        set_fast(model, False)
    calls = []
    from hf_synthesizer.modeling.synthesizer_attention import SynthesizerLogits

    modules = [m for m in model.modules() if isinstance(m, SynthesizerLogits)]
    assert modules, "no synthesizer module found"
    for module in modules:
        module.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(mod), with_kwargs=True)
    ids = torch.tensor([A + B, B + A])
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one left-padded row: the rotated route
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, output_attentions=route == "output_attentions")
    assert len(calls) == len(modules) and set(map(id, calls)) == set(map(id, modules))
