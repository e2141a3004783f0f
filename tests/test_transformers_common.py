"""transformers' own common model tests (`ModelTesterMixin`, the suite every model in transformers must pass) run
against the BERT and T5 synthesizer classes, for every named variant.

The tests are not copied here: they come from the source distribution of the *installed* transformers, downloaded
once with `pip download transformers==<version> --no-binary :all: --no-deps` into
`$XDG_CACHE_HOME/hf_synthesizer/transformers-<version>/tests` (default `~/.cache/...`). Without it (no network, no
pip) the module skips, saying why. The sdist ships `tests/test_modeling_common.py` but not the per-model tests
(`tests/models/...`), the generation mixin or the export mixin: the model testers below are written here, after
transformers' BertModelTester / T5ModelTester, and generation/export tests are not part of this run
(decoding is tested in tests/test_decoding.py, export in tests/test_portable.py).

Default run: one variant per attention route but the feature route (per-example, shared, chunked reference); every
other named variant under `-m slow`.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

import hf_synthesizer
from hf_synthesizer import (
    BERT_AUTO_CLASSES,
    T5_AUTO_CLASSES,
    BertSynthesizerConfig,
    T5SynthesizerConfig,
)

PACKAGE = "_transformers_common_tests"  # the sdist's tests/ folder, imported under this package name


def cached_tests_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hf_synthesizer" / f"transformers-{transformers.__version__}" / "tests"


def fetch_tests() -> Path:
    """The installed transformers' `tests/` folder from its sdist, downloaded and unpacked once. Raises RuntimeError
    saying why when it cannot be had."""
    tests = cached_tests_dir()
    if (tests / "test_modeling_common.py").is_file():
        return tests
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
                   "--no-deps", "--no-build-isolation", "--quiet", "--retries", "1", "--timeout", "20", "-d", tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"`{' '.join(command)}` failed: {error}") from error
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if done.returncode or not archives:
            raise RuntimeError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
        prefix = f"transformers-{version}/tests/"
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            archive.extractall(unpacked, members=members, filter="data")
        if not (unpacked / prefix / "test_modeling_common.py").is_file():
            raise RuntimeError(f"the transformers {version} sdist has no tests/test_modeling_common.py")
        tests.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=tests.parent))
        shutil.move(str(unpacked / prefix), staging / "tests")
        try:
            (staging / "tests").rename(tests)  # atomic: a concurrent run either sees the whole folder or none
        except OSError:
            pass  # another run unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return tests


def stub(name: str, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def import_common_tests():
    """`tests/test_modeling_common.py` of the sdist, imported as `_transformers_common_tests.test_modeling_common`.
    Its imports of modules the sdist does not ship (the generation and export mixins) get empty mixins."""
    tests = fetch_tests()
    if PACKAGE not in sys.modules:
        stub(PACKAGE, __path__=[str(tests)])
        stub(f"{PACKAGE}.exporters", __path__=[])
        stub(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
        stub(f"{PACKAGE}.generation", __path__=[])
        stub(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")


try:
    common = import_common_tests()
except (RuntimeError, ImportError) as error:  # never fail CI for a missing download (or a test dependency)
    pytest.skip(f"transformers {transformers.__version__}'s common model tests are unavailable: {error}",
                allow_module_level=True)

ModelTesterMixin, ids_tensor, random_attention_mask = (
    common.ModelTesterMixin, common.ids_tensor, common.random_attention_mask
)

# The default run (time budget: ~3 min on 2 cores; measured ~4 min) takes one variant per route of
# `fast_synthesizer_attention` but the feature route: random+vanilla the per-example route, random (T5, with its
# position bias) the shared route, factorized_dense the chunked reference; `eager` runs the plain reference in every
# class. The other named variants (dense: the feature route) run under `-m slow`.
DEFAULT_VARIANTS = {
    "bert": ("random+vanilla",),
    "t5": ("random",),
    "t5_encoder": ("factorized_dense",),
}
SLOW_VARIANTS = {family: [v for v in hf_synthesizer.modeling.configuration_synthesizer.NAMED_VARIANTS
                          if v not in DEFAULT_VARIANTS[family]] for family in DEFAULT_VARIANTS}


def register_model_names():
    """transformers' tests pick labels and skips by class name from the `MODEL_*_MAPPING_NAMES` tables (a base
    model is not trained, a classifier gets class labels...). List our classes there as transformers lists its own:
    `bert_synthesizer` beside `bert`, with the synthesizer class of the same head."""
    ours = {}
    for cls in [*BERT_AUTO_CLASSES.values(), *T5_AUTO_CLASSES.values()]:
        stock = next(c for c in cls.__mro__ if c.__module__.startswith("transformers.models."))
        ours[stock.__name__] = cls.__name__
    patches = []
    for name in dir(modeling_auto):
        table = getattr(modeling_auto, name)
        if not (name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES") and isinstance(table, dict)):
            continue
        extra = {}
        for stock_type, config in (("bert", BertSynthesizerConfig), ("t5", T5SynthesizerConfig)):
            if table.get(stock_type) in ours:
                extra[config.model_type] = ours[table[stock_type]]
        if extra:
            patches.append(mock.patch.dict(table, extra))
    return patches


@pytest.fixture(scope="module", autouse=True)
def _model_names():
    patches = register_model_names()
    for p in patches:
        p.start()
    yield
    for p in reversed(patches):
        p.stop()


@pytest.fixture(autouse=True)
def _transformers_default_verbosity():
    """transformers' tests run at its default verbosity (warning): some assert on a warning, e.g. the load report's
    "Reinit due to size mismatch". conftest.py quiets transformers to errors for the rest of the suite."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    yield
    transformers.logging.set_verbosity(verbosity)


class BertSynthesizerModelTester:
    """Tiny BERT synthesizer configs and inputs, after transformers' `BertModelTester`."""

    def __init__(self, parent, variant, batch_size=7, seq_length=7, vocab_size=99, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=32,
                 type_vocab_size=16, num_labels=3, num_choices=4):
        self.parent, self.variant = parent, variant
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, num_hidden_layers, \
            num_attention_heads
        self.intermediate_size, self.max_position_embeddings = intermediate_size, max_position_embeddings
        self.type_vocab_size, self.num_labels, self.num_choices = type_vocab_size, num_labels, num_choices
        self.is_training = True

    def get_config(self):
        return BertSynthesizerConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            max_position_embeddings=self.max_position_embeddings, type_vocab_size=self.type_vocab_size,
            is_decoder=False, initializer_range=0.02,
            synthesizer_variant=self.variant,
        )

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.seq_length]
        inputs = {
            "input_ids": ids_tensor(shape, self.vocab_size),
            "token_type_ids": ids_tensor(shape, self.type_vocab_size),
            "attention_mask": random_attention_mask(shape),
        }
        return self.get_config(), inputs


class T5SynthesizerModelTester:
    """Tiny T5 synthesizer configs and inputs, after transformers' `T5ModelTester` (`encoder_only`:
    `T5EncoderOnlyModelTester`)."""

    def __init__(self, parent, variant, encoder_only=False, batch_size=7, seq_length=7, vocab_size=99,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, d_ff=37, synthesizer_length=32):
        self.parent, self.variant, self.encoder_only = parent, variant, encoder_only
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.encoder_seq_length = self.decoder_seq_length = seq_length
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, num_hidden_layers, \
            num_attention_heads
        self.d_ff, self.synthesizer_length = d_ff, synthesizer_length
        self.is_training = not encoder_only  # as transformers' T5EncoderOnlyModelTester: T5EncoderModel has no loss
        self.eos_token_id, self.pad_token_id = 1, 0

    def get_config(self):
        return T5SynthesizerConfig(
            vocab_size=self.vocab_size, d_model=self.hidden_size, d_ff=self.d_ff,
            d_kv=self.hidden_size // self.num_attention_heads, num_layers=self.num_hidden_layers,
            num_decoder_layers=self.num_hidden_layers, num_heads=self.num_attention_heads,
            relative_attention_num_buckets=8, dropout_rate=0.1, initializer_factor=0.002,
            eos_token_id=self.eos_token_id, bos_token_id=self.pad_token_id, pad_token_id=self.pad_token_id,
            decoder_start_token_id=self.pad_token_id, is_encoder_decoder=not self.encoder_only,
            synthesizer_variant=self.variant, synthesizer_length=self.synthesizer_length,
            synthesizer_stacks=["encoder"] if self.encoder_only else ["encoder", "decoder"],
        )

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.seq_length]
        # one <eos> per sequence, last (T5ForSequenceClassification pools there)
        input_ids = ids_tensor(shape, self.vocab_size).clamp(2)
        input_ids[:, -1] = self.eos_token_id
        inputs = {"input_ids": input_ids, "attention_mask": random_attention_mask(shape)}
        if not self.encoder_only:
            inputs["decoder_input_ids"] = ids_tensor(shape, self.vocab_size)
            inputs["decoder_attention_mask"] = random_attention_mask(shape)
        return self.get_config(), inputs


class SynthesizerCommonTests(ModelTesterMixin):
    """What every synthesizer test class shares: its variant and the tests that cannot apply."""

    variant = None
    family = None
    has_attentions = True
    test_resize_embeddings = True
    test_missing_keys = True

    def setUp(self):
        if self.family == "bert":
            self.model_tester = BertSynthesizerModelTester(self, self.variant)
        else:
            self.model_tester = T5SynthesizerModelTester(self, self.variant, encoder_only=self.family == "t5_encoder")

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """As transformers' BertModelTest: BERT's pretraining head takes MLM labels and a next-sentence label."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is hf_synthesizer.BertSynthesizerForPreTraining:
            shape = (self.model_tester.batch_size, self.model_tester.seq_length)
            inputs_dict["labels"] = torch.zeros(shape, dtype=torch.long)
            inputs_dict["next_sentence_label"] = torch.zeros(shape[0], dtype=torch.long)
        return inputs_dict

    def test_generation_tester_mixin_inheritance(self):
        self.skipTest("the sdist ships no generation tests (tests/generation/); decoding: tests/test_decoding.py")

    def test_inputs_embeds(self):
        if self.family == "t5":
            self.skipTest("stock T5ForSequenceClassification refuses inputs_embeds (NotImplementedError), not ours")
        super().test_inputs_embeds()

    def test_model_base_model_prefix(self):
        if self.family == "t5":
            self.skipTest("stock T5ForConditionalGeneration has no `transformer` base model to find, as ours")
        super().test_model_base_model_prefix()

    def test_init_weights_can_init_buffers(self):
        if "fixed_random" in self.variant:
            self.skipTest("fixed random's R is a buffer drawn at random by _init_weights (the paper's Fixed Random); "
                          "this test assumes buffers are deterministic")
        super().test_init_weights_can_init_buffers()

    def test_retain_grad_hidden_states_attentions(self):
        if self.variant == "fixed_random" and self.family == "bert":
            self.skipTest("BERT fixed random's attention maps are constants (softmax of a frozen R): no gradient")
        super().test_retain_grad_hidden_states_attentions()


BERT_CLASSES = tuple(BERT_AUTO_CLASSES.values())
T5_CLASSES = (hf_synthesizer.T5SynthesizerModel, hf_synthesizer.T5SynthesizerForConditionalGeneration,
              hf_synthesizer.T5SynthesizerForSequenceClassification, hf_synthesizer.T5SynthesizerForQuestionAnswering)
T5_ENCODER_CLASSES = (hf_synthesizer.T5SynthesizerEncoderModel, hf_synthesizer.T5SynthesizerForTokenClassification)
FAMILY_SETTINGS = {
    "bert": dict(all_model_classes=BERT_CLASSES),
    "t5": dict(all_model_classes=T5_CLASSES, is_encoder_decoder=True, model_split_percents=[0.5, 0.8, 0.9]),
    "t5_encoder": dict(all_model_classes=T5_ENCODER_CLASSES, test_resize_embeddings=False),
}
PREFIX = {"bert": "BertSynthesizer", "t5": "T5Synthesizer", "t5_encoder": "T5SynthesizerEncoderOnly"}


def make_test_class(family: str, variant: str, slow: bool):
    name = f"Test{PREFIX[family]}_{variant.replace('+', '_')}"
    cls = type(name, (SynthesizerCommonTests, unittest.TestCase),
               {"family": family, "variant": variant, **FAMILY_SETTINGS[family], "__module__": __name__})
    return pytest.mark.slow(cls) if slow else cls


for _family in DEFAULT_VARIANTS:
    for _variant in DEFAULT_VARIANTS[_family]:
        _cls = make_test_class(_family, _variant, slow=False)
        globals()[_cls.__name__] = _cls
    for _variant in SLOW_VARIANTS[_family]:
        _cls = make_test_class(_family, _variant, slow=True)
        globals()[_cls.__name__] = _cls
del _cls, _family, _variant
