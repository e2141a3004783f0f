"""Converted models work where users put transformers models: pipelines and PEFT LoRA. Models are converted from the
real MiniLM checkpoint with the CLI, so they come with its WordPiece tokenizer (capped at the synthesizer length)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import hf_synthesizer
from hf_synthesizer import cli
from hf_synthesizer.conversion.lora import check_lora_targets

LENGTH = 32


def convert(minilm_dir, dst, variant, head, *extra) -> Path:
    torch.manual_seed(0)
    argv = ["convert", minilm_dir, dst, "--attn_implementation", f"synthesizer_{variant}",
            "--synthesizer_length", LENGTH, "--head", head, *extra]
    assert cli.main([str(a) for a in argv]) == 0
    return dst


@pytest.fixture(scope="module")
def converted(minilm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "fill-mask": convert(minilm_dir, root / "mlm", "random", "masked-lm"),
        "text-classification": convert(minilm_dir, root / "cls", "dense", "sequence-classification",
                                       "--num_labels", 2),
        "mixture": convert(minilm_dir, root / "mix", "factorized_random+vanilla", "sequence-classification",
                           "--num_labels", 2),
    }


def test_fill_mask_pipeline(converted):
    fill = pipeline("fill-mask", model=str(converted["fill-mask"]), top_k=3)
    assert type(fill.model).__name__ == "BertSynthesizerForMaskedLM"
    results = fill("the capital of france is [MASK].")
    assert len(results) == 3
    assert all(set(r) >= {"score", "token_str", "sequence"} for r in results)
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    # A batch with different lengths (padding) gives each input the result it gets alone.
    alone = fill("a [MASK] day.")
    batched = fill(["a [MASK] day.", "the capital of france is [MASK] and it is large."], batch_size=2)
    assert [r["token_str"] for r in batched[0]] == [r["token_str"] for r in alone]
    for a, b in zip(batched[0], alone):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_text_classification_pipeline(converted):
    classify = pipeline("text-classification", model=str(converted["text-classification"]))
    assert type(classify.model).__name__ == "BertSynthesizerForSequenceClassification"
    [result] = classify("a fine movie")
    assert result["label"] in {"LABEL_0", "LABEL_1"} and 0.0 <= result["score"] <= 1.0
    # Longer than synthesizer_length: truncation=True cuts at the limit (the tokenizer was capped at conversion) ...
    long_text = "word " * 200
    assert classify(long_text, truncation=True)[0]["label"] in {"LABEL_0", "LABEL_1"}
    # ... and without it the model refuses clearly instead of mis-slicing.
    with pytest.raises(ValueError, match=r"exceeds the synthesizer length 32 \(config.synthesizer_length\)"):
        classify(long_text)


def lora_step(path, target_modules):
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, task_type="SEQ_CLS"))
    batch = tokenizer(["a fine movie", "a dull and long movie"], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 0])
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    lora_names = [n for n in trainable if "lora_" in n]
    assert lora_names, "no LoRA parameters were created"
    # LoRA B starts at zero; one step moves it. The base model stays frozen.
    assert any(not torch.equal(trainable[n], dict(model.named_parameters())[n]) for n in lora_names)
    assert all(torch.equal(frozen[n], dict(model.named_parameters())[n]) for n in frozen)
    return model, lora_names


def test_lora_all_linear_on_a_pure_variant_adapts_value_and_the_synthesizer(converted):
    """PEFT's "all-linear" finds the linear layers a pure variant has: value, the dense synthesizer's dense_w1 (whose
    LoRA delta the attention uses: one step moves it), no query/key (there are none)."""
    model, names = lora_step(converted["text-classification"], "all-linear")
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert {"value", "dense_w1"} <= adapted and not adapted & {"query", "key"}
    params = dict(model.named_parameters())
    assert any(params[n].abs().sum() > 0 for n in names if ".dense_w1.lora_B" in n)  # B starts at 0: it got a gradient


def test_lora_on_query_of_a_pure_variant_fails_clearly(converted):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForSequenceClassification.from_pretrained(converted["text-classification"])
    # peft itself only says that nothing matched ...
    with pytest.raises(ValueError, match="No modules were targeted"):
        get_peft_model(model, LoraConfig(target_modules=["query"], task_type="SEQ_CLS"))
    # ... the check names what is missing, why, and what to use instead.
    with pytest.raises(ValueError, match=r"\['query', 'key'\] do not exist in this synthesizer_dense model.*"
                                         r"no query/key projections. Targets that exist: \['value', 'dense_w1'\], "
                                         r"or target_modules='all-linear'"):
        check_lora_targets(model, ["query", "key", "value"])
    check_lora_targets(model, ["value", "dense_w1"])  # fine


def test_lora_step_on_a_vanilla_mixture_targets_query_key_value(converted):
    path = converted["mixture"]
    check_lora_targets(AutoModelForSequenceClassification.from_pretrained(path), ["query", "key", "value"])
    _, names = lora_step(path, ["query", "key", "value"])
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} >= {"query", "key", "value"}


def test_text2text_generation_t5(tmp_path, minilm_dir):
    """MiniLM's WordPiece tokenizer: no T5 tokenizer is available offline. transformers 5.23 removed the
    `text2text-generation` pipeline; while it is gone the test checks that and runs what the pipeline did (tokenize,
    generate, decode) on the converted checkpoint."""
    t5_classes = hf_synthesizer.T5_AUTO_CLASSES
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration
    from transformers.pipelines import SUPPORTED_TASKS

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "stock")
    tokenizer.save_pretrained(tmp_path / "stock")
    dst = convert(tmp_path / "stock", tmp_path / "t5", "random", "seq2seq-lm")
    assert json.loads((dst / "config.json").read_text())["synthesizer_variant"] == "random"
    if "text2text-generation" in SUPPORTED_TASKS:
        generate = pipeline("text2text-generation", model=str(dst))
        assert type(generate.model) is t5_classes[AutoModelForSeq2SeqLM]
        [result] = generate("translate this", max_new_tokens=5, do_sample=False)
        assert isinstance(result["generated_text"], str)
        return
    with pytest.raises(KeyError, match="text2text-generation has been removed"):
        pipeline("text2text-generation", model=str(dst))
    model = AutoModelForSeq2SeqLM.from_pretrained(dst)
    assert type(model) is t5_classes[AutoModelForSeq2SeqLM]
    converted_tokenizer = AutoTokenizer.from_pretrained(dst)
    inputs = converted_tokenizer(["translate this", "and this longer one too"], padding=True, return_tensors="pt",
                                 return_token_type_ids=False)  # a WordPiece tokenizer standing in for T5's
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    texts = converted_tokenizer.batch_decode(output, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert output.shape[1] <= 6
    # The card shows this generate snippet instead of a pipeline that does not exist.
    card = (dst / "README.md").read_text()
    assert "model.generate(" in card and 'pipeline("text2text-generation"' not in card
