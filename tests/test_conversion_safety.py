"""Conversion refuses or is right (issue 26): a causal-lm head is a decoder, whichever route built it (the CLI, the
Python conversion API, `load_synthesizer_model` that the examples use), and a synthesizer length past BERT's position
embeddings is refused with one message at config, convert, load and resize time."""

import json
import shutil

import pytest
import torch
from conftest import spread_synthesizer, tiny_bert_config
from transformers import AutoModelForCausalLM, BertConfig, T5Config, T5ForConditionalGeneration

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerForMaskedLM, T5SynthesizerConfig, cli
from hf_synthesizer.conversion.convert import convert
from hf_synthesizer.conversion.loading import load_synthesizer_model

CAUSAL_VARIANTS = ["random", "fixed_random", "factorized_random", "dense", "factorized_dense", "random+vanilla",
                   "dense+random"]


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def earlier_logits_unchanged(model) -> tuple[float, float]:
    """Largest change of the logits at positions 0-2, and at 3-5, when only token 3 of 6 changes (float64)."""
    model = spread_synthesizer(model.double().eval())
    ids = torch.tensor([[5, 9, 14, 21, 30, 7]])
    changed = ids.clone()
    changed[0, 3] = 44
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    return (a[:, :3] - b[:, :3]).abs().max().item(), (a[:, 3:] - b[:, 3:]).abs().max().item()


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_convert_causal_lm_head_is_a_decoder(stock_bert_dir, tmp_path, capsys, variant):
    """`convert --head causal-lm` of a stock (bidirectional) BERT: changing token 3 must leave positions 0-2 exactly
    as they were (it moved them by 3-4 before, when the converted config said is_decoder: false)."""
    dst = tmp_path / "causal"
    assert run_cli("convert", stock_bert_dir, dst, "--attn_implementation", f"synthesizer_{variant}",
                   "--head", "causal-lm") == 0
    assert "is_decoder=True: causal self-attention" in capsys.readouterr().out
    assert json.loads((dst / "config.json").read_text())["is_decoder"] is True
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert model.config.is_decoder
    earlier, later = earlier_logits_unchanged(model)
    assert earlier == 0.0
    assert later > 1e-3  # the change does reach the later positions: the check above can fail


def test_python_conversion_api_and_loading_helper_give_a_decoder(stock_bert_dir, tmp_path):
    model, _ = convert(stock_bert_dir, tmp_path / "causal", attn_implementation="synthesizer_random+vanilla",
                       head="causal-lm")
    assert model.config.is_decoder and earlier_logits_unchanged(model)[0] == 0.0
    # The examples' route (load_synthesizer_model), converting at load time and reloading a saved masked-LM.
    loaded = load_synthesizer_model(AutoModelForCausalLM, str(stock_bert_dir), "synthesizer_dense")
    assert loaded.config.is_decoder and earlier_logits_unchanged(loaded)[0] == 0.0
    mlm = BertSynthesizerForMaskedLM.from_pretrained(stock_bert_dir, attn_implementation="synthesizer_random")
    mlm.save_pretrained(tmp_path / "mlm")
    reloaded = load_synthesizer_model(AutoModelForCausalLM, str(tmp_path / "mlm"))
    assert reloaded.config.is_decoder and earlier_logits_unchanged(reloaded)[0] == 0.0
    # convert from a saved (bidirectional) synthesizer checkpoint to the causal-lm head
    model, _ = convert(tmp_path / "mlm", tmp_path / "mlm_causal", head="causal-lm")
    assert model.config.is_decoder and model.config.synthesizer_variant == "random"
    assert earlier_logits_unchanged(AutoModelForCausalLM.from_pretrained(tmp_path / "mlm_causal"))[0] == 0.0


def test_causal_lm_head_with_is_decoder_false_is_refused(stock_bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"causal-lm head .* needs is_decoder=True.*Drop is_decoder=False"):
        convert(stock_bert_dir, tmp_path / "x", attn_implementation="synthesizer_random", head="causal-lm",
                is_decoder=False)
    with pytest.raises(ValueError, match=r"needs is_decoder=True"):
        load_synthesizer_model(AutoModelForCausalLM, str(stock_bert_dir), "synthesizer_random",
                               config_kwargs={"is_decoder": False})
    assert not (tmp_path / "x").exists()


def test_t5_has_no_causal_lm_head_and_says_so(tmp_path, capsys):
    T5ForConditionalGeneration(T5Config(vocab_size=13, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0, pad_token_id=0)).save_pretrained(tmp_path / "t5")
    assert run_cli("convert", tmp_path / "t5", tmp_path / "x", "--attn_implementation", "synthesizer_random",
                   "--head", "causal-lm") == 2
    err = capsys.readouterr().err
    assert "T5 checkpoints have no causal-lm head; choose one of:" in err and "seq2seq-lm" in err
    assert "Traceback" not in err


def length_error(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_synthesizer_length_past_the_position_embeddings_is_refused_everywhere_alike(stock_bert_dir, tmp_path,
                                                                                   capsys):
    """The stock BERT has 24 positions. synthesizer_length=32 is refused when the config is built, by `convert` (CLI
    and Python), when a checkpoint saying so is loaded, and by `resize_synthesizer_length`: the same message."""
    expected = length_error(lambda: BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_variant="random",
                                                          synthesizer_length=32))
    assert expected.startswith("synthesizer_length=32 exceeds max_position_embeddings=24: ")
    assert "Use synthesizer_length <= 24" in expected
    from_stock = lambda: BertSynthesizerConfig.from_pretrained(stock_bert_dir, synthesizer_length=32)  # noqa: E731
    assert length_error(from_stock) == expected
    assert length_error(lambda: convert(stock_bert_dir, tmp_path / "x", attn_implementation="synthesizer_random",
                                        synthesizer_length=32)) == expected
    assert run_cli("convert", stock_bert_dir, tmp_path / "x", "--attn_implementation", "synthesizer_random",
                   "--synthesizer_length", 32) == 2
    assert capsys.readouterr().err.strip() == f"hf-synthesizer convert: error: {expected}"
    assert not (tmp_path / "x").exists()
    assert length_error(lambda: load_synthesizer_model(AutoModelForCausalLM, str(stock_bert_dir), "synthesizer_random",
                                                       synthesizer_length=32)) == expected
    # A saved synthesizer checkpoint: resizing it (directly or by convert) and loading one edited past the limit.
    saved = tmp_path / "saved"
    model, _ = convert(stock_bert_dir, saved, attn_implementation="synthesizer_random", synthesizer_length=16)
    assert length_error(lambda: model.resize_synthesizer_length(32)) == expected
    assert model.config.synthesizer_length == 16  # refused before anything changed
    assert length_error(lambda: convert(saved, tmp_path / "y", synthesizer_length=32)) == expected
    edited = tmp_path / "edited"
    shutil.copytree(saved, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "synthesizer_length": 32}))
    assert length_error(lambda: BertSynthesizerForMaskedLM.from_pretrained(edited)) == expected
    # At the limit: accepted.
    assert BertSynthesizerConfig(**tiny_bert_config().to_dict(), synthesizer_length=24).synthesizer_length == 24


def test_t5_synthesizer_length_has_no_position_limit():
    """T5's relative position bias has no maximum length: any synthesizer_length is accepted (documented)."""
    config = T5SynthesizerConfig(vocab_size=13, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2,
                                 synthesizer_variant="random", synthesizer_length=4096)
    assert config.max_synthesizer_length() is None and config.synthesizer_length == 4096
    assert "no upper bound" in T5SynthesizerConfig.__doc__
    assert not hasattr(BertConfig(), "synthesizer_length")  # the limit lives in the synthesizer configs only


def test_split_held_out_keeps_every_fifth_text_out():
    from datasets import Dataset

    from hf_synthesizer.conversion.calibration import split_held_out

    texts = [f"text {i}" for i in range(12)]
    kept, held = split_held_out(texts, 0.2)
    assert held == ["text 4", "text 9"] and kept == [t for t in texts if t not in held]
    kept, held = split_held_out(Dataset.from_dict({"text": texts}), 0.2)
    assert held["text"] == ["text 4", "text 9"] and len(kept) == 10
    assert split_held_out(texts[:9], 0.2) == (texts[:9], None)  # too few: all calibrate, nothing held out
    assert split_held_out(texts, 0.0) == (texts, None)
    with pytest.raises(ValueError, match=r"hold_out must be a fraction in \[0, 0.5\)"):
        split_held_out(texts, 0.7)


def test_calibration_agreement_is_measured_on_the_held_out_texts(stock_bert_dir, tmp_path):
    """The figure the report prints comes from the held-out texts' teacher attention, not the calibration texts'."""
    from conftest import with_wordpiece_tokenizer
    from transformers import AutoTokenizer

    from hf_synthesizer import BertSynthesizerModel
    from hf_synthesizer.conversion.calibration import (
        CalibrationReport,
        calibrate_synthesizer,
        load_teacher,
        make_batches,
        record_teacher_attention,
    )

    words = "the a cat dog sat ran on under mat house big small".split()
    path = with_wordpiece_tokenizer(stock_bert_dir, tmp_path, words)
    tokenizer = AutoTokenizer.from_pretrained(path)
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(len(words), (3 + i % 7,), generator=gen)) for i in range(15)]
    model = BertSynthesizerModel.from_pretrained(path, attn_implementation="synthesizer_random")
    report = calibrate_synthesizer(model, path, texts, tokenizer, hold_out=0.2)
    assert (report.num_examples, report.held_out_examples) == (12, 3)
    assert "agreement measured on 3 held-out texts (not used for calibration" in report.summary()
    teacher = load_teacher(path, like=model)
    held_out = record_teacher_attention(teacher, make_batches([texts[4], texts[9], texts[14]], tokenizer))
    in_sample = record_teacher_attention(teacher, make_batches([t for i, t in enumerate(texts) if i % 5 != 4],
                                                               tokenizer))
    assert report.agreement == CalibrationReport(dict(report), model, in_sample, held_out).agreement
    assert report.agreement != CalibrationReport(dict(report), model, in_sample).agreement


def test_causal_lm_conversion_calibrates_on_the_causal_teacher(stock_bert_dir, tmp_path):
    """`convert --head causal-lm --calibrate_on`: the student is a decoder, so it is calibrated to the stock model's
    attention under the causal mask: softmax(R) over earlier tokens is then exactly the causal teacher's mean attention
    (equal-length texts, no padding). Against the bidirectional teacher it was not (rows renormalised)."""
    from conftest import with_wordpiece_tokenizer
    from test_calibration import mean_self_attention
    from transformers import AutoTokenizer, BertForPreTraining, BertLMHeadModel

    words = "the a cat dog sat ran on under mat house big small".split()
    src = with_wordpiece_tokenizer(stock_bert_dir, tmp_path, words)
    stock = BertForPreTraining.from_pretrained(src)
    with torch.no_grad():  # peaked attention (a random tiny BERT's is near uniform, causal or not)
        for layer in stock.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8)
    stock.save_pretrained(src)
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(len(words), (6,), generator=gen)) for _ in range(8)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    assert run_cli("convert", src, tmp_path / "causal", "--attn_implementation", "synthesizer_random",
                   "--head", "causal-lm", "--calibrate_on", tmp_path / "texts.txt") == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "causal", attn_implementation="eager").eval()
    teacher = BertLMHeadModel.from_pretrained(src, is_decoder=True, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(src)(texts, return_tensors="pt")["input_ids"]  # 8 tokens each
    (learned,), (taught,) = mean_self_attention(student.bert, ids), mean_self_attention(teacher.bert, ids)
    assert (learned - taught).abs().max() < 1e-5
    assert learned[:, 0, 1:].abs().max() == 0  # causal: the first token attends to itself only
