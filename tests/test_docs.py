"""Every code block of README.md and docs/*.md runs as written, so a snippet cannot rot: Python blocks in order, one
namespace per page (as a reader runs them top to bottom), shell blocks command by command through the CLI. Offline:
Hub ids are replaced by local stand-ins of the same family, and the Hub client by the recording fake."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from hub_fakes import install_fake_hub
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForPreTraining,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    TrainingArguments,
)

import hf_synthesizer
from hf_synthesizer import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_CODE = {"bibtex", "text"}  # fenced blocks that are data (a citation, a program's output), not commands

# Shell commands that are not run here, and why.
NOT_RUN = {
    "pip install": "installs the environment these tests run in",
    "HF_HUB_OFFLINE=1 python -m pytest": "the test suite itself",
    "hf download": "fetches a Hub model into a folder; the folder it names is a stand-in below (hub_ids)",
}
# The main job at full size: run by the slow test below, its `--quick` form here.
MAIN_JOB = "hf-synthesizer compare"

pytestmark = pytest.mark.usefixtures("one_thread")


def code_blocks(page: str) -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in FENCE.findall((ROOT / page).read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def hub_ids(minilm_dir, tmp_path_factory) -> dict[str, Path]:
    """Stand-ins for the Hub ids the docs use: a tiny BERT with BERT's vocabulary and 512 positions (MiniLM's
    WordPiece tokenizer), and a tiny T5 with a word-level tokenizer (no T5 tokenizer ships offline)."""
    root = tmp_path_factory.mktemp("hub_ids")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    bert = root / "bert"
    BertForPreTraining(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "translate English to German : The house is wonderful .".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: 3 + i for i, w in enumerate(dict.fromkeys(words))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t5 = root / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
                               ).save_pretrained(t5)
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_input_names=["input_ids", "attention_mask"]).save_pretrained(t5)
    return {"google-bert/bert-base-uncased": bert, "bert-base-uncased": bert,
            "sentence-transformers/all-MiniLM-L6-v2": bert, "all-MiniLM-L6-v2": bert, "t5-small": t5}


def given_classifier(hub_ids):
    """docs/sharing.md continues from "your model": a synthesizer classifier to fine-tune."""
    return hf_synthesizer.BertSynthesizerForSequenceClassification.from_pretrained(
        hub_ids["bert-base-uncased"], attn_implementation="synthesizer_random", num_labels=2, synthesizer_length=16)


def given_training_args(hub_ids):
    return TrainingArguments(output_dir="trainer-out", max_steps=1, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, hub_model_id="my-synth-trainer", disable_tqdm=True)


def given_train_dataset(hub_ids):
    tokenizer = AutoTokenizer.from_pretrained(hub_ids["bert-base-uncased"])
    return [dict(tokenizer(text), labels=label) for text, label in (("a fine movie", 1), ("a dull one", 0))] * 2


# Names a page's prose says the reader already has ("your model"), by page.
GIVEN = {"docs/sharing.md": {"classifier": given_classifier, "training_args": given_training_args,
                             "train_dataset": given_train_dataset}}


def run_python(code: str, namespace: dict, hub_ids: dict, where: str) -> None:
    for hub_id, path in hub_ids.items():
        code = code.replace(f'"{hub_id}"', repr(str(path)))
    exec(compile(code, where, "exec"), namespace)


def run_shell(code: str, hub_ids: dict, full_main_job: bool) -> list[str]:
    """Run each command; returns the main-job commands met (run only when `full_main_job`)."""
    main_jobs = []
    for line in code.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for command in (c.strip() for c in line.split("&&")):
            if any(command.startswith(prefix) for prefix in NOT_RUN):
                continue
            argv = [str(hub_ids.get(a, a)) for a in shlex.split(command)]
            assert argv[0] == "hf-synthesizer", f"no rule to run {command!r}: add one to tests/test_docs.py"
            if command == MAIN_JOB:
                main_jobs.append(command)
                if not full_main_job:
                    continue
            assert cli.main(argv[1:]) == 0, command
    return main_jobs


@pytest.fixture
def reader(hub_ids, tmp_path, monkeypatch):
    """A fresh working directory and an offline Hub, as a reader following a page would have."""
    monkeypatch.chdir(tmp_path)
    install_fake_hub(monkeypatch)
    return hub_ids


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_runs(page, reader, capsys):
    namespace = {"__name__": "__snippet__"}
    main_jobs = []
    for index, (lang, code) in enumerate(code_blocks(page)):
        if lang in NOT_CODE:
            continue
        if lang == "python":
            for name, make in GIVEN.get(page, {}).items():
                if name in code and name not in namespace:
                    namespace[name] = make(reader)
            run_python(code, namespace, reader, f"{page}, code block {index + 1}")
        elif lang in ("bash", "sh"):
            main_jobs += run_shell(code, reader, full_main_job=False)
        else:
            pytest.fail(f"{page}: a ```{lang} block: say how to run it (or add its language to NOT_CODE)")
    if page == "README.md":
        assert main_jobs == [MAIN_JOB]  # the README's main job (run in full by the slow test below) ...
        assert "hf-synthesizer compare --quick" in (ROOT / page).read_text()  # ... and its smoke run, run above


def test_pages_have_code_blocks_and_known_languages():
    blocks = {page: code_blocks(page) for page in PAGES}
    assert all(blocks.values()) and {"README.md", "docs/sharing.md", "docs/conversion.md"} <= set(PAGES)
    assert {lang for page in blocks.values() for lang, _ in page} <= NOT_CODE | {"python", "bash", "sh"}


@pytest.mark.slow
def test_readme_main_job_runs_in_full_and_prints_what_the_readme_shows(reader, capsys):
    """The README's main job as written (minutes: see the README for the measured time); its accuracies and Finding
    are deterministic, so they must be the ones the README shows."""
    [block] = [code for lang, code in code_blocks("README.md") if lang == "bash"]
    assert run_shell(block, reader, full_main_job=True) == [MAIN_JOB]
    printed = capsys.readouterr().out
    printed = printed[: printed.index("\n", printed.index("Finding: "))]  # the main job's (the --quick run follows)
    [shown] = [code for lang, code in code_blocks("README.md") if lang == "text"]
    accuracies = re.findall(r"^  \S+: accuracy \d\.\d{3},", printed, re.M)  # the seconds are the machine's
    stated = [line for line in printed.splitlines() if line.startswith(("task: ", "Finding: "))]
    assert len(accuracies) == 4 and len(stated) == 2, printed
    for text in accuracies + stated:
        assert text in shown, text
