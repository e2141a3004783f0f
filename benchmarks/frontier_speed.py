"""Speed of every architecture on issue 24's frontier: one MiniLM training step, stock attention vs synthesizer
variants and hybrids (synthesizer in some layers, dot-product attention in the others), in one process.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/frontier_speed.py             # ~15 min on one thread
    python benchmarks/frontier_speed.py --quick                                 # smoke run

MiniLM shape (all-MiniLM-L6-v2's config: 6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary 30522;
random weights: speed does not depend on them), sequence-classification head, one training step = forward +
backward + AdamW step (fused, the Trainer's default), hidden dropout 0.1, attention-probability dropout 0 (with
dropout > 0 stock sdpa leaves its flash kernel on CPU). Length 512 batch 8 and length 128 batch 32, one torch
thread. Every architecture of a length is timed round-robin in the same run (one call of each per round, after a
warm-up call each), so load from other processes hits all alike; the median of `--rounds` rounds is reported for
process CPU time (the primary figure: with one thread it does not count time spent waiting for a core) and for wall
time. Ratios are time(sdpa) / time(architecture): > 1 is faster than stock. The models and timing helpers are
benchmarks/bench_attention.py's (model section), loaded with importlib.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def load_bench():
    """benchmarks/bench_attention.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_attention", Path(__file__).with_name("bench_attention.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


# name: (attention, synthesized layers or None for every layer)
ARCHITECTURES = {
    "sdpa": ("sdpa", None),
    "eager": ("eager", None),
    "random": ("random", None),
    "fixed_random": ("fixed_random", None),
    "factorized_random": ("factorized_random", None),
    "dense": ("dense", None),
    "random L0-4": ("random", [0, 1, 2, 3, 4]),
    "random L1-5": ("random", [1, 2, 3, 4, 5]),
    "random L0-3": ("random", [0, 1, 2, 3]),
    "random L0-2": ("random", [0, 1, 2]),
    "dense L0-4": ("dense", [0, 1, 2, 3, 4]),
    "factorized_random L0-4": ("factorized_random", [0, 1, 2, 3, 4]),
    "fixed_random L0-4": ("fixed_random", [0, 1, 2, 3, 4]),
    "fixed_random L1-5": ("fixed_random", [1, 2, 3, 4, 5]),
    "random+vanilla": ("random+vanilla", None),
    "dense+vanilla": ("dense+vanilla", None),
}
CASES = ((512, 8), (128, 32))  # (length, batch)


def build(bench, name: str, length: int):
    """The MiniLM-shaped classifier of architecture `name` (ARCHITECTURES) for inputs of `length` tokens."""
    impl, layers = ARCHITECTURES[name]
    if layers is None:
        return bench.build_model(impl, length, "minilm")
    config = bench.bert_config(impl, length, *bench.SHAPES["minilm"])
    config.synthesizer_layers = layers
    config.check_synthesizer_fields()
    return bench.BertSynthesizerForSequenceClassification(config)


def round_robin(fns: dict, rounds: int) -> dict:
    """{name: (cpu seconds, wall seconds) per round} of each fn, timed one call of each per round, after one warm-up
    call each."""
    for fn in fns.values():
        fn()
    times = {k: ([], []) for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            c, w = time.process_time(), time.perf_counter()
            fn()
            times[k][0].append(time.process_time() - c)
            times[k][1].append(time.perf_counter() - w)
    return times


def run_case(bench, names, length, batch, rounds) -> list[dict]:
    """Rows of one (length, batch): medians and every round, for each architecture in `names`."""
    fns = {}
    for name in names:
        torch.manual_seed(0)
        model = build(bench, name, length)
        ids = torch.randint(2, 30522, (batch, length))
        fns[name] = bench.model_fns(model, ids, "fp32")[0]  # the training step
    timed = round_robin(fns, rounds)
    rows = []
    for name, (cpu, wall) in timed.items():
        impl, layers = ARCHITECTURES[name]
        rows.append(dict(architecture=name, attention=impl, synthesizer_layers=layers, length=length, batch=batch,
                         cpu_s=statistics.median(cpu), wall_s=statistics.median(wall), all_cpu_s=cpu, all_wall_s=wall))
    base = {k: next(r for r in rows if r["architecture"] == "sdpa")[k] for k in ("cpu_s", "wall_s")}
    eager = {k: next((r[k] for r in rows if r["architecture"] == "eager"), None) for k in ("cpu_s", "wall_s")}
    for r in rows:
        r["speedup_vs_sdpa_cpu"] = base["cpu_s"] / r["cpu_s"]
        r["speedup_vs_sdpa_wall"] = base["wall_s"] / r["wall_s"]
        if eager["cpu_s"]:
            r["speedup_vs_eager_cpu"] = eager["cpu_s"] / r["cpu_s"]
    return rows


def table(rows) -> str:
    lines = ["| architecture | length x batch | step CPU s | x sdpa (CPU) | x sdpa (wall) | x eager (CPU) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['architecture']} | {r['length']} x {r['batch']} | {r['cpu_s']:.3f} | "
                     f"{r['speedup_vs_sdpa_cpu']:.2f} | {r['speedup_vs_sdpa_wall']:.2f} | "
                     f"{r.get('speedup_vs_eager_cpu', float('nan')):.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per length (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 architectures, small batches, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("frontier_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases, names = CASES, args.architectures
    if args.quick:
        cases, names, args.rounds = ((128, 2),), ["sdpa", "random", "random L0-4"], 2
    bench = load_bench()
    meta = dict(command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                torch=torch.__version__, threads=torch.get_num_threads(), rounds=args.rounds,
                started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    rows = []
    for length, batch in cases:
        rows += run_case(bench, names, length, batch, args.rounds)
        gc.collect()
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        args.out.write_text(json.dumps(dict(meta=meta, results=rows), indent=1))  # a cut-off run keeps its lengths
        print(table([r for r in rows if r["length"] == length]), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
