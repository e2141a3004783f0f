"""Mean over seeds of `benchmarks/quality.py` runs: one table row per variant and row kind, one column per seed.

    python benchmarks/quality_seeds.py benchmarks/quality_bbc.json benchmarks/quality_seeds/*.json

Each JSON is one `quality.py` run (`--seed N`; a run that names no seed is seed 0); runs of the same seed with
different `--variants` are joined, and every run's stock row of that seed must agree (same seed, same recipe). Prints
a markdown table per task: accuracy (%) per seed, the mean and its difference to stock's mean, and the fraction of
the plain-conversion gap closed, `(mean − plain mean) / (stock mean − plain mean)`."""

import argparse
import json
import statistics
from collections import defaultdict

KINDS = ("plain", "calibrated", "distilled", "task-distilled")


def collect(paths):
    """{task: {(variant, kind): {seed: accuracy %}}}, stock under ("stock", "stock")."""
    accuracy = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        run = json.load(open(path))
        seed = run["settings"].get("seed", 0)
        for task, entry in run["stock"].items():
            stock = accuracy[task][("stock", "stock")]
            value = 100 * entry["accuracy"]
            if seed in stock and abs(stock[seed] - value) > 1e-9:
                raise SystemExit(f"{path}: stock {task} seed {seed} is {value:.1f}, another run has {stock[seed]:.1f}")
            stock[seed] = value
        for variant, rows in run["variants"].items():
            for kind in KINDS:
                for task, entry in rows.get(kind, {}).items():
                    accuracy[task][(variant, kind)][seed] = 100 * entry["accuracy"]
    return accuracy


def table(rows) -> str:
    seeds = sorted(rows[("stock", "stock")])
    stock = statistics.mean(rows[("stock", "stock")].values())
    lines = ["| attention | row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (Δ stock) | gap closed |",
             "|---|---|" + "---|" * len(seeds) + "---|---|",
             "| stock `sdpa` | | " + " | ".join(f"{rows[('stock', 'stock')][s]:.1f}" for s in seeds)
             + f" | {stock:.1f} | |"]
    for variant in dict.fromkeys(v for v, _ in rows if v != "stock"):
        plain = statistics.mean(rows[(variant, "plain")].values())
        for kind in KINDS:
            by_seed = rows.get((variant, kind), {})
            if sorted(by_seed) != seeds:
                continue  # a row not run for every seed has no mean
            mean = statistics.mean(by_seed.values())
            gap = f"{(mean - plain) / (stock - plain):.2f}" if kind != "plain" and stock - plain > 0 else ""
            lines.append(f"| `{variant}` | {kind} | " + " | ".join(f"{by_seed[s]:.1f}" for s in seeds)
                         + f" | {mean:.1f} ({mean - stock:+.1f}) | {gap} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="quality.json files of benchmarks/quality.py runs")
    for task, rows in collect(parser.parse_args(argv).runs).items():
        print(f"## {task}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
