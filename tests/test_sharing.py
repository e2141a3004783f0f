"""Sharing: saved checkpoints carry their code (auto_map over every head), load with trust_remote_code in a process
that cannot import hf_synthesizer, never run code without it, and push_to_hub uploads weights, config, code and the
generated model card (against a recording fake Hub client)."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from hub_fakes import BERT_CODE_FILES, T5_CODE_FILES, FakeHfApi, install_fake_hub, read_json, run_without_package
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, TrainingArguments
from transformers.dynamic_module_utils import get_imports

import hf_synthesizer
from hf_synthesizer import BERT_AUTO_CLASSES, BertSynthesizerForMaskedLM, BertSynthesizerForPreTraining
from hf_synthesizer.conversion.model_card import render_model_card
from hf_synthesizer.conversion.trainer import SynthesizerTrainer
from hf_synthesizer.modeling.hub_mixin import GENERATED_CARD_MARKER

# Third-party modules the shipped code may import (besides the standard library and flat siblings).
ALLOWED_IMPORTS = {"torch", "transformers", "huggingface_hub"}
CARD_COMMIT_MESSAGE = "Synthesizer model card (hf_synthesizer)"
VARIANTS = ["random", "fixed_random", "factorized_random", "dense+vanilla", "factorized_dense"]

INPUT_IDS = torch.tensor([[2, 15, 27, 39, 4, 3, 0, 0], [2, 41, 53, 65, 77, 89, 3, 0]])
ATTENTION_MASK = (INPUT_IDS != 0).long()


def expected_auto_map(auto_classes: dict, modeling_file: str, config_class) -> dict:
    auto_map = {auto.__name__: f"{modeling_file}.{model.__name__}" for auto, model in auto_classes.items()}
    auto_map["AutoConfig"] = f"configuration_synthesizer.{config_class.__name__}"
    return auto_map


BERT_AUTO_MAP = expected_auto_map(BERT_AUTO_CLASSES, "modeling_bert_synthesizer", hf_synthesizer.BertSynthesizerConfig)


def convert(stock_dir, model_class, variant, dest):
    torch.manual_seed(1)
    model = model_class.from_pretrained(stock_dir, attn_implementation=f"synthesizer_{variant}")
    model.save_pretrained(dest)
    return model


@pytest.fixture(scope="module")
def saved_checkpoints(stock_bert_dir, tmp_path_factory) -> dict[str, Path]:
    """One BertSynthesizerForPreTraining checkpoint per variant (pretraining holds the MLM and NSP heads)."""
    root = tmp_path_factory.mktemp("synth")
    return {v: (convert(stock_bert_dir, BertSynthesizerForPreTraining, v, root / v), root / v)[1] for v in VARIANTS}


def test_auto_map_names_every_head_whatever_class_was_saved(stock_bert_dir, tmp_path):
    for model_class in (hf_synthesizer.BertSynthesizerForSequenceClassification, hf_synthesizer.BertSynthesizerModel):
        convert(stock_bert_dir, model_class, "random", tmp_path / model_class.__name__)
        assert read_json(tmp_path / model_class.__name__ / "config.json")["auto_map"] == BERT_AUTO_MAP


def test_checkpoint_holds_only_safetensors_config_card_and_project_code(saved_checkpoints):
    package_dir = Path(hf_synthesizer.__file__).parent / "modeling"
    for path in saved_checkpoints.values():
        files = {p.name for p in path.iterdir()}
        assert files == {"config.json", "model.safetensors", "README.md"} | BERT_CODE_FILES
        for name in BERT_CODE_FILES:
            # Byte-identical copies of the project's files, importing only libraries every user has (transformers'
            # own check: imports inside try/except, like hub_mixin's optional card renderer, are not requirements).
            assert (path / name).read_bytes() == (package_dir / name).read_bytes()
            assert set(get_imports(path / name)) - sys.stdlib_module_names <= ALLOWED_IMPORTS, name



@pytest.fixture(scope="module")
def remote_code_run(saved_checkpoints, tmp_path_factory):
    """One fresh interpreter that cannot import hf_synthesizer (interpreter start-up dominates the cost):

    1. tries to load a copy of a checkpoint whose shipped files write a sentinel when executed, without
       trust_remote_code (must fail, nothing executed);
    2. loads every checkpoint with every Auto class of its auto_map with trust_remote_code=True, records outputs and
       re-saves one;
    3. control: loads the sentinel copy with trust_remote_code=True (the sentinel must now exist).
    """
    import shutil

    workdir = tmp_path_factory.mktemp("fresh_process")
    expected = {}
    for variant, path in saved_checkpoints.items():
        with torch.no_grad():
            out = BertSynthesizerForPreTraining.from_pretrained(path)(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)
            base = hf_synthesizer.BertSynthesizerModel.from_pretrained(path)(
                input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK
            )
        expected[f"{variant}/prediction_logits"] = out.prediction_logits
        expected[f"{variant}/seq_relationship_logits"] = out.seq_relationship_logits
        expected[f"{variant}/last_hidden_state"] = base.last_hidden_state
    save_file({"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK}, workdir / "inputs.safetensors")

    sentinel_ckpt = workdir / "sentinel_ckpt"
    shutil.copytree(saved_checkpoints["random"], sentinel_ckpt)
    sentinel = workdir / "code_ran.txt"
    for name in BERT_CODE_FILES:  # every shipped file reports when it is executed
        with open(sentinel_ckpt / name, "a") as f:
            f.write(f"\nwith open({str(sentinel)!r}, 'a') as _f:\n    _f.write(__name__ + '\\n')\n")

    script = f"""
        import json, os, sys
        import torch, transformers
        from safetensors.torch import load_file, save_file
        report = {{"errors": {{}}}}
        for auto_name in ("AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification"):
            try:
                getattr(transformers, auto_name).from_pretrained({str(sentinel_ckpt)!r})
            except ValueError as e:
                report["errors"][auto_name] = str(e)
        report["ran_without_trust"] = os.path.exists({str(sentinel)!r})

        checkpoints = {dict((v, str(p)) for v, p in saved_checkpoints.items())!r}
        inputs = load_file("inputs.safetensors")
        outputs = {{}}
        for variant, path in checkpoints.items():
            auto_map = json.load(open(path + "/config.json"))["auto_map"]
            classes = {{}}
            for auto_name in auto_map:
                if auto_name == "AutoConfig":
                    obj = transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
                else:
                    obj = getattr(transformers, auto_name).from_pretrained(path, trust_remote_code=True)
                classes[auto_name] = [type(obj).__module__, type(obj).__name__]
                if auto_name == "AutoModelForPreTraining":
                    with torch.no_grad():
                        out = obj(**inputs)
                    outputs[variant + "/prediction_logits"] = out.prediction_logits
                    outputs[variant + "/seq_relationship_logits"] = out.seq_relationship_logits
                    obj.save_pretrained("resaved_" + variant)
                    report[variant + "/resaved_auto_map"] = json.load(open("resaved_" + variant + "/config.json"))["auto_map"]
                if auto_name == "AutoModel":
                    with torch.no_grad():
                        outputs[variant + "/last_hidden_state"] = obj(**inputs).last_hidden_state
            report[variant] = classes
        report["leaked"] = sorted(m for m in sys.modules if m.startswith("hf_synthesizer"))
        save_file(outputs, "outputs.safetensors")

        # Control: with consent the same files do run, so the sentinel does detect execution.
        transformers.AutoModelForMaskedLM.from_pretrained({str(sentinel_ckpt)!r}, trust_remote_code=True)
        report["ran_with_trust"] = os.path.exists({str(sentinel)!r})
        json.dump(report, open("report.json", "w"))
    """
    result = run_without_package(script, workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return read_json(workdir / "report.json"), load_file(workdir / "outputs.safetensors"), expected


def test_fresh_process_without_package_loads_every_head_with_trust_remote_code(saved_checkpoints, remote_code_run):
    report, outputs, expected = remote_code_run
    assert report["leaked"] == []
    for variant in saved_checkpoints:
        classes = report[variant]
        assert set(classes) == set(BERT_AUTO_MAP)
        for auto_name, (module, name) in classes.items():
            assert module.startswith("transformers_modules."), (auto_name, module)  # the checkpoint's own code
            assert f"{module.split('.')[-1]}.{name}" == BERT_AUTO_MAP[auto_name]
        # A model loaded from remote code and saved again still maps every head.
        assert report[f"{variant}/resaved_auto_map"] == BERT_AUTO_MAP
    # Outputs equal the original models'.
    assert set(outputs) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(outputs[key], value, rtol=0, atol=1e-6, msg=key)


def test_loading_never_executes_code_without_trust_remote_code(remote_code_run):
    report, _, _ = remote_code_run
    assert report["ran_without_trust"] is False
    assert set(report["errors"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification"}
    for message in report["errors"].values():
        assert "trust_remote_code=True" in message and "custom code" in message
    assert report["ran_with_trust"] is True, "control: trust_remote_code=True must run the shipped code"


def test_with_package_imported_loading_uses_installed_code_not_the_checkpoints(saved_checkpoints):
    model = AutoModelForMaskedLM.from_pretrained(saved_checkpoints["random"])
    assert type(model) is BertSynthesizerForMaskedLM
    assert type(AutoConfig.from_pretrained(saved_checkpoints["random"])) is hf_synthesizer.BertSynthesizerConfig


# ----------------------------------------------------------------------------------------------- model cards


def card_of(text: str) -> ModelCard:
    card = ModelCard(text)
    assert text.startswith("---\n") and GENERATED_CARD_MARKER in text
    return card


def test_generated_card_metadata_and_sections(stock_bert_dir):
    model = hf_synthesizer.BertSynthesizerForSequenceClassification.from_pretrained(
        stock_bert_dir, attn_implementation="synthesizer_factorized_random", synthesizer_factorized_rank=4
    )
    text = render_model_card(model, model_name="me/tiny", base_model="google-bert/bert-base-uncased",
                             datasets=["nyu-mll/glue"], eval_results={"eval_accuracy": 0.75}, tags=["mine"])
    data = card_of(text).data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["synthesizer", "synthesizer_factorized_random", "bert", "custom_code", "mine"]
    assert data["base_model"] == "google-bert/bert-base-uncased"
    assert data["datasets"] == ["nyu-mll/glue"]
    [index] = data["model-index"]
    assert index["name"] == "me/tiny"
    [result] = index["results"]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"]["name"] == "nyu-mll/glue"
    assert result["metrics"] == [{"type": "accuracy", "value": 0.75}]
    # Variant with its formula, max length, loading snippet, limitations, citation.
    assert "`(R1_h R2_hᵀ)[:ℓq, :ℓk]`" in text and "k = 4" in text
    assert "**`synthesizer_length` = 24**" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("me/tiny", trust_remote_code=True)' in text
    assert 'pipeline("text-classification", model="me/tiny", trust_remote_code=True)' in text
    assert "## Limitations" in text and "54.3 random vs 71.7 vanilla" in text
    assert "@inproceedings{tay2021synthesizer" in text and "2005.00743" in text
    # Without eval results there is no model-index.
    assert "model-index" not in card_of(render_model_card(model)).data.to_dict()


def test_card_mixture_formula_and_layers(stock_bert_dir):
    model = hf_synthesizer.BertSynthesizerModel.from_pretrained(
        stock_bert_dir, attn_implementation="synthesizer_random+vanilla", synthesizer_layers=[1]
    )
    text = render_model_card(model)
    assert "`S = α_random S_random + α_vanilla S_vanilla`" in text
    assert "layers [1] (of 2)" in text
    assert card_of(text).data.pipeline_tag == "feature-extraction"
    # transformers 5 removed the question-answering pipeline: the Hub tag stays, no snippet that cannot run.
    qa = hf_synthesizer.BertSynthesizerForQuestionAnswering.from_pretrained(
        stock_bert_dir, attn_implementation="synthesizer_random")
    qa_text = render_model_card(qa)
    assert card_of(qa_text).data.pipeline_tag == "question-answering"
    assert "pipeline(" not in qa_text and "AutoModelForQuestionAnswering.from_pretrained(" in qa_text


def test_save_pretrained_regenerates_its_card_but_keeps_a_users(stock_bert_dir, tmp_path):
    model = convert(stock_bert_dir, BertSynthesizerForMaskedLM, "random", tmp_path)
    assert GENERATED_CARD_MARKER in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\nmy own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "---\nlicense: mit\n---\nmy own card\n"
    model.save_pretrained(tmp_path / "none", model_card=False)
    assert not (tmp_path / "none" / "README.md").exists()


def test_template_ships_in_the_wheel_and_renders_from_an_installed_copy(tmp_path, stock_bert_dir):
    import shutil

    # Build from a clean copy of the sources: a stale build/ folder in the work tree could hide missing package data.
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    shutil.copytree(repo / "hf_synthesizer", source / "hf_synthesizer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "model_cards", source / "model_cards")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy(repo / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("hf_synthesizer-*.whl")
    # The one template (top-level model_cards/) is installed as package data; the example cards are not shipped.
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if "model_cards" in n] == ["hf_synthesizer/model_cards/synthesizer.md"]
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    packaged = tmp_path / "site" / "hf_synthesizer" / "model_cards" / "synthesizer.md"
    assert packaged.read_bytes() == (repo / "model_cards" / "synthesizer.md").read_bytes()
    # The sdist carries it too (pip builds the wheel from the sdist when installing from one).
    build_sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'sd')!r}))"
    sdist = subprocess.run([sys.executable, "-c", build_sdist], capture_output=True, text=True, cwd=source)
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    with tarfile.open(tmp_path / "sd" / sdist.stdout.split()[-1]) as archive:
        assert [n.split("/", 1)[1] for n in archive.getnames() if "model_cards/" in n] == ["model_cards/synthesizer.md"]
    # A fresh interpreter importing the installed copy (not the source tree) renders a card.
    script = (
        "import hf_synthesizer, sys; from hf_synthesizer.conversion.model_card import render_model_card;"
        f"assert hf_synthesizer.__file__.startswith({str(tmp_path / 'site')!r}), hf_synthesizer.__file__;"
        f"m = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained({str(stock_bert_dir)!r},"
        " attn_implementation='synthesizer_dense');"
        "print(render_model_card(m).splitlines()[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "---"


def test_example_cards_are_rendered_from_the_current_template():
    """model_cards/examples/ holds, for every named variant, the card the template and the card code give today."""
    from hf_synthesizer.modeling.configuration_synthesizer import NAMED_VARIANTS
    from hf_synthesizer.conversion.model_card import EXAMPLES_DIR, SOURCE_DIR, example_cards, template_text

    assert template_text() == (SOURCE_DIR / "synthesizer.md").read_text(encoding="utf-8")  # the one copy
    cards = example_cards()
    assert {f"bert-base-uncased-synthesizer_{v}.md" for v in NAMED_VARIANTS} <= set(cards)
    committed = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES_DIR.glob("*.md")}
    stale = sorted(n for n in cards.keys() | committed.keys() if cards.get(n) != committed.get(n))
    assert not stale, (f"model_cards/examples/ is out of date ({stale}): run "
                       f"`python -m hf_synthesizer.conversion.model_card --render-examples` and commit the result")


# ----------------------------------------------------------------------------------------------- push_to_hub


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHfApi:
    fake = install_fake_hub(monkeypatch)
    assert transformers.utils.hub.hf_api() is fake
    return fake


def test_model_push_to_hub_uploads_weights_config_code_and_card(stock_bert_dir, fake_hub, tmp_path):
    model = convert(stock_bert_dir, BertSynthesizerForMaskedLM, "random+vanilla", tmp_path / "local")
    model.push_to_hub("tiny-synth", tags=["demo"], commit_message="Tiny synthesizer", model_card_kwargs={
        "base_model": "google-bert/bert-base-uncased", "datasets": ["wikitext"], "eval_results": {"perplexity": 12.5}})
    # transformers' push (weights, config, code and its generic card), then the synthesizer card in its own commit.
    [upload, card_commit] = fake_hub.commits
    assert upload["repo_id"] == card_commit["repo_id"] == "fake-user/tiny-synth"
    assert upload["files"] == sorted({"config.json", "model.safetensors", "README.md"} | BERT_CODE_FILES)
    assert card_commit["files"] == ["README.md"] and card_commit["message"] == CARD_COMMIT_MESSAGE
    assert upload["message"] == "Tiny synthesizer"
    repo = fake_hub.repos["fake-user/tiny-synth"]
    data = card_of(repo["README.md"].decode()).data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["tags"] == ["synthesizer", "synthesizer_random+vanilla", "bert", "custom_code", "demo"]
    assert data["base_model"] == "google-bert/bert-base-uncased" and data["datasets"] == ["wikitext"]
    assert data["pipeline_tag"] == "fill-mask"
    assert data["model-index"][0]["name"] == "fake-user/tiny-synth"
    assert data["model-index"][0]["results"][0]["metrics"] == [{"type": "perplexity", "value": 12.5}]
    # What was uploaded is a working checkpoint: same outputs after a round trip.
    downloaded = fake_hub.download_repo("fake-user/tiny-synth", tmp_path / "downloaded")
    assert read_json(downloaded / "config.json")["auto_map"] == BERT_AUTO_MAP
    reloaded = AutoModelForMaskedLM.from_pretrained(downloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT_IDS, ATTENTION_MASK).logits, model(INPUT_IDS, ATTENTION_MASK).logits)


def test_save_pretrained_with_push_to_hub_uploads_the_synthesizer_card(stock_bert_dir, fake_hub, tmp_path):
    model = convert(stock_bert_dir, BertSynthesizerForMaskedLM, "factorized_random", tmp_path / "local")
    model.add_model_tags(["added-tag"])
    model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="via-save", commit_message="First upload")
    [upload, card_commit] = fake_hub.commits
    assert upload["files"] == sorted({"config.json", "model.safetensors", "README.md"} | BERT_CODE_FILES)
    assert upload["message"] == "First upload" and upload["repo_id"] == card_commit["repo_id"] == "fake-user/via-save"
    assert card_commit["files"] == ["README.md"]
    data = card_of(fake_hub.repos["fake-user/via-save"]["README.md"].decode()).data
    assert "synthesizer_factorized_random" in data.tags and "added-tag" in data.tags
    assert fake_hub.repos["fake-user/via-save"]["README.md"] == (tmp_path / "pushed" / "README.md").read_bytes()


def test_push_keeps_a_users_card_and_regenerates_a_generated_one(stock_bert_dir, fake_hub, tmp_path):
    model = convert(stock_bert_dir, BertSynthesizerForMaskedLM, "dense", tmp_path)
    fake_hub.create_repo("fake-user/with-card")
    fake_hub.repos["fake-user/with-card"]["README.md"] = b"---\nlicense: mit\n---\nHand-written.\n"
    model.push_to_hub("fake-user/with-card", tags=["demo"])
    [upload] = fake_hub.commits  # no card commit: the user's card stays, with the tags added (transformers' way)
    card = ModelCard(fake_hub.repos["fake-user/with-card"]["README.md"].decode())
    assert "Hand-written." in card.text and card.data.license == "mit" and card.data.tags == ["demo"]

    model.push_to_hub("regenerated")
    model.push_to_hub("regenerated", model_card_kwargs={"datasets": ["wikitext"]})
    data = card_of(fake_hub.repos["fake-user/regenerated"]["README.md"].decode()).data
    assert data.datasets == ["wikitext"] and "synthesizer_dense" in data.tags


def test_save_pretrained_push_keeps_a_users_local_card(stock_bert_dir, fake_hub, tmp_path):
    model = convert(stock_bert_dir, BertSynthesizerForMaskedLM, "random", tmp_path / "local")
    (tmp_path / "local" / "README.md").write_text("my own card\n")
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="mine")
    assert (tmp_path / "local" / "README.md").read_text() == "my own card\n"
    assert [c["files"] for c in fake_hub.commits] == [sorted({"config.json", "model.safetensors", "README.md"}
                                                               | BERT_CODE_FILES)]  # no synthesizer card pushed
    # A card the user wrote on the Hub stays there too.
    fake_hub.create_repo("fake-user/theirs")
    fake_hub.repos["fake-user/theirs"]["README.md"] = b"---\nlicense: mit\n---\nHand-written.\n"
    model.save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="theirs")
    assert len(fake_hub.commits) == 2 and "Hand-written." in fake_hub.repos["fake-user/theirs"]["README.md"].decode()


def test_trainer_push_to_hub_uploads_code_and_synthesizer_card(stock_bert_dir, fake_hub, tmp_path):
    model = hf_synthesizer.BertSynthesizerForSequenceClassification.from_pretrained(
        stock_bert_dir, attn_implementation="synthesizer_random", num_labels=2
    )
    torch.manual_seed(0)
    rows = [{"input_ids": INPUT_IDS[i % 2].tolist(), "attention_mask": ATTENTION_MASK[i % 2].tolist(), "labels": i % 2}
            for i in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        report_to=[], save_strategy="no", use_cpu=True, hub_model_id="trainer-synth", disable_tqdm=True,
    )
    trainer = SynthesizerTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(dataset="my-local-pairs")
    [commit] = fake_hub.commits
    assert commit["repo_id"] == "fake-user/trainer-synth"
    # The Trainer also uploads its pickled training arguments (transformers' behaviour); weights are safetensors.
    assert commit["files"] == sorted(
        {"config.json", "model.safetensors", "README.md", "training_args.bin"} | BERT_CODE_FILES
    )
    repo = fake_hub.repos["fake-user/trainer-synth"]
    assert read_json_bytes(repo["config.json"])["auto_map"] == BERT_AUTO_MAP
    text = repo["README.md"].decode()
    data = card_of(text).data.to_dict()
    assert data["library_name"] == "transformers"
    assert {"synthesizer", "synthesizer_random", "generated_from_trainer"} <= set(data["tags"])
    assert data["datasets"] == ["my-local-pairs"]
    metrics = {m["type"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert "loss" in {m.lower() for m in metrics}
    assert "## Training procedure" in text and "train_batch_size: 4" in text


def test_synthesizer_trainer_gives_a_stock_model_transformers_card(stock_bert_dir, fake_hub, tmp_path):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(stock_bert_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, hub_model_id="stock")
    SynthesizerTrainer(model=model, args=args).push_to_hub()
    text = fake_hub.repos["fake-user/stock"]["README.md"].decode()
    assert GENERATED_CARD_MARKER not in text and "generated_from_trainer" in ModelCard(text).data.tags


def read_json_bytes(data: bytes) -> dict:
    import json

    return json.loads(data)


# ----------------------------------------------------------------------------------------------- T5 (when merged)


def test_t5_checkpoint_loads_with_trust_remote_code_in_fresh_process(tmp_path):
    t5_classes = hf_synthesizer.T5_AUTO_CLASSES
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
                      decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "stock")
    model = t5_classes[AutoModelForSeq2SeqLM].from_pretrained(tmp_path / "stock", attn_implementation="synthesizer_random")
    model.save_pretrained(tmp_path / "synth")
    auto_map = read_json(tmp_path / "synth" / "config.json")["auto_map"]
    modeling_file = auto_map["AutoModelForSeq2SeqLM"].split(".")[0]
    assert auto_map == expected_auto_map(t5_classes, modeling_file, type(model.config))
    files = {p.name for p in (tmp_path / "synth").iterdir()}
    assert files == {"config.json", "generation_config.json", "model.safetensors", "README.md"} | T5_CODE_FILES
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 9, 10]])}
    with torch.no_grad():
        expected = model(**inputs).logits
    save_file({"logits": expected, **inputs}, tmp_path / "t5.safetensors")
    script = f"""
        import torch, transformers
        from safetensors.torch import load_file, save_file
        data = load_file({str(tmp_path / 't5.safetensors')!r})
        m = transformers.AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / 'synth')!r}, trust_remote_code=True)
        assert type(m).__module__.startswith("transformers_modules."), type(m).__module__
        with torch.no_grad():
            logits = m(input_ids=data["input_ids"], decoder_input_ids=data["decoder_input_ids"]).logits
        save_file({{"logits": logits}}, "t5_out.safetensors")
    """
    result = run_without_package(script, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    torch.testing.assert_close(load_file(tmp_path / "t5_out.safetensors")["logits"], expected, rtol=0, atol=1e-6)


def test_model_auto_classes_are_all_registered_for_the_hub():
    from hf_synthesizer.modeling.hub_mixin import SynthesizerHubMixin, module_auto_map

    for table in (BERT_AUTO_CLASSES, hf_synthesizer.T5_AUTO_CLASSES):
        model_classes = set(table.values())
        for model_class in model_classes:
            assert issubclass(model_class, SynthesizerHubMixin), f"{model_class.__name__} lacks SynthesizerHubMixin"
            # One class may serve several Auto classes; it holds one of them, the auto_map lists them all.
            assert vars(model_class).get("_auto_class") in {a.__name__ for a, m in table.items() if m is model_class}
            assert model_class.config_class._auto_class == "AutoConfig"
        some_class = next(iter(model_classes))
        modeling_file = some_class.__module__.split(".")[-1]
        assert module_auto_map(some_class) == {a.__name__: f"{modeling_file}.{m.__name__}" for a, m in table.items()}


def test_a_class_serving_several_auto_classes_gets_all_of_them_in_auto_map(stock_bert_dir, tmp_path):
    """T5's conditional generation class is both AutoModelForPreTraining and AutoModelForSeq2SeqLM; the same
    situation, built with a BERT head, must list both."""
    from transformers import AutoModelForSeq2SeqLM

    model_class = hf_synthesizer.BertSynthesizerForPreTraining
    AutoModelForSeq2SeqLM.register(hf_synthesizer.BertSynthesizerConfig, model_class, exist_ok=True)
    try:
        convert(stock_bert_dir, hf_synthesizer.BertSynthesizerForMaskedLM, "random", tmp_path)
        auto_map = read_json(tmp_path / "config.json")["auto_map"]
    finally:
        del AutoModelForSeq2SeqLM._model_mapping._extra_content[hf_synthesizer.BertSynthesizerConfig]
    assert auto_map == {**BERT_AUTO_MAP, "AutoModelForSeq2SeqLM": "modeling_bert_synthesizer.BertSynthesizerForPreTraining"}
    assert auto_map["AutoModelForPreTraining"] == auto_map["AutoModelForSeq2SeqLM"]


def test_auto_model_loads_the_saved_class(saved_checkpoints):
    assert type(AutoModel.from_pretrained(saved_checkpoints["dense+vanilla"])) is hf_synthesizer.BertSynthesizerModel
