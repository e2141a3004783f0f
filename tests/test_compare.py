"""`hf-synthesizer compare` (the README's main job) in its quick mode, and the ListOps data generator."""

import json
import re

import pytest

from hf_synthesizer import cli
from hf_synthesizer.cli import listops


def test_listops_values_and_determinism():
    assert listops.evaluate(["MAX", [2, 9, ["MIN", [4, 7]], 0]]) == 9
    assert listops.evaluate(["SM", [3, ["MED", [1, 8, 5]], 6]]) == 4
    assert listops.evaluate(["MED", [1, 9, 3, 7]]) == 7  # sorted(args)[len // 2]
    assert listops.to_text(["MAX", [2, 9, ["MIN", [4, 7]], 0]]) == "[MAX 2 9 [MIN 4 7 ] 0 ]"
    spec = listops.ListOpsSpec(max_depth=3, max_args=4, max_words=30)
    a, b = listops.generate(200, seed=3, spec=spec), listops.generate(200, seed=3, spec=spec)
    assert a == b and a != listops.generate(200, seed=4, spec=spec)
    assert all(spec.min_words <= listops.num_words(e["text"]) <= 30 and 0 <= e["label"] <= 9 for e in a)
    assert len({e["label"] for e in a}) == 10
    # The operator set is part of the spec (compare's default: MAX and MIN).
    maxmin = listops.generate(100, seed=0, spec=listops.ListOpsSpec(operators=("MAX", "MIN")))
    assert {w for e in maxmin for w in e["text"].split() if w.startswith("[")} == {"[MAX", "[MIN"}
    with pytest.raises(ValueError, match=r"non-empty subset of \['MAX', 'MIN', 'MED', 'SM'\], got \['SUM'\]"):
        listops.ListOpsSpec(operators=("SUM",))


def test_listops_word_count_matches_a_wordpiece_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    for e in listops.generate(50, seed=0):
        assert len(tokenizer(e["text"])["input_ids"]) == listops.num_words(e["text"]) + 2


def test_compare_quick_prints_table_for_requested_variants(tmp_path, capsys):
    variants = ["vanilla", "random", "factorized_random", "dense"]
    assert cli.main(["compare", "--quick", "--variants", ",".join(variants), "--output_dir", str(tmp_path)]) == 0
    printed, progress = capsys.readouterr()
    assert "model: a small BERT built from scratch" in printed and "MiniLM is too slow" in printed
    # Not silent: an estimate from the first variant's timed steps ...
    estimate = re.search(r"^estimate: ~\d+ s of training for the 4 variants \((\d\.\d\d) s per step, timed over "
                         r"steps 2-8 of vanilla;", printed, re.M)
    assert estimate and float(estimate.group(1)) > 0, printed
    # ... Trainer's progress bar per variant, labelled ...
    assert all(f"[{i}/4] {v}:" in progress and "8/8" in progress for i, v in enumerate(variants, 1))
    # ... and a closing line saying what to conclude (what it says is tested below: 8 steps decide nothing).
    finding_line = printed.rstrip().splitlines()[-1]
    assert finding_line.startswith("Finding: ") and "the majority class" in finding_line
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1:6] == [" variant           ", " accuracy ", " train s ", " time vs vanilla ",
                                        " params (trainable) "]
    assert [row.split("|")[1].strip() for row in table[1:]] == variants
    assert table[1].split("|")[4].strip() == "1.00x"

    results = json.loads((tmp_path / "compare_results.json").read_text())
    rows = {r["variant"]: r for r in results["results"]}
    assert list(rows) == variants
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["train_seconds"] > 0 and r["train_loss"] > 0
    # the backend each ran with: sdpa, the fast routes of every synthesizer (the variant is the row's "variant")
    assert rows["random"]["attn_implementation"] == rows["vanilla"]["attn_implementation"] == "sdpa"
    # Parameter counts follow the variant: 4 layers of hidden 128, 4 heads, L = max_length (32 in quick mode).
    length, layers, hidden, heads = 32, 4, 128, 4
    query_key = layers * 2 * (hidden * hidden + hidden)
    assert rows["random"]["trainable_parameters"] == (
        rows["vanilla"]["trainable_parameters"] - query_key + layers * heads * length**2
    )
    assert rows["factorized_random"]["trainable_parameters"] == (
        rows["vanilla"]["trainable_parameters"] - query_key + layers * heads * 2 * length * 8
    )

    # Deterministic: the same seed gives the same data, initialisation and batches whichever other variants run
    # alongside. Not bit for bit in one process: the mean loss moved by ~1e-5 relative after other models had run
    # (CPU kernels are not bitwise reproducible across allocations), hence approx.
    assert cli.main(["compare", "--quick", "--variants", "random", "--output_dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "compare_results.json").read_text())["results"][0]
    assert again["accuracy"] == rows["random"]["accuracy"]
    assert again["train_loss"] == pytest.approx(rows["random"]["train_loss"], rel=1e-4)


def test_finding_states_what_separates_beyond_the_noise():
    from hf_synthesizer.cli.compare import finding

    def rows(**accuracies):
        return [{"variant": v.replace("_plus_", "+"), "accuracy": a, "train_seconds": 10.0}
                for v, a in accuracies.items()]

    # The shape of the README's run: every variant separated, the dot-product ones above the pure synthesizers.
    text = finding(rows(vanilla=0.52, random=0.45, dense=0.37, random_plus_vanilla=0.57), 0.167, 2000)
    assert text == (
        "Finding: random+vanilla leads (0.57); vanilla, random and dense trail by 0.05-0.20, beyond the noise of 2000 "
        "evaluation examples (±0.03); every variant with a dot-product term beats every pure synthesizer, by 0.07 or "
        "more: its attention weights depend on the other tokens (where the brackets are), while random synthesizers "
        "ignore the input and dense ones see only the token itself; all beat the majority class (0.17).")
    # A mixture no better than a pure variant: no claim about dot-product terms.
    text = finding(rows(vanilla=0.36, random_plus_vanilla=0.29, dense=0.28), 0.135, 2000)
    assert "vanilla leads (0.36); random+vanilla and dense trail by 0.07-0.08" in text and "dot-product" not in text
    # Differences within the noise, one variant at the majority class.
    text = finding(rows(vanilla=0.33, random=0.30), 0.27, 1000)
    assert text.startswith("Finding: no variant is clearly ahead of another: all are within the noise of 1000 "
                           "evaluation examples (±0.04)")
    assert "random did not beat the majority class (0.27) clearly" in text
    # Nothing learned (a --quick run): no order among the variants is claimed, the budget is named instead.
    text = finding(rows(vanilla=0.047, random=0.234, dense=0.047), 0.234, 64)
    assert text.startswith("Finding: none: no variant beat the majority class (0.23) clearly") and "lead" not in text


def test_compare_help_lists_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model_name_or_path", "--variants", "--max_steps", "--max_length", "--seed", "--quick",
                 "--batch_size", "--max_depth", "--threads", "--family"):
        assert flag in text
    assert "BERT or T5 checkpoint" in text and "Converts a BERT checkpoint" not in text  # --family t5 exists


def test_compare_converts_the_packaged_minilm_checkpoint(minilm_dir, tmp_path, capsys):
    """The real all-MiniLM-L6-v2 checkpoint goes through the same conversion (2 steps: the path, not the accuracy)."""
    args = ["compare", "--quick", "--model_name_or_path", "minilm", "--variants", "vanilla,random", "--max_steps", "2",
            "--output_dir", str(tmp_path)]
    assert cli.main(args) == 0
    assert "all-MiniLM-L6-v2" in capsys.readouterr().out
    rows = {r["variant"]: r for r in json.loads((tmp_path / "compare_results.json").read_text())["results"]}
    assert rows["vanilla"]["trainable_parameters"] == 22_717_066  # MiniLM + a 10-way classifier
    query_key, r = 6 * 2 * (384 * 384 + 384), 6 * 12 * 32 * 32  # dropped Q/K; R per layer and head, L = 32
    assert rows["random"]["trainable_parameters"] == 22_717_066 - query_key + r


def test_compare_family_t5_trains_a_small_t5_built_from_scratch(tmp_path, capsys):
    """`--family t5`: the offline route for T5 (issue 26). The T5 from scratch is converted to each variant, encoder
    and decoder self-attention alike, and goes through the same Trainer run and table."""
    assert cli.main(["compare", "--quick", "--family", "t5", "--variants", "vanilla,random,dense+vanilla",
                     "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model: a small T5 built from scratch with the task's 21-token vocabulary")
    assert "MiniLM is too slow" not in printed
    assert printed.rstrip().splitlines()[-1].startswith("Finding: ")
    results = json.loads((tmp_path / "compare_results.json").read_text())
    assert results["settings"]["family"] == "t5"
    rows = {r["variant"]: r for r in results["results"]}
    assert rows["vanilla"]["model_class"] == "T5ForSequenceClassification"
    synthesizer = "T5SynthesizerForSequenceClassification"
    assert rows["random"]["model_class"] == rows["dense+vanilla"]["model_class"] == synthesizer
    # random drops query/key (d_model 128 -> 4 heads x 32, no bias) and adds R (4 heads, L = 32) in the self-attention
    # of 2 encoder and 2 decoder blocks: both stacks are synthesized.
    blocks, query_key, r = 4, 2 * 128 * 128, 4 * 32 * 32
    assert rows["random"]["trainable_parameters"] == rows["vanilla"]["trainable_parameters"] - blocks * (query_key - r)
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["train_loss"] > 0 for row in rows.values())


def test_compare_family_t5_refuses_a_bert_checkpoint_name(capsys):
    assert cli.main(["compare", "--quick", "--family", "t5", "--model_name_or_path", "minilm"]) == 2
    assert "--family t5 chooses the built-in model ('tiny')" in capsys.readouterr().err
