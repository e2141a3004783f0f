"""The BERT synthesizer models as users meet them: loading stock checkpoints, saving and reloading, padding,
lengths, heads, Auto classes, Trainer, gradient checkpointing and generation."""

import pytest
import torch
from conftest import tiny_bert_config
from safetensors.torch import load_file
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertForPreTraining,
    BertModel,
    Trainer,
    TrainingArguments,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

import hf_synthesizer
from hf_synthesizer import (
    ATTN_IMPLEMENTATIONS,
    BERT_AUTO_CLASSES,
    BertSynthesizerConfig,
    BertSynthesizerForMaskedLM,
    BertSynthesizerForSequenceClassification,
    BertSynthesizerLMHeadModel,
    BertSynthesizerModel,
)

ALL_VARIANTS = [name.removeprefix("synthesizer_") for name in ATTN_IMPLEMENTATIONS] + [
    "factorized_random+vanilla",
    "dense+factorized_dense+random+fixed_random+factorized_random+vanilla",
]
SYNTHESIZER_PARAMS = {
    "dense": {"dense_w1.weight", "dense_w1.bias", "dense_w2", "dense_b2"},
    "factorized_dense": {"factorized_dense_a.weight", "factorized_dense_a.bias", "factorized_dense_b.weight",
                         "factorized_dense_b.bias"},
    "random": {"random_r"},
    "fixed_random": {"fixed_random_r"},
    "factorized_random": {"factorized_random_r1", "factorized_random_r2"},
    "vanilla": set(),
}


def ids(batch=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 100, (batch, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    return input_ids, attention_mask


def load(cls, path, variant, **kwargs):
    return cls.from_pretrained(path, attn_implementation=f"synthesizer_{variant}", **kwargs).eval()


def perturb(model, seed=0):
    """Move synthesizer parameters away from their near-uniform init so that tests can see them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if ".synthesizer." in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def test_import_registers_every_name_with_both_interfaces():
    for name in ATTN_IMPLEMENTATIONS:
        assert AttentionInterface._global_mapping[name] is hf_synthesizer.synthesizer_attention_forward
        assert name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    assert set(ATTN_IMPLEMENTATIONS) == {
        "synthesizer_dense", "synthesizer_factorized_dense", "synthesizer_random", "synthesizer_fixed_random",
        "synthesizer_factorized_random", "synthesizer_random+vanilla", "synthesizer_dense+vanilla",
        "synthesizer_dense+random",
    }
    assert AutoConfig.for_model("bert_synthesizer").__class__ is BertSynthesizerConfig


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_vanilla_matches_stock_bert(stock_bert_dir, backend):
    input_ids, attention_mask = ids()
    stock = BertModel.from_pretrained(stock_bert_dir, attn_implementation=backend).eval()
    ours = BertSynthesizerModel.from_pretrained(stock_bert_dir, attn_implementation=backend).eval()
    assert ours.config.synthesizer_variant == "vanilla" and ours.config._attn_implementation == backend
    expected = stock(input_ids, attention_mask=attention_mask).last_hidden_state
    got = ours(input_ids, attention_mask=attention_mask).last_hidden_state
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("variant,mixture", [("random+vanilla", "softmax"), ("dense+vanilla", "softmax"),
                                             ("random+vanilla", "gate")])
def test_mixture_with_all_weight_on_vanilla_matches_stock_bert(stock_bert_dir, backend, variant, mixture):
    input_ids, attention_mask = ids()
    stock = BertModel.from_pretrained(stock_bert_dir).eval()
    config = BertSynthesizerConfig.from_pretrained(
        stock_bert_dir, synthesizer_mixture=mixture, synthesizer_vanilla_backend=backend
    )
    ours = perturb(load(BertSynthesizerModel, stock_bert_dir, variant, config=config))
    with torch.no_grad():
        for layer in ours.encoder.layer:
            syn = layer.attention.self.synthesizer
            if mixture == "gate":
                syn.mixture_gate.fill_(-40.0)  # sigmoid(-40) ~ 4e-18 on the synthesizer, the rest on vanilla
            else:
                syn.mixture_logits.copy_(torch.tensor([[-40.0], [40.0]]).expand_as(syn.mixture_logits))
    expected = stock(input_ids, attention_mask=attention_mask).last_hidden_state
    got = ours(input_ids, attention_mask=attention_mask).last_hidden_state
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_stock_checkpoint_converts_with_clean_loading_report(stock_bert_dir, variant):
    stock = BertForPreTraining.from_pretrained(stock_bert_dir)
    model, info = BertSynthesizerForMaskedLM.from_pretrained(
        stock_bert_dir, attn_implementation=f"synthesizer_{variant}", output_loading_info=True
    )
    components = variant.split("+")
    expected_missing = {
        f"bert.encoder.layer.{i}.attention.self.synthesizer.{name}"
        for i in range(2)
        for c in components
        for name in SYNTHESIZER_PARAMS[c]
    }
    if len(components) > 1:
        expected_missing |= {f"bert.encoder.layer.{i}.attention.self.synthesizer.mixture_logits" for i in range(2)}
    assert set(info["missing_keys"]) == expected_missing
    # The pretraining checkpoint's NSP head and pooler are not part of a masked-LM model; dropped query/key
    # weights are ignored, not reported.
    assert info["unexpected_keys"] == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight", "cls.seq_relationship.bias"
    }
    assert model.config.synthesizer_variant == "+".join(hf_synthesizer.parse_variant(variant))
    # Everything the checkpoint holds loaded as is; query/key exist exactly when vanilla uses them.
    stock_state = stock.state_dict()
    for name, tensor in model.state_dict().items():
        if ".synthesizer." not in name:
            torch.testing.assert_close(tensor, stock_state[name], rtol=0, atol=0)
    has_qk = hasattr(model.bert.encoder.layer[0].attention.self, "query")
    assert has_qk == ("vanilla" in components)
    # New parameters are initialised (near-uniform attention), never left as garbage.
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(tensor).all(), name
        if name.endswith(("random_r", "dense_w2")):
            assert 0.005 < tensor.std() < 0.05, name


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_save_and_reload_round_trips_to_the_bit(stock_bert_dir, tmp_path, variant):
    model = perturb(load(BertSynthesizerForSequenceClassification, stock_bert_dir, variant, num_labels=3))
    input_ids, attention_mask = ids()
    expected = model(input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names  # and the code files (tests/test_sharing.py)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]  # weights: safetensors only
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # no attn_implementation
    assert type(reloaded) is BertSynthesizerForSequenceClassification
    assert reloaded.config.synthesizer_variant == model.config.synthesizer_variant
    assert reloaded.config._attn_implementation == model.config._attn_implementation
    assert torch.equal(reloaded(input_ids, attention_mask=attention_mask).logits, expected)
    # Fixed random matrices are not trained but are part of the checkpoint.
    if "fixed_random" in variant:
        assert any(k.endswith("fixed_random_r") for k in load_file(tmp_path / "model.safetensors"))


def test_every_head_is_registered_and_reloads(stock_bert_dir, tmp_path):
    for auto_class, cls in BERT_AUTO_CLASSES.items():
        model = load(cls, stock_bert_dir, "random")
        model.save_pretrained(tmp_path / cls.__name__)
        assert type(auto_class.from_pretrained(tmp_path / cls.__name__)) is cls
        assert model.bert.__class__ is BertSynthesizerModel if hasattr(model, "bert") else True


def test_auto_classes_convert_a_stock_checkpoint_through_the_config(stock_bert_dir):
    config = BertSynthesizerConfig.from_pretrained(stock_bert_dir)
    model = AutoModelForMaskedLM.from_pretrained(stock_bert_dir, config=config, attn_implementation="synthesizer_random")
    assert type(model) is BertSynthesizerForMaskedLM and model.config.synthesizer_variant == "random"
    config = BertSynthesizerConfig.from_pretrained(stock_bert_dir, synthesizer_variant="dense+vanilla")
    assert type(AutoModel.from_pretrained(stock_bert_dir, config=config)) is BertSynthesizerModel


def test_stock_model_with_synthesizer_attn_implementation_explains_the_fix(stock_bert_dir):
    stock = BertModel.from_pretrained(stock_bert_dir, attn_implementation="synthesizer_random")
    with pytest.raises(ValueError, match="stock transformers model.*BertSynthesizerModel"):
        stock(*ids())


def test_saved_synthesizer_is_never_silently_changed(stock_bert_dir, tmp_path):
    load(BertSynthesizerModel, stock_bert_dir, "random").save_pretrained(tmp_path)
    for backend in ("sdpa", "eager"):  # backends of the same synthesizer (see the test below)
        assert BertSynthesizerModel.from_pretrained(tmp_path, attn_implementation=backend).config.synthesizer_variant \
            == "random"
    with pytest.raises(ValueError, match="would silently replace"):
        BertSynthesizerModel.from_pretrained(tmp_path, attn_implementation="synthesizer_dense")
    with pytest.raises(ValueError, match="not supported by synthesizer models"):
        BertSynthesizerModel.from_pretrained(tmp_path, attn_implementation="flex_attention")
    same = BertSynthesizerModel.from_pretrained(tmp_path, attn_implementation="synthesizer_random")
    assert same.config.synthesizer_variant == "random"


def test_vanilla_backend_can_switch_at_run_time(stock_bert_dir):
    model = BertSynthesizerModel.from_pretrained(stock_bert_dir, attn_implementation="sdpa").eval()
    before = model(*ids()).last_hidden_state
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(model(*ids()).last_hidden_state, before, atol=1e-5, rtol=1e-5)


def test_variant_cannot_change_on_a_live_model(stock_bert_dir):
    vanilla = BertSynthesizerModel.from_pretrained(stock_bert_dir, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="cannot change on a live model"):
        vanilla.set_attn_implementation("synthesizer_random")
    assert vanilla.config.synthesizer_variant == "vanilla" and vanilla.config._attn_implementation == "sdpa"
    random = load(BertSynthesizerModel, stock_bert_dir, "random")
    with pytest.raises(ValueError, match="cannot change on a live model"):
        random.set_attn_implementation("synthesizer_dense")
    random.set_attn_implementation("eager")  # the backend changes, the variant stays
    assert random.config.synthesizer_variant == "random" and random.config._attn_implementation == "eager"
    random.set_attn_implementation("synthesizer_random")  # what it already is: fine
    assert random.config.synthesizer_variant == "random"


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_random", "fixed_random"])
def test_eager_and_sdpa_run_the_saved_synthesizer(stock_bert_dir, tmp_path, variant):
    """On a synthesizer checkpoint `eager` and `sdpa` are backends of its synthesizer math (eager the plain reference
    with attention maps, sdpa the fast routes), never dot-product attention in its place; only the config field's backend is saved."""
    from conftest import spread_synthesizer

    spread_synthesizer(load(BertSynthesizerModel, stock_bert_dir, variant), std=1.0).save_pretrained(tmp_path / "s")
    input_ids, attention_mask = ids()
    saved = BertSynthesizerModel.from_pretrained(tmp_path / "s").eval()
    assert saved.config._attn_implementation == "sdpa"
    expected = saved(input_ids, attention_mask=attention_mask).last_hidden_state
    dot_product = BertModel.from_pretrained(stock_bert_dir).eval()(input_ids, attention_mask=attention_mask)
    # far from what dot-product attention gives (in this tiny model the residual stream dominates either way)
    assert (expected - dot_product.last_hidden_state).abs().max() > 2e-3

    eager = BertSynthesizerModel.from_pretrained(tmp_path / "s", attn_implementation="eager").eval()
    assert (eager.config._attn_implementation, eager.config.synthesizer_variant) == ("eager", variant)
    out = eager(input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(out.last_hidden_state, expected, atol=2e-5, rtol=1e-4)
    assert out.attentions is None and len(eager(input_ids, output_attentions=True).attentions) == 2
    if variant in ("random", "fixed_random"):  # the maps are softmax(R) (+ padding): the synthesizer's, not QK^T's
        maps = eager(input_ids, attention_mask=attention_mask, output_attentions=True).attentions[0]
        r = getattr(eager.encoder.layer[0].attention.self.synthesizer, variant + "_r")[:, :10, :10]
        keep = attention_mask[:, None, None, :].bool()
        torch.testing.assert_close(maps, torch.softmax(r.masked_fill(~keep, float("-inf")), -1), atol=1e-6, rtol=1e-5)

    saved.set_attn_implementation("eager")  # switching a live model: the same
    assert saved.config.synthesizer_variant == variant
    torch.testing.assert_close(saved(input_ids, attention_mask=attention_mask).last_hidden_state, expected,
                               atol=2e-5, rtol=1e-4)
    # As in transformers, attn_implementation is a run-time choice: a checkpoint saved after a debugging `eager` load
    # or switch reloads with its saved backend (synthesizer_vanilla_backend), not with the slow reference.
    saved.save_pretrained(tmp_path / "e")
    assert BertSynthesizerModel.from_pretrained(tmp_path / "e").config._attn_implementation == "sdpa"
    eager.save_pretrained(tmp_path / "e2")
    assert BertSynthesizerModel.from_pretrained(tmp_path / "e2").config._attn_implementation == "sdpa"
    eager.config.synthesizer_vanilla_backend = "eager"  # the config field, set explicitly, is saved
    eager.save_pretrained(tmp_path / "e3")
    assert BertSynthesizerModel.from_pretrained(tmp_path / "e3").config._attn_implementation == "eager"


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_padding_never_changes_real_tokens(stock_bert_dir, variant):
    model = perturb(load(BertSynthesizerModel, stock_bert_dir, variant))
    input_ids, _ = ids(batch=2, length=12)
    alone = model(input_ids[:1, :7]).last_hidden_state
    padded_ids = input_ids.clone()
    padded_ids[0, 7:] = 0
    mask = torch.ones_like(padded_ids)
    mask[0, 7:] = 0
    batched = model(padded_ids, attention_mask=mask).last_hidden_state
    assert (batched[0, :7] - alone[0]).abs().max() < 1e-5
    # and the padded example does not disturb its neighbour
    neighbour = model(input_ids[1:]).last_hidden_state
    assert (batched[1] - neighbour[0]).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_too_long_input_raises_a_clear_error(stock_bert_dir, variant):
    config = BertSynthesizerConfig.from_pretrained(stock_bert_dir, synthesizer_length=16)
    model = load(BertSynthesizerModel, stock_bert_dir, variant, config=config)
    model(torch.ones(1, 16, dtype=torch.long))  # at the limit: fine
    with pytest.raises(ValueError, match=r"Sequence length 17 exceeds the synthesizer length 16 \(config.synthesizer_length\)"):
        model(torch.ones(1, 17, dtype=torch.long))


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "vanilla"])
def test_too_long_input_at_the_default_length_raises_a_clear_error(variant):
    """With the default synthesizer_length = max_position_embeddings, BERT's position lookup is the first to meet an
    over-long input: it must raise the documented ValueError naming the limit, not a bare shape error. The same
    holds for explicit position ids past the position embeddings and for a model that synthesizes nothing."""
    config = BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant=variant)  # 24 positions
    model = (BertSynthesizerForMaskedLM(config) if variant == "vanilla" else BertSynthesizerModel(config)).eval()
    assert config.synthesizer_length == config.max_position_embeddings == 24
    model(torch.ones(2, 24, dtype=torch.long))  # at the limit: fine
    limit = (r"exceeds the synthesizer length 24 \(config.synthesizer_length\)" if variant != "vanilla"
             else r"needs 25 positions but the model has max_position_embeddings=24")
    with pytest.raises(ValueError, match=limit):
        model(torch.ones(2, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=limit):
        model(inputs_embeds=torch.zeros(1, 25, 32))
    with pytest.raises(ValueError, match=r"needs 31 positions but the model has max_position_embeddings=24 "
                                         r"\(config.max_position_embeddings\).*max_length=24"):
        model(torch.ones(1, 8, dtype=torch.long), position_ids=torch.arange(23, 31)[None])


def test_synthesizer_layers_keep_other_layers_vanilla(stock_bert_dir):
    config = BertSynthesizerConfig.from_pretrained(stock_bert_dir, synthesizer_layers=[1])
    model = load(BertSynthesizerModel, stock_bert_dir, "random", config=config)
    first, second = (layer.attention.self for layer in model.encoder.layer)
    assert first.synthesizer.components == ("vanilla",) and hasattr(first, "query")
    assert second.synthesizer.components == ("random",) and not hasattr(second, "query")
    stock = BertModel.from_pretrained(stock_bert_dir).eval()
    input_ids, attention_mask = ids()
    layer0 = model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1]
    expected = stock(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1]
    assert (layer0 - expected).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_random+vanilla"])
def test_output_attentions_per_call_returns_synthesized_probabilities(stock_bert_dir, variant):
    model = perturb(load(BertSynthesizerModel, stock_bert_dir, variant))
    input_ids, attention_mask = ids()
    out = model(input_ids, attention_mask=attention_mask, output_attentions=True)
    assert len(out.attentions) == 2
    probs = out.attentions[0]
    assert probs.shape == (3, 4, 10, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 10))
    assert probs[1, :, :, 6:].abs().max() == 0  # padded keys get no attention
    assert model(input_ids, attention_mask=attention_mask).attentions is None


@pytest.mark.parametrize("variant", ["random", "dense+vanilla", "factorized_dense"])
def test_gradient_checkpointing_gives_the_same_gradients(stock_bert_dir, variant):
    input_ids, attention_mask = ids()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same initialisation of the new synthesizer parameters both times
        model = perturb(load(BertSynthesizerForMaskedLM, stock_bert_dir, variant)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()  # what Trainer(gradient_checkpointing=True) calls
        model(input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_legacy_gradient_checkpointing_flag_reaches_every_head(family):
    """`config.gradient_checkpointing = True` (the legacy switch) turns checkpointing on in every head class: each
    builds its synthesizer submodule once, and that module's `post_init` consumes the flag."""
    from hf_synthesizer import T5_AUTO_CLASSES, T5SynthesizerConfig

    if family == "bert":
        classes, config = BERT_AUTO_CLASSES.values(), BertSynthesizerConfig(
            **tiny_bert_config().to_diff_dict(), synthesizer_variant="random")
    else:
        classes, config = T5_AUTO_CLASSES.values(), T5SynthesizerConfig(
            vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, synthesizer_variant="random",
            synthesizer_length=16)
    for cls in classes:
        flagged = config.__class__.from_dict(config.to_dict())
        flagged.gradient_checkpointing = True
        model = cls(flagged)
        layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and isinstance(m, torch.nn.Module)
                  and type(m).__name__.endswith(("Layer", "Block"))]
        assert layers and all(m.gradient_checkpointing for m in layers), cls.__name__
        assert not hasattr(model.config, "gradient_checkpointing"), cls.__name__  # consumed, not saved


class _TokenPresenceData(torch.utils.data.Dataset):
    """Label 1 when token 7 occurs in the sequence: attention has to gather it from anywhere."""

    def __init__(self, n=128, length=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, 100, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        where = torch.randint(0, length, (n,), generator=g)
        self.ids[self.labels == 1, where[self.labels == 1]] = 7

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@pytest.mark.parametrize("variant", ["random", "dense+vanilla"])
def test_trainer_fine_tune_reduces_the_loss(tmp_path, variant):
    config = BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant=variant, num_labels=2)
    torch.manual_seed(0)
    model = BertSynthesizerForSequenceClassification(config)
    data = _TokenPresenceData()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=5, learning_rate=3e-3,
        logging_steps=4, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0], losses


def test_minilm_converts_to_every_variant(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(["Synthesizers rethink self-attention.", "A short one."], padding=True, return_tensors="pt")
    stock = BertModel.from_pretrained(minilm_dir).eval()
    expected = stock(**batch).last_hidden_state
    vanilla = BertSynthesizerModel.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    assert (vanilla(**batch).last_hidden_state - expected).abs().max() < 1e-5
    for variant in ALL_VARIANTS[:8]:
        model, info = BertSynthesizerModel.from_pretrained(
            minilm_dir, attn_implementation=f"synthesizer_{variant}", output_loading_info=True
        )
        out = model(**batch).last_hidden_state
        assert out.shape == expected.shape and torch.isfinite(out).all()
        assert info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
        assert info["missing_keys"] and all(".synthesizer." in k for k in info["missing_keys"])
        assert model.config.synthesizer_length == 512


@pytest.mark.parametrize("variant", ["random", "dense+vanilla"])
def test_decoder_cross_attention_stays_dot_product(variant):
    config = BertSynthesizerConfig(
        **tiny_bert_config(is_decoder=True, add_cross_attention=True).to_dict(), synthesizer_variant=variant
    )
    torch.manual_seed(0)
    model = BertSynthesizerLMHeadModel(config).eval()
    cross = model.bert.encoder.layer[0].crossattention.self
    assert cross.synthesizer.components == ("vanilla",) and hasattr(cross, "query")
    encoder_states = torch.randn(2, 7, 32)
    encoder_mask = torch.ones(2, 7, dtype=torch.long)
    encoder_mask[1, 4:] = 0
    input_ids = torch.randint(1, 100, (2, 5))
    out = model(input_ids, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask).logits
    # Padded encoder positions do not matter.
    changed = encoder_states.clone()
    changed[1, 4:] = 100.0
    again = model(input_ids, encoder_hidden_states=changed, encoder_attention_mask=encoder_mask).logits
    torch.testing.assert_close(out, again, atol=1e-5, rtol=1e-5)
