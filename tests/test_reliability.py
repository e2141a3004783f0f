"""Bad input, odd configs, low precision, interrupted training: each path works or fails early and clearly."""

import hashlib
import json

import pytest
import torch
from conftest import spread_synthesizer, tiny_bert_config
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_self_attention
from test_attention_reference import attention_layer
from test_bert_models import ALL_VARIANTS, _TokenPresenceData, ids, perturb
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerForSequenceClassification, BertSynthesizerModel


def config(**fields):
    return BertSynthesizerConfig(**{**tiny_bert_config().to_dict(), **fields})


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(synthesizer_variant="randm"), r"Unknown synthesizer component\(s\) \['randm'\].*random.*synthesizer_random\+vanilla"),
        (dict(synthesizer_variant="random+random"), "names a component twice"),
        (dict(synthesizer_variant=""), "non-empty string"),
        (dict(synthesizer_variant="factorized_dense", synthesizer_factorized_dense_split=[5, 5]),
         r"a \* b == synthesizer_length \(24\); e.g. \[4, 6\]"),
        (dict(synthesizer_factorized_rank=0), "synthesizer_factorized_rank must be a positive integer"),
        (dict(synthesizer_length=0), "synthesizer_length must be a positive integer"),
        (dict(synthesizer_layers=[0, 2]), r"synthesizer_layers has indices \[2\] outside the model's 2 layers"),
        (dict(synthesizer_variant="dense+random+vanilla", synthesizer_mixture="gate"), "exactly two components"),
        (dict(synthesizer_mixture="mean"), "synthesizer_mixture must be one of"),
        (dict(synthesizer_vanilla_backend="flash_attention_2"), "synthesizer_vanilla_backend must be one of"),
    ],
)
def test_inconsistent_config_fails_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        config(**fields)


@pytest.mark.parametrize("override", [dict(synthesizer_variant="bogus"), dict(synthesizer_layers=[5]),
                                      dict(synthesizer_factorized_rank=0)])
def test_invalid_override_at_load_fails(stock_bert_dir, override):
    with pytest.raises(ValueError, match=next(iter(override)) if "variant" not in next(iter(override)) else "bogus"):
        BertSynthesizerConfig.from_pretrained(stock_bert_dir, **override)


def test_override_at_load_is_canonicalised(stock_bert_dir):
    config = BertSynthesizerConfig.from_pretrained(stock_bert_dir, synthesizer_variant="vanilla+random")
    assert config.synthesizer_variant == "random+vanilla"


def test_invalid_config_json_fails_at_load(tmp_path):
    BertSynthesizerModel(config(synthesizer_variant="random")).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["synthesizer_factorized_rank"] = -1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="synthesizer_factorized_rank"):
        BertSynthesizerModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "saved,override,message",
    [
        (dict(synthesizer_variant="random", synthesizer_length=16), dict(synthesizer_length=20), "other shapes"),
        (dict(synthesizer_variant="factorized_random"), dict(synthesizer_factorized_rank=4), "other shapes"),
        (dict(synthesizer_variant="dense"), dict(synthesizer_dense_shared_w2=True), "other shapes"),
        (dict(synthesizer_variant="random+vanilla"), dict(synthesizer_mixture="gate"), "would lose them"),
        (dict(synthesizer_variant="random"), dict(synthesizer_layers=[0]), "would lose them"),
        (dict(synthesizer_variant="dense+random"), dict(synthesizer_variant="random"), "would lose them"),
    ],
)
def test_checkpoint_never_loads_into_a_model_that_would_drop_or_misslice_it(tmp_path, saved, override, message):
    BertSynthesizerModel(config(**saved)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        BertSynthesizerModel.from_pretrained(tmp_path, **override)
    BertSynthesizerModel.from_pretrained(tmp_path)  # as saved: fine


def _classifier(family, **fields):
    """A tiny 3-label sequence classifier of `family` (random synthesizer, length 16), synthesizer far from init."""
    from test_t5 import tiny_t5_kwargs

    from hf_synthesizer import T5SynthesizerConfig, T5SynthesizerForSequenceClassification

    fields = dict(synthesizer_variant="random", synthesizer_length=16, num_labels=3, **fields)
    if family == "t5":
        model = T5SynthesizerForSequenceClassification(T5SynthesizerConfig(**tiny_t5_kwargs(**fields)))
    else:
        model = BertSynthesizerForSequenceClassification(config(**fields))
    return spread_synthesizer(model)


def _synthesizer_tensors(model):
    return {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if ".synthesizer." in n}


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_other_head_size_gets_transformers_error_and_ignore_mismatched_sizes_works(tmp_path, family):
    """Issue 14 item 2: only the classifier differs (num_labels=42 on a 3-label checkpoint): transformers' own
    RuntimeError, not ours, and `ignore_mismatched_sizes=True` then loads with a new classifier and every synthesizer
    tensor as saved."""
    saved = _classifier(family)
    saved.save_pretrained(tmp_path)
    cls = type(saved)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes") as caught:
        cls.from_pretrained(tmp_path, num_labels=42)
    assert "synthesizer" not in str(caught.value)
    model, info = cls.from_pretrained(tmp_path, num_labels=42, ignore_mismatched_sizes=True, output_loading_info=True)
    assert info["mismatched_keys"] and all(".synthesizer." not in k for k, *_ in info["mismatched_keys"])
    assert model.config.num_labels == 42
    ids = torch.randint(2, 40, (2, 6))
    ids[:, -1] = 1  # T5 classifies from the <eos> token (id 1)
    assert model(input_ids=ids).logits.shape == (2, 42)
    expected = _synthesizer_tensors(saved)
    assert expected and _synthesizer_tensors(model).keys() == expected.keys()
    for name, tensor in _synthesizer_tensors(model).items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("override", [dict(synthesizer_length=20), dict(synthesizer_length=20, num_labels=42)])
def test_synthesizer_shape_mismatch_names_the_synthesizer_keys(tmp_path, family, override):
    """Another synthesizer_length (alone or with another num_labels) is blamed on the synthesizer, naming its keys."""
    saved = _classifier(family)
    saved.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"synthesizer parameters have other shapes.*synthesizer\.random_r: "
                                         r"checkpoint \(4, 16, 16\), config \(4, 20, 20\)"):
        type(saved).from_pretrained(tmp_path, **override)


def test_adding_a_component_to_a_saved_synthesizer_keeps_what_it_learned(tmp_path):
    model = perturb(BertSynthesizerModel(config(synthesizer_variant="random")))
    model.save_pretrained(tmp_path)
    grown = BertSynthesizerModel.from_pretrained(tmp_path, config=config(synthesizer_variant="random+vanilla"))
    for a, b in zip(model.encoder.layer, grown.encoder.layer):
        assert torch.equal(a.attention.self.synthesizer.random_r, b.attention.self.synthesizer.random_r)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_empty_batch_and_all_padding_rows(variant):
    torch.manual_seed(0)
    model = perturb(BertSynthesizerModel(config(synthesizer_variant=variant))).eval()
    assert model(torch.zeros(0, 5, dtype=torch.long)).last_hidden_state.shape == (0, 5, 32)
    input_ids, _ = ids(batch=2, length=6)
    mask = torch.ones_like(input_ids)
    mask[1] = 0  # a row that is nothing but padding
    out = model(input_ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], model(input_ids[:1]).last_hidden_state[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_low_precision_autocast_stays_finite_on_extreme_inputs(variant, dtype):
    torch.manual_seed(0)
    model = BertSynthesizerForSequenceClassification(config(synthesizer_variant=variant, max_position_embeddings=64))
    # Large logits (thousands, still inside fp16's range) from every component, and extreme mixture weights.
    scales = {"random_r": 1e4, "dense_w2": 1e4, "dense_b2": 1e3, "factorized_random_r": 30.0,
              "factorized_dense_": 5.0, "mixture_": 10.0, ".query.weight": 5.0, ".key.weight": 5.0}
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            for part, std in scales.items():
                if part in name:
                    p.normal_(0, std)
    input_ids = torch.randint(1, 100, (3, 64))  # the longest legal sequence
    mask = torch.ones_like(input_ids)
    mask[1, 10:] = 0
    mask[2] = 0  # fully masked row
    with torch.autocast("cpu", dtype=dtype):
        out = model(input_ids, attention_mask=mask, labels=torch.tensor([0, 1, 0]))
    assert torch.isfinite(out.logits).all()
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_same_seed_same_results():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = BertSynthesizerModel(config(synthesizer_variant="dense+random+vanilla")).train()
        out = model(*ids()).last_hidden_state  # dropout included
        out.sum().backward()
        outputs.append((out.detach(), model.encoder.layer[0].attention.self.synthesizer.random_r.grad))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("variant", ["fixed_random", "dense+factorized_dense+random+fixed_random+factorized_random+vanilla"])
def test_save_load_save_is_byte_identical_and_keeps_fixed_random(tmp_path, variant):
    torch.manual_seed(0)
    model = BertSynthesizerModel(config(synthesizer_variant=variant))
    model.save_pretrained(tmp_path / "a")
    reloaded = BertSynthesizerModel.from_pretrained(tmp_path / "a")
    reloaded.save_pretrained(tmp_path / "b")
    assert _sha(tmp_path / "a" / "model.safetensors") == _sha(tmp_path / "b" / "model.safetensors")
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    for a, b in zip(model.encoder.layer, reloaded.encoder.layer):
        fixed = a.attention.self.synthesizer.fixed_random_r
        assert not fixed.requires_grad and all(fixed is not p for p in model.parameters())
        assert torch.equal(fixed, b.attention.self.synthesizer.fixed_random_r)


class _KillAt(TrainerCallback):
    """Stops training right after step `step`, as a killed job would (its last checkpoint is what remains)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _train(output_dir, kill_at=None, resume=None):
    torch.manual_seed(0)
    model = BertSynthesizerForSequenceClassification(config(synthesizer_variant="random+vanilla", num_labels=2,
                                                            hidden_dropout_prob=0.1))
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=8, learning_rate=3e-3,
        save_strategy="steps", save_steps=4, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        data_seed=0, logging_steps=100,
    )
    callbacks = [_KillAt(kill_at)] if kill_at else []
    trainer = Trainer(model=model, args=args, train_dataset=_TokenPresenceData(n=64), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    straight = _train(tmp_path / "straight")
    interrupted = _train(tmp_path / "interrupted", kill_at=4)
    resumed = _train(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-4"))
    assert not torch.equal(interrupted.classifier.weight, straight.classifier.weight)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


VARIANT_OPTIONS = [
    dict(synthesizer_variant=v)
    for v in ["dense", "factorized_dense", "random", "fixed_random", "factorized_random", "random+vanilla",
              "dense+vanilla", "dense+random", "factorized_dense+factorized_random+vanilla"]
] + [dict(synthesizer_variant="random+vanilla", synthesizer_mixture="gate"),
     dict(synthesizer_variant="dense", synthesizer_dense_shared_w2=True)]


@settings(max_examples=30, deadline=None)
@given(
    options=st.sampled_from(VARIANT_OPTIONS),
    batch=st.integers(1, 3),
    length=st.integers(1, 9),
    heads=st.sampled_from([1, 2, 4]),
    causal=st.booleans(),
    data=st.data(),
)
def test_property_attention_matches_reference(options, batch, length, heads, causal, data):
    attn = attention_layer(options, seed=data.draw(st.integers(0, 99)), num_attention_heads=heads,
                           is_decoder=causal, max_position_embeddings=12)
    x = torch.randn(batch, length, 32)
    keep = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=length, max_size=length),
                                           min_size=batch, max_size=batch)))
    keep[:, 0] = True  # every row keeps at least one key (fully masked rows are tested separately)
    mask = keep[:, None, None, :]
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    out, probs = attn(x, attention_mask=mask, output_attentions=True)
    ref_out, ref_probs = reference_self_attention(attn, x, keep, causal=causal)
    torch.testing.assert_close(probs, ref_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
