"""T5 with synthesizer self-attention (issue 3): loading, equivalence with stock T5, masks, lengths, cached
generation, round trips, bf16 and gradient checkpointing. Tiny configs, no Hub."""

import pytest
import torch
from conftest import padded_batch, spread_synthesizer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSeq2SeqLM,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)
from transformers.models.t5.modeling_t5 import T5Attention, T5PreTrainedModel, T5Stack

import hf_synthesizer
from hf_synthesizer import (
    NAMED_VARIANTS,
    T5_AUTO_CLASSES,
    T5SynthesizerAttention,
    T5SynthesizerConfig,
    T5SynthesizerEncoderModel,
    T5SynthesizerForConditionalGeneration,
    T5SynthesizerModel,
    T5SynthesizerPreTrainedModel,
    T5SynthesizerStack,
)

LENGTH = 10  # synthesizer_length of the tiny models
VARIANTS = NAMED_VARIANTS + ("factorized_dense+factorized_random+vanilla",)  # named ones plus an unnamed mixture


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_t5_kwargs(**kwargs) -> dict:
    values = dict(
        vocab_size=40,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    values.update(kwargs)
    return values


def tiny_synth_config(variant: str, **kwargs) -> T5SynthesizerConfig:
    return T5SynthesizerConfig(**tiny_t5_kwargs(synthesizer_variant=variant, synthesizer_length=LENGTH, **kwargs))


def make_model(variant: str, seed: int = 0, **kwargs) -> T5SynthesizerForConditionalGeneration:
    torch.manual_seed(seed)
    model = T5SynthesizerForConditionalGeneration(tiny_synth_config(variant, **kwargs))
    if variant != "vanilla":
        spread_synthesizer(model)
    return model.eval()


@pytest.fixture(scope="module")
def stock_t5_dir(tmp_path_factory):
    """A stock (model_type "t5") checkpoint with random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stock_t5")
    T5ForConditionalGeneration(T5Config(**tiny_t5_kwargs())).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stock_gated_t5_dir(tmp_path_factory):
    """A stock T5 v1.1-style checkpoint: gated-gelu FFN, untied-head flag, asymmetric stacks."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stock_t5_gated")
    config = T5Config(**tiny_t5_kwargs(feed_forward_proj="gated-gelu", num_decoder_layers=3, tie_word_embeddings=False))
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def test_config_fields_defaults_and_json(tmp_path):
    config = T5SynthesizerConfig(**tiny_t5_kwargs(synthesizer_variant="vanilla+random"))
    assert config.model_type == "t5_synthesizer" and config.stock_model_type == "t5"
    assert config.synthesizer_variant == "random+vanilla"
    assert config.synthesizer_length == 512
    assert config.synthesizer_stacks == ["encoder", "decoder"]
    assert config.synthesizer_position_bias is True
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is T5SynthesizerConfig
    assert {**reloaded.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    for field in ("synthesizer_stacks", "synthesizer_position_bias"):
        assert field in T5SynthesizerConfig.__doc__


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(synthesizer_stacks=["encoder", "cross"]), "synthesizer_stacks"),
        (dict(synthesizer_stacks=[]), "synthesizer_stacks"),
        (dict(synthesizer_stacks=["decoder", "decoder"]), "synthesizer_stacks"),
        # index 2 exists in the 3-block decoder but not in the 2-block encoder
        (dict(num_decoder_layers=3, synthesizer_layers=[2]), "encoder's 2 blocks"),
        (dict(num_layers=3, num_decoder_layers=2, synthesizer_layers=[2]), "decoder's 2 blocks"),
        (dict(synthesizer_variant="random+vanilla+dense", synthesizer_mixture="gate"), "gate"),
        (dict(synthesizer_length=12, synthesizer_factorized_dense_split=[5, 3]), "a \\* b"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T5SynthesizerConfig(**tiny_t5_kwargs(**kwargs))


def test_synthesizer_layers_valid_for_the_stacks_they_address():
    config = T5SynthesizerConfig(
        **tiny_t5_kwargs(
            num_decoder_layers=3, synthesizer_variant="random", synthesizer_layers=[2], synthesizer_stacks=["decoder"]
        )
    )
    assert config.components_for_stack_layer("decoder", 2) == ("random",)
    assert config.components_for_stack_layer("decoder", 1) == ("vanilla",)
    assert config.components_for_stack_layer("encoder", 2) == ("vanilla",)


# ---------------------------------------------------------------------------------------------------------------
# Module layout


def _self_attentions(stack):
    return [block.layer[0].SelfAttention for block in stack.block]


def test_module_layout_stacks_layers_and_cross_attention():
    model = make_model("random", synthesizer_stacks=["decoder"], synthesizer_layers=[1])
    assert isinstance(model.encoder, T5SynthesizerStack) and isinstance(model.decoder, T5SynthesizerStack)
    enc, dec = _self_attentions(model.encoder), _self_attentions(model.decoder)
    assert all(a.synthesizer.is_vanilla and hasattr(a, "q") and hasattr(a, "k") for a in enc)
    assert dec[0].synthesizer.is_vanilla and hasattr(dec[0], "q")
    assert dec[1].synthesizer.components == ("random",) and not hasattr(dec[1], "q") and not hasattr(dec[1], "k")
    assert dec[1].is_causal and not enc[0].is_causal
    # layer 0 keeps the relative position bias of each stack
    assert enc[0].has_relative_attention_bias and dec[0].has_relative_attention_bias
    for block in model.decoder.block:  # cross-attention stays dot-product
        cross = block.layer[1].EncDecAttention
        assert isinstance(cross, T5SynthesizerAttention) and cross.synthesizer.is_vanilla and hasattr(cross, "k")


def test_every_pretrained_model_in_the_tree_is_a_synthesizer_class():
    """transformers initialises a submodule with the `_init_weights` of its closest PreTrainedModel: every
    PreTrainedModel in the tree (T5Stack included) must carry the synthesizer init."""
    for model_class in set(T5_AUTO_CLASSES.values()):
        model = model_class(tiny_synth_config("random"))
        for name, module in model.named_modules():
            if isinstance(module, T5Stack):
                assert isinstance(module, T5SynthesizerStack), (model_class.__name__, name)
            if isinstance(module, T5PreTrainedModel):
                assert isinstance(module, T5SynthesizerPreTrainedModel), (model_class.__name__, name)
            if isinstance(module, T5Attention):
                assert isinstance(module, T5SynthesizerAttention), (model_class.__name__, name)
        assert any(".synthesizer.random_r" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("model_class", sorted(set(T5_AUTO_CLASSES.values()), key=lambda c: c.__name__))
def test_random_init_matches_stock_t5_init(model_class):
    """Every stock weight is drawn like stock T5 draws it (transformers would otherwise skip T5's parent-level
    inits for classes defined outside it and leave std = initializer_factor = 1 in q/k/v/o, FFN and heads), and the
    synthesizer's own tensors start small."""
    import transformers

    stock_class = getattr(transformers, model_class.__name__.replace("Synthesizer", ""))
    kwargs = tiny_t5_kwargs(d_model=64, d_kv=16, d_ff=128, num_labels=2)
    torch.manual_seed(0)
    stock = dict(stock_class(T5Config(**kwargs)).named_parameters())
    torch.manual_seed(0)
    model = model_class(T5SynthesizerConfig(**kwargs, synthesizer_variant="dense+random+vanilla"))
    checked = 0
    for name, p in model.named_parameters():
        if ".synthesizer." in name:
            if name.endswith(("random_r", "dense_w1.weight")):
                assert 0.005 < p.std() < 0.2, name
            continue
        if p.numel() < 64 or name.endswith("bias"):
            continue
        ratio = (p.pow(2).mean().sqrt() / stock[name].pow(2).mean().sqrt()).item()  # RMS: layer norms are all 1
        assert 0.7 < ratio < 1.4, (name, ratio)
        checked += 1
    assert checked > 10


# ---------------------------------------------------------------------------------------------------------------
# Stock T5 equivalence and loading


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_vanilla_reproduces_stock_t5(stock_t5_dir, backend):
    stock = T5ForConditionalGeneration.from_pretrained(stock_t5_dir, attn_implementation=backend).eval()
    model = T5SynthesizerForConditionalGeneration.from_pretrained(stock_t5_dir, attn_implementation=backend).eval()
    assert model.config.synthesizer_variant == "vanilla" and model.config._attn_implementation == backend
    ids, mask = padded_batch("right")
    dec = torch.randint(2, 40, (3, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = stock(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("mixture", ["softmax", "gate"])
def test_mixture_with_all_weight_on_vanilla_reproduces_stock_t5(stock_t5_dir, backend, mixture):
    stock = T5ForConditionalGeneration.from_pretrained(stock_t5_dir).eval()
    config = T5SynthesizerConfig.from_pretrained(
        stock_t5_dir, synthesizer_length=LENGTH, synthesizer_mixture=mixture, synthesizer_vanilla_backend=backend
    )
    model = T5SynthesizerForConditionalGeneration.from_pretrained(
        stock_t5_dir, config=config, attn_implementation="synthesizer_random+vanilla"
    ).eval()
    spread_synthesizer(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mixture_logits"):  # components (random, vanilla): softmax weight 0 on random
                p.copy_(torch.tensor([[-1e4], [0.0]]).expand_as(p))
            if name.endswith("mixture_gate"):  # sigmoid(a) weighs random, the first component
                p.fill_(-1e4)
    ids, mask = padded_batch("left")
    dec = torch.randint(2, 40, (3, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = stock(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (got - expected).abs().max() < 1e-5
    # and the mixture is live: weight on random changes the logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mixture_logits") or name.endswith("mixture_gate"):
                p.zero_()
        moved = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (moved - expected).abs().max() > 1e-3


def test_stock_checkpoint_converts_with_clean_loading_report(stock_t5_dir):
    stock = T5ForConditionalGeneration.from_pretrained(stock_t5_dir)
    config = T5SynthesizerConfig.from_pretrained(stock_t5_dir, synthesizer_length=LENGTH)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(
        stock_t5_dir, config=config, attn_implementation="synthesizer_random", output_loading_info=True
    )
    assert type(model) is T5SynthesizerForConditionalGeneration
    assert model.config.synthesizer_variant == "random"
    assert info["unexpected_keys"] == set() or not info["unexpected_keys"]  # dropped q/k are expected
    assert sorted(info["missing_keys"]) == sorted(
        f"{stack}.block.{i}.layer.0.SelfAttention.synthesizer.random_r"
        for stack in ("encoder", "decoder")
        for i in (0, 1)
    )
    assert not info["mismatched_keys"]
    stock_sd, sd = stock.state_dict(), model.state_dict()
    for name, tensor in sd.items():
        if ".synthesizer." in name:
            # initialised by T5SynthesizerStack._init_weights: small and finite (attention close to uniform)
            assert torch.isfinite(tensor).all() and 0.005 < tensor.std() < 0.05, name
        else:
            assert torch.equal(tensor, stock_sd[name]), name
    assert not any(n.endswith(("SelfAttention.q.weight", "SelfAttention.k.weight")) for n in sd)


def test_stock_class_with_synthesizer_name_explains_how_to_convert(stock_t5_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(stock_t5_dir, attn_implementation="synthesizer_random")
    assert type(model) is T5ForConditionalGeneration
    with pytest.raises(ValueError, match="T5SynthesizerConfig"):
        model(input_ids=torch.tensor([[3, 4, 1]]), decoder_input_ids=torch.tensor([[0]]))


@pytest.mark.parametrize("variant", ["dense+vanilla", "random"])  # q/k kept / q/k dropped without warnings
@pytest.mark.parametrize("auto_class", list(T5_AUTO_CLASSES))
def test_every_auto_class_converts_a_gated_stock_checkpoint(stock_gated_t5_dir, auto_class, variant):
    config = T5SynthesizerConfig.from_pretrained(stock_gated_t5_dir, synthesizer_length=LENGTH, num_labels=2)
    assert config.is_gated_act and config.num_decoder_layers == 3
    model, info = auto_class.from_pretrained(
        stock_gated_t5_dir, config=config, attn_implementation=f"synthesizer_{variant}", output_loading_info=True
    )
    assert type(model) is T5_AUTO_CLASSES[auto_class]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    head_params = ("classification_head.", "qa_outputs.", "classifier.")
    unexpected_missing = [k for k in info["missing_keys"] if ".synthesizer." not in k and not k.startswith(head_params)]
    assert not unexpected_missing
    assert all(torch.isfinite(p).all() for p in model.parameters())
    has_qk = any(n.endswith("SelfAttention.q.weight") for n, _ in model.named_parameters())
    assert has_qk == (variant == "dense+vanilla")
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]])
    kwargs = dict(input_ids=ids)
    if auto_class in (AutoModel, AutoModelForSeq2SeqLM, AutoModelForPreTraining):
        kwargs["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 9, 10]])
    with torch.no_grad():
        out = model(**kwargs)
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


# ---------------------------------------------------------------------------------------------------------------
# Round trip, masks, lengths


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_reload_through_auto_class_to_the_bit(tmp_path, variant):
    model = make_model(variant, synthesizer_stacks=["encoder", "decoder"])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()  # no attn_implementation
    assert type(reloaded) is T5SynthesizerForConditionalGeneration
    assert reloaded.config.synthesizer_variant == variant
    assert reloaded.config._attn_implementation == "sdpa"  # the backend of the synthesizer's fast routes
    sd, rsd = model.state_dict(), reloaded.state_dict()
    assert sd.keys() == rsd.keys() and all(torch.equal(sd[k], rsd[k]) for k in sd)
    ids, mask = padded_batch("right")
    dec = torch.tensor([[0, 5, 6], [0, 7, 8], [0, 9, 10]])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        b = reloaded(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.equal(a, b)


def test_fixed_random_is_a_saved_buffer_not_a_parameter(tmp_path):
    model = make_model("fixed_random")
    names = [n for n, _ in model.named_parameters()]
    assert not any("fixed_random_r" in n for n in names)
    assert any("fixed_random_r" in n for n in model.state_dict())


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_real_tokens(variant):
    """Right padding of the encoder input (and of the decoder input) leaves the real positions' logits unchanged:
    the padding mask reaches the synthesized logits."""
    model = make_model(variant)
    gen = torch.Generator().manual_seed(7)
    src = torch.randint(2, 40, (1, 5), generator=gen)
    tgt = torch.randint(2, 40, (1, 4), generator=gen)
    pad_src = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    src_mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1).long()
    pad_tgt = torch.cat([tgt, torch.full((1, 3), 0)], 1)
    tgt_mask = torch.cat([torch.ones(1, 4), torch.zeros(1, 3)], 1).long()
    with torch.no_grad():
        alone = model(input_ids=src, decoder_input_ids=tgt).logits
        padded = model(
            input_ids=pad_src, attention_mask=src_mask, decoder_input_ids=pad_tgt, decoder_attention_mask=tgt_mask
        ).logits[:, :4]
        # the pad positions carry different token ids: if they leaked, the outputs would move
        other = model(
            input_ids=pad_src.masked_fill(src_mask == 0, 17),
            attention_mask=src_mask,
            decoder_input_ids=pad_tgt,
            decoder_attention_mask=tgt_mask,
        ).logits[:, :4]
    assert (alone - padded).abs().max() < 1e-5
    assert (alone - other).abs().max() < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_is_causal(variant):
    model = make_model(variant)
    src = torch.tensor([[5, 6, 7, 1]])
    dec = torch.tensor([[0, 8, 9, 10, 11]])
    changed = dec.clone()
    changed[0, 3:] = torch.tensor([20, 21])
    with torch.no_grad():
        a = model(input_ids=src, decoder_input_ids=dec).logits
        b = model(input_ids=src, decoder_input_ids=changed).logits
    assert (a[:, :3] - b[:, :3]).abs().max() < 1e-6
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_too_long_inputs_raise_a_clear_error(variant):
    model = make_model(variant)
    ok_src = torch.randint(2, 40, (1, LENGTH))
    with torch.no_grad():
        model(input_ids=ok_src, decoder_input_ids=torch.zeros(1, LENGTH, dtype=torch.long))
        with pytest.raises(ValueError, match="synthesizer_length"):  # encoder
            model(input_ids=torch.randint(2, 40, (1, LENGTH + 1)), decoder_input_ids=torch.zeros(1, 2).long())
        with pytest.raises(ValueError, match="synthesizer_length"):  # decoder
            model(input_ids=ok_src, decoder_input_ids=torch.zeros(1, LENGTH + 1, dtype=torch.long))
        # cached decoding runs up to the limit and stops with the same error one step past it
        dec = torch.zeros(1, LENGTH - 1, dtype=torch.long)
        cache = model(input_ids=ok_src, decoder_input_ids=dec, use_cache=True).past_key_values
        model(input_ids=ok_src, decoder_input_ids=dec[:, :1], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == LENGTH
        with pytest.raises(ValueError, match="synthesizer_length"):
            model(input_ids=ok_src, decoder_input_ids=dec[:, :1], past_key_values=cache, use_cache=True)


# ---------------------------------------------------------------------------------------------------------------
# Generation with EncoderDecoderCache


def _generate_both(model, **kwargs):
    out = {}
    for use_cache in (True, False):
        out[use_cache] = model.generate(
            **kwargs, use_cache=use_cache, return_dict_in_generate=True, output_logits=True, output_scores=True
        )
    return out[True], out[False]


def mixed_padding_batch():
    """Row 0 left-padded, row 1 right-padded, row 2 unpadded: both padding sides in one batch."""
    left, left_mask = padded_batch("left", lengths=(4, 7), seed=3)
    right, right_mask = padded_batch("right", lengths=(5, 7), seed=4)
    ids = torch.cat([left[:1], right[:1], left[1:]])
    mask = torch.cat([left_mask[:1], right_mask[:1], left_mask[1:]])
    assert mask[0, 0] == 0 and mask[1, -1] == 0 and mask[2].all()
    return ids, mask


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_dense"])
def test_cached_generation_float32_tokens(variant):
    """In float32 the tokens are identical too (the float64 matrix is tests/test_decoding.py). Logits differ by kernel
    rounding only (float64 agrees exactly), which
    the deliberately large synthesizer parameters amplify: measured up to 1.4e-4 for dense+vanilla, 7e-6 for stock T5
    on the same batch, so the float32 bound is loose and the float64 test above is the precise one."""
    model = make_model(variant)
    ids, mask = mixed_padding_batch()
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, num_beams=3)
    cached, uncached = _generate_both(model, do_sample=False, **common)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (torch.stack(cached.logits) - torch.stack(uncached.logits)).abs().max() < 1e-3


def test_decoder_query_uses_its_own_row_when_cached():
    """Query position p uses row p of R: a cached step reproduces the full forward at position p, and changing row
    p of the decoder's R moves the logits at position p only."""
    model = make_model("random", synthesizer_stacks=["decoder"])
    src = torch.tensor([[5, 6, 7, 8, 1]])
    dec = torch.tensor([[0, 9, 10, 11]])
    with torch.no_grad():
        full = model(input_ids=src, decoder_input_ids=dec).logits
        cache = model(input_ids=src, decoder_input_ids=dec[:, :3], use_cache=True).past_key_values
        assert cache.get_seq_length() == 3
        step = model(input_ids=src, decoder_input_ids=dec[:, 3:], past_key_values=cache, use_cache=True).logits
        assert (full[:, 3] - step[:, 0]).abs().max() < 1e-5
        for block in model.decoder.block:
            block.layer[0].SelfAttention.synthesizer.random_r[:, 3, :4] += 2.0 * torch.randn(4, 4)
        moved = model(input_ids=src, decoder_input_ids=dec).logits
    assert (moved[:, :3] - full[:, :3]).abs().max() < 1e-6
    assert (moved[:, 3] - full[:, 3]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Relative position bias on synthesized logits


def test_position_bias_field_controls_synthesized_logits():
    src = torch.tensor([[5, 6, 7, 8, 1]])
    dec = torch.tensor([[0, 9, 10]])

    def logits_after_bias_change(model):
        with torch.no_grad():
            before = model(input_ids=src, decoder_input_ids=dec).logits
            for name, p in model.named_parameters():
                if "relative_attention_bias" in name:
                    p.add_(torch.randn_like(p))
            after = model(input_ids=src, decoder_input_ids=dec).logits
        return (before - after).abs().max()

    # pure random, bias not added: only cross-attention (no bias in T5) and synthesized logits -> unaffected
    assert logits_after_bias_change(make_model("random", synthesizer_position_bias=False)) < 1e-6
    assert logits_after_bias_change(make_model("random", synthesizer_position_bias=True)) > 1e-4
    # with a vanilla term the bias still reaches it
    assert logits_after_bias_change(make_model("random+vanilla", synthesizer_position_bias=False)) > 1e-4


@pytest.mark.parametrize("position_bias", [True, False])
@pytest.mark.parametrize("variant", ["random", "fixed_random", "factorized_random", "random+factorized_random"])
def test_fast_route_with_position_bias_matches_reference(variant, position_bias, monkeypatch):
    """Input-independent variants with T5's position bias take the shared fast route (spied on); its logits and
    gradients, with right padding and the causal decoder, equal the reference route's."""
    model = make_model(variant, synthesizer_position_bias=position_bias).train()
    src, src_mask = padded_batch("right")
    labels = torch.randint(2, 40, (3, 5))
    monkeypatch.setattr(hf_synthesizer.modeling.synthesizer_attention, "SHARED_ROUTE_MIN_BATCH_HEAD_DIM", 0)
    calls = []
    shared = hf_synthesizer.modeling.synthesizer_attention.shared_logits_attention
    monkeypatch.setattr(
        hf_synthesizer.modeling.synthesizer_attention, "shared_logits_attention",
        lambda *a, **k: calls.append(1) or shared(*a, **k),
    )
    results = {}
    for fast in (True, False):
        for module in model.modules():
            if isinstance(module, hf_synthesizer.modeling.synthesizer_attention.SynthesizerLogits):
                module.use_fast_paths = fast
        model.zero_grad()
        out = model(input_ids=src, attention_mask=src_mask, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fast] = out.logits.detach(), grads
        if fast:
            assert len(calls) == 4  # 2 encoder + 2 decoder self-attention layers
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    assert results[True][1].keys() == results[False][1].keys()
    assert any("relative_attention_bias" in n for n in results[True][1]) == position_bias
    for name, ref in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], ref, atol=1e-5, rtol=1e-4, msg=name)


def test_position_bias_field_round_trips(tmp_path):
    model = make_model("dense", synthesizer_position_bias=False, synthesizer_stacks=["encoder"])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert reloaded.config.synthesizer_position_bias is False
    assert reloaded.config.synthesizer_stacks == ["encoder"]
    attn = reloaded.encoder.block[0].layer[0].SelfAttention
    assert attn.bias_synthesized is False
    assert reloaded.decoder.block[0].layer[0].SelfAttention.synthesizer.is_vanilla


# ---------------------------------------------------------------------------------------------------------------
# Other model classes


def test_encoder_model_and_base_model():
    encoder = T5SynthesizerEncoderModel(tiny_synth_config("factorized_random")).eval()
    assert isinstance(encoder.encoder, T5SynthesizerStack)
    ids, mask = padded_batch("right")
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (3, 7, 32) and torch.isfinite(out).all()
    base = AutoModel.from_config(tiny_synth_config("random+vanilla"))
    assert type(base) is T5SynthesizerModel
    stock_encoder = T5EncoderModel(T5Config(**tiny_t5_kwargs()))
    assert not isinstance(stock_encoder, T5SynthesizerPreTrainedModel)


# ---------------------------------------------------------------------------------------------------------------
# Training: bf16 autocast, gradient checkpointing


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_dense", "fixed_random"])
def test_bf16_autocast_forward_backward_finite(variant):
    model = make_model(variant).train()
    ids, mask = padded_batch("right")
    labels = torch.randint(2, 40, (3, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    synth = [g for n, g in grads.items() if ".synthesizer." in n]
    if variant != "fixed_random":
        assert synth and all(g.abs().sum() > 0 for g in synth)


@pytest.mark.parametrize("variant", ["random+vanilla", "dense+vanilla", "factorized_random+vanilla"])
def test_mixture_gradients_equal_the_explicit_attention(variant):
    """The vanilla term of a mixture runs inside sdpa; its gradients equal those of the explicit softmax(mixed
    logits) path (synthesizer_vanilla_backend="eager"), with padding and causal masks. In float64: in float32 these
    tiny models with deliberately large synthesizer parameters have ill-conditioned gradients, where the two
    summation orders differ by up to 14% in some parameters (and so do checkpointed vs plain runs)."""
    ids, mask = padded_batch("right")
    labels = torch.randint(2, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    grads = []
    for backend in ("sdpa", "eager"):
        model = make_model(variant, synthesizer_vanilla_backend=backend).double().train()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert (grads[0][name] - grads[1][name]).norm() <= 1e-5 * grads[1][name].norm(), name


@pytest.mark.parametrize("variant", ["random+vanilla", "dense"])
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    ids, mask = padded_batch("right")
    labels = torch.randint(2, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpointing in (False, True):
        model = make_model(variant).double().train()  # float64: see test_mixture_gradients_equal_the_explicit_...
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(".synthesizer." in n for n in grads[0])
    for name in grads[0]:
        # not bitwise: with checkpointing T5 makes its zero position bias require grad, which changes sdpa's kernel
        assert (grads[0][name] - grads[1][name]).norm() <= 1e-8 * grads[0][name].norm(), name
