"""Attention-transfer calibration: each component's closed-form fit, and calibrated models being clearly closer
to the stock teacher than plainly initialised ones (tiny model here; MiniLM figures: benchmarks/)."""

import pytest
import torch
from transformers import BertForPreTraining

import hf_synthesizer
from hf_synthesizer.conversion.calibration import (
    LayerRecord,
    apply_calibration,
    best_rank_k,
    calibrate_synthesizer,
    compare_to_teacher,
    dense_fit,
    load_teacher,
    mean_attention_log_probs,
    record_teacher_attention,
)

from conftest import tiny_bert_config

MASK_ID = 1


@pytest.fixture(scope="module")
def peaky_bert_dir(tmp_path_factory):
    """A stock checkpoint whose attention is far from uniform. With transformers' default init (std 0.02) a
    tiny BERT attends almost uniformly, so any near-uniform synthesizer already matches it and calibration
    would have nothing to show; std 0.3 gives position- and content-dependent attention."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("peaky_bert")
    BertForPreTraining(tiny_bert_config(initializer_range=0.3)).save_pretrained(path)
    return path


def token_batches(count, seed, batch=16, length=20):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, 101, (batch, length), generator=generator)
        ids[:, 0] = 2
        lengths = torch.randint(6, length + 1, (batch,), generator=generator)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def teacher(peaky_bert_dir):
    return load_teacher(peaky_bert_dir, like=hf_synthesizer.BertSynthesizerForMaskedLM(
        hf_synthesizer.BertSynthesizerConfig(**tiny_bert_config().to_dict())))


@pytest.fixture(scope="module")
def recorded(teacher):
    return record_teacher_attention(teacher, token_batches(4, seed=1))


def student(path, teacher, variant, **kwargs):
    torch.manual_seed(0)
    model = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(
        path, attn_implementation=f"synthesizer_{variant}", **kwargs)
    model.load_state_dict(teacher.state_dict(), strict=False)  # same heads as the teacher
    return model


def test_records_every_self_attention_layer(recorded):
    assert list(recorded.layers) == [f"bert.encoder.layer.{i}.attention.self" for i in range(2)]
    rec = recorded.layers["bert.encoder.layer.0.attention.self"]
    assert rec.logits[0].shape == (16, 4, 20, 20) and rec.queries[0].shape == (16, 4, 20, 8)
    # pairs: both positions real, so padding never enters the statistics
    mask = token_batches(1, seed=1)[0]["attention_mask"].bool()
    assert torch.equal(rec.pairs[0], mask[:, :, None] & mask[:, None, :])


@pytest.mark.parametrize(
    "variant", ["random", "fixed_random", "factorized_random", "dense", "random+vanilla", "dense+vanilla"]
)
def test_calibrated_is_clearly_closer_to_teacher(peaky_bert_dir, teacher, recorded, variant):
    heldout = token_batches(2, seed=2)
    plain = compare_to_teacher(student(peaky_bert_dir, teacher, variant), teacher, heldout, mask_token_id=MASK_ID)
    model = student(peaky_bert_dir, teacher, variant)
    report = apply_calibration(model, recorded)
    assert all(report.values())
    calibrated = compare_to_teacher(model, teacher, heldout, mask_token_id=MASK_ID)
    # The cosine distance to the teacher shrinks by at least a third.
    assert 1 - calibrated["hidden_cosine"] < (2 / 3) * (1 - plain["hidden_cosine"]), (plain, calibrated)
    if "vanilla" in variant:
        assert calibrated["mlm_top1_agreement"] > plain["mlm_top1_agreement"] + 0.2, (plain, calibrated)


def test_random_r_is_log_mean_attention(teacher):
    """Same-length inputs: softmax(R) is exactly the teacher's attention averaged over the sample."""
    batch = {"input_ids": torch.randint(5, 101, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long)}
    rec = record_teacher_attention(teacher, [batch]).layers["bert.encoder.layer.1.attention.self"]
    r = mean_attention_log_probs(rec, length=24)
    expected = torch.softmax(rec.logits[0], -1).mean(0)
    torch.testing.assert_close(torch.softmax(r[:, :12, :12], -1), expected, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(r).all() and r.shape == (4, 24, 24)


def test_factorized_random_is_best_rank_k():
    torch.manual_seed(0)
    r = torch.randn(3, 10, 10)
    r1, r2 = best_rank_k(r, seen=10, rank=4)
    u, s, vh = torch.linalg.svd(r)
    torch.testing.assert_close(r1 @ r2.transpose(-1, -2), (u[..., :4] * s[:, None, :4]) @ vh[:, :4], atol=1e-4,
                               rtol=1e-4)
    # Full rank reproduces R, including rows and columns beyond the observed block.
    low = torch.randn(2, 12, 3) @ torch.randn(2, 3, 12)
    r1, r2 = best_rank_k(low, seen=8, rank=3)
    torch.testing.assert_close(r1 @ r2.transpose(-1, -2), low, atol=1e-3, rtol=1e-3)


def test_dense_fit_recovers_an_exact_affine_target():
    """Teacher logits that are affine in relu(W1 x + b1) are reproduced: the W2/b2 ridge fit is right."""
    torch.manual_seed(0)
    heads, dh, length, l = 2, 4, 8, 6
    queries = torch.randn(32, heads, l, dh) + 3.0  # positive: the relu shift is then 0
    w2, b2 = torch.randn(heads, dh, length), torch.randn(heads, length)
    logits = queries @ w2[:, :, :l] + b2[:, None, :l]
    rec = LayerRecord([logits], [queries], [torch.ones(32, l, l, dtype=torch.bool)],
                      query_weight=torch.randn(heads * dh, 5), query_bias=torch.zeros(heads * dh))
    _, b1, fit_w2, fit_b2 = dense_fit(rec, length, shared_w2=False, ridge=1e-9)
    torch.testing.assert_close(fit_w2[..., :l], w2[..., :l], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(fit_b2[..., :l], b2[..., :l], atol=1e-2, rtol=1e-2)
    assert torch.equal(b1, torch.zeros(heads * dh))


@pytest.mark.parametrize("mixture", ["softmax", "gate"])
def test_mixture_starts_toward_vanilla(peaky_bert_dir, teacher, recorded, mixture):
    model = student(peaky_bert_dir, teacher, "random+vanilla", synthesizer_mixture=mixture)
    apply_calibration(model, recorded, vanilla_weight=0.8)
    for module in model.modules():
        if isinstance(module, hf_synthesizer.SynthesizerLogits):
            weights = module.mixture_weights()
            torch.testing.assert_close(weights[module.components.index("vanilla")],
                                       torch.full_like(weights[0], 0.8))


def test_calibrate_minilm_from_text(minilm_dir):
    """End to end on the real checkpoint: raw text, teacher given as the stock path."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    words = "the a cat dog sat ran on under mat house quickly slowly near big small red".split()
    generator = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (9,), generator=generator))
             for _ in range(24)]
    model = hf_synthesizer.BertSynthesizerModel.from_pretrained(minilm_dir, attn_implementation="synthesizer_random")
    teacher = load_teacher(minilm_dir, like=model)
    heldout = [tokenizer(texts[16:], padding=True, return_tensors="pt")]
    plain = compare_to_teacher(model, teacher, heldout)["hidden_cosine"]
    report = calibrate_synthesizer(model, minilm_dir, texts[:16], tokenizer, batch_size=8)
    assert len(report) == 6 and all(v == ["random"] for v in report.values())
    calibrated = compare_to_teacher(model, teacher, heldout)["hidden_cosine"]
    assert 1 - calibrated < 0.7 * (1 - plain), (plain, calibrated)


# ------------------------------------------------------------------------------------------------------- T5
def biased_t5(model_class, zero_keys=False):
    """A 1-layer stock T5 (d_model 32, 2 heads) whose relative position bias is drawn with std 3, so that attention
    depends strongly on it. `zero_keys`: the key projection is 0, so the logits are the position bias alone."""
    from transformers import T5Config

    torch.manual_seed(0)
    config = T5Config(vocab_size=13, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = model_class(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                param.normal_(0.0, 3.0)
            if zero_keys and name.endswith("SelfAttention.k.weight"):
                param.zero_()
    return model


def mean_self_attention(model, ids):
    """Batch-mean attention probabilities of the encoder's (and decoder's) first self-attention layer; the decoder
    reads `ids` shifted right, as in calibration."""
    with torch.no_grad():
        if hasattr(model, "decoder"):
            out = model(input_ids=ids, decoder_input_ids=model._shift_right(ids), output_attentions=True)
            return out.encoder_attentions[0].mean(0), out.decoder_attentions[0].mean(0)
        return (model(input_ids=ids, output_attentions=True).attentions[0].mean(0),)


@pytest.mark.parametrize("variant, position_bias, zero_keys", [
    ("random", True, False), ("random", False, False), ("dense", True, True),
])
def test_t5_calibration_counts_the_position_bias_once(tmp_path, variant, position_bias, zero_keys):
    """The teacher's logits already include T5's relative position bias B. A student that adds B to its synthesized
    logits (synthesizer_position_bias=True, the default) must be fitted to the teacher minus B, or it counts B twice
    (max |student mean P - teacher mean P| was 0.27 for random): calibrated, softmax(R + B) is the teacher's mean
    attention whatever the flag says. Dense: with zero keys the teacher's logits are B alone, so the fit's target is
    0 and dense + B reproduces the teacher exactly."""
    from transformers import T5EncoderModel

    biased_t5(T5EncoderModel, zero_keys).save_pretrained(tmp_path)
    ids = torch.randint(2, 13, (8, 10), generator=torch.Generator().manual_seed(1))
    student = hf_synthesizer.T5SynthesizerEncoderModel.from_pretrained(
        tmp_path, attn_implementation=f"synthesizer_{variant}", synthesizer_length=10,
        synthesizer_position_bias=position_bias).eval()
    teacher = load_teacher(tmp_path, like=student)
    calibrate_synthesizer(student, teacher, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    (taught,), (learned,) = mean_self_attention(teacher, ids), mean_self_attention(student, ids)
    assert (learned - taught).abs().max() < 1e-5


def test_seq2seq_t5_calibrates_encoder_and_decoder_self_attention(tmp_path):
    """A T5ForConditionalGeneration teacher is recorded on both sides (the decoder reads the text shifted right):
    the encoder's R and the decoder's R (its causal rows) reproduce the teacher's mean attention."""
    from transformers import T5ForConditionalGeneration

    biased_t5(T5ForConditionalGeneration).save_pretrained(tmp_path)
    ids = torch.randint(2, 13, (8, 10), generator=torch.Generator().manual_seed(1))
    student = hf_synthesizer.T5SynthesizerForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="synthesizer_random", synthesizer_length=10).eval()
    teacher = load_teacher(tmp_path, like=student)
    report = calibrate_synthesizer(student, teacher, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    assert sorted(report) == ["decoder.block.0.layer.0.SelfAttention.synthesizer",
                              "encoder.block.0.layer.0.SelfAttention.synthesizer"]
    for taught, learned in zip(mean_self_attention(teacher, ids), mean_self_attention(student, ids)):
        assert (learned - taught).abs().max() < 1e-5
    decoder_r = student.decoder.block[0].layer[0].SelfAttention.synthesizer.random_r
    assert torch.isfinite(decoder_r).all()


def test_convert_calibrates_seq2seq_t5_from_a_text_file(tmp_path):
    """`hf-synthesizer convert T5 DST --calibrate_on texts.txt` on a seq2seq checkpoint: both stacks calibrated."""
    from transformers import T5ForConditionalGeneration

    from hf_synthesizer import cli
    from test_t5_example import digit_tokenizer

    src, dst = tmp_path / "stock", tmp_path / "random"
    biased_t5(T5ForConditionalGeneration).save_pretrained(src)
    tokenizer = digit_tokenizer()
    tokenizer.save_pretrained(src)
    generator = torch.Generator().manual_seed(2)
    texts = [" ".join(str(d) for d in torch.randint(0, 10, (7,), generator=generator).tolist()) for _ in range(16)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    assert cli.main(["convert", str(src), str(dst), "--attn_implementation", "synthesizer_random",
                     "--synthesizer_length", "16", "--calibrate_on", str(tmp_path / "texts.txt")]) == 0
    student = hf_synthesizer.T5SynthesizerForConditionalGeneration.from_pretrained(dst).eval()
    teacher = T5ForConditionalGeneration.from_pretrained(src, attn_implementation="eager").eval()  # stock class
    # convert holds every 5th text out to measure the agreement it prints: the student reproduces the mean attention
    # of the 13 texts it was calibrated on
    calibrated = [t for i, t in enumerate(texts) if i % 5 != 4]
    ids = tokenizer(calibrated, return_tensors="pt")["input_ids"]  # 8 tokens each: no padding
    for taught, learned in zip(mean_self_attention(teacher, ids), mean_self_attention(student, ids)):
        assert (learned - taught).abs().max() < 1e-5
