"""Tables and Pareto plot of issue 24's frontier from the logged runs: benchmarks/frontier_speed.json (speed of each
architecture) and benchmarks/frontier_runs/*.json (one per `benchmarks/frontier_distill.sh` run).

    python benchmarks/frontier_report.py          # prints the markdown tables, writes benchmarks/frontier.png
    python benchmarks/frontier_report.py --quality  # also puts them into benchmarks/QUALITY.md between its markers

Run names say what they are: `scr_CONFIG_s0` (screen: fortune-topics, seed 0, dev only) and
`fin_CONFIG_TASK_sSEED` (finalists: dev and test). Δ stock = student accuracy − the accuracy of the same task and
seed's stock teacher (fine-tuned by the recipe), on the same split, in points.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ("fortune-topics", "bbc-headlines", "wordnet-supersense")
# architecture of the speed table for a config name's (variant, layers) part
ARCH_OF = {"random": "random", "dense": "dense", "factorized_random": "factorized_random",
           "randomL04": "random L0-4", "randomL15": "random L1-5", "randomL03": "random L0-3",
           "randomL02": "random L0-2", "denseL04": "dense L0-4", "factorized_randomL04": "factorized_random L0-4",
           "random+vanilla": "random+vanilla", "dense+vanilla": "dense+vanilla", "fixed_random": "fixed_random",
           "fixed_randomL04": "fixed_random L0-4", "fixed_randomL15": "fixed_random L1-5"}


def load_runs(folder: Path = HERE / "frontier_runs") -> list[dict]:
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if run.get("rc") != 0 or not run.get("student"):
            continue
        fin = re.fullmatch(r"fin_(.+)_(fortune-topics|bbc-headlines|wordnet-supersense)_s(\d+)", run["name"])
        scr = re.fullmatch(r"scr_(.+)_s(\d+)", run["name"])
        run["stage"], run["config"] = ("finalist", fin.group(1)) if fin else ("screen", scr.group(1))
        runs.append(run)
    return runs


def architecture(config: str) -> str:
    """The speed table's architecture of a config name (its first `_`-separated token(s) before recipe options)."""
    for key in sorted(ARCH_OF, key=len, reverse=True):
        if config == key or config.startswith(key + "_"):
            return ARCH_OF[key]
    raise KeyError(f"no architecture for config {config!r}: add it to ARCH_OF")


SPEED_RUNS = (HERE / "frontier_speed.json", HERE / "frontier_speed_fixed.json")


def speed(paths=SPEED_RUNS) -> dict:
    """{(architecture, length): [speed-up vs sdpa, CPU time, of each frontier_speed.py run that timed it]} (each
    ratio is against the sdpa of its own run)."""
    speeds = defaultdict(list)
    for path in paths:
        for r in json.loads(path.read_text())["results"]:
            speeds[r["architecture"], r["length"]].append(r["speedup_vs_sdpa_cpu"])
    return speeds


def speed_text(speeds, arch: str) -> str:
    """'x512 / x128', each the runs' figures joined by ',' (run 1 first)."""
    return " / ".join(",".join(f"{x:.2f}" for x in speeds.get((arch, n), [])) or "?" for n in (512, 128))


def slowest(speeds, arch: str, length: int = 512) -> float:
    """The lowest speed-up measured for `arch` at `length` (the conservative figure the plot uses)."""
    return min(speeds[arch, length])


def accuracy(run: dict, who: str, split: str) -> float | None:
    key = {"dev": "eval_accuracy", "test": "test_accuracy"}[split]
    value = run[who].get(key)
    return None if value is None else 100 * value


def delta(run: dict, split: str) -> float | None:
    s, t = accuracy(run, "student", split), accuracy(run, "teacher", split)
    return None if s is None or t is None else s - t


def mean_spread(values: list[float], sign: str = "") -> str:
    """'mean ± sample standard deviation' (one decimal; `sign="+"` prints the mean's sign), the value alone for one."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:{sign}.1f}"
    return f"{statistics.mean(values):{sign}.1f} ± {statistics.stdev(values):.1f}"


def speed_table(paths=SPEED_RUNS) -> str:
    """Markdown: each architecture's training-step CPU time and speed-up vs sdpa, per run and length."""
    runs = [json.loads(p.read_text())["results"] for p in paths]
    names = list(dict.fromkeys(r["architecture"] for rows in runs for r in rows))
    head = " | ".join(f"run {i + 1}: l={n} b={b}" for n, b in ((512, 8), (128, 32)) for i in range(len(runs)))
    lines = [f"| architecture | {head} |", "|---|" + "---|" * (2 * len(runs))]
    for name in names:
        cells = []
        for n in (512, 128):
            for rows in runs:
                r = next((r for r in rows if r["architecture"] == name and r["length"] == n), None)
                cells.append(f"{r['cpu_s']:.2f} s ({r['speedup_vs_sdpa_cpu']:.2f}x)" if r else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def screen_table(runs, speeds) -> str:
    lines = ["| config | x sdpa at 512 / 128 | stock dev | dev acc. | Δ stock (dev) | distill wall s | unlabeled |",
             "|---|---|---|---|---|---|---|"]
    for r in (r for r in runs if r["stage"] == "screen"):
        arch = architecture(r["config"])
        lines.append(f"| {r['config']} | {speed_text(speeds, arch)} | {accuracy(r, 'teacher', 'dev'):.1f} | "
                     f"{accuracy(r, 'student', 'dev'):.1f} | {delta(r, 'dev'):+.1f} | {r['distill_wall_s']} | "
                     f"{r['unlabeled_texts']} |")
    return "\n".join(lines)


def finalist_table(runs, speeds) -> str:
    """Markdown: per task, the stock teachers (one per seed) and each finalist config over its seeds."""
    finalists = [r for r in runs if r["stage"] == "finalist"]
    by = defaultdict(list)
    for r in finalists:
        by[r["config"], r["task"]].append(r)
    stock = defaultdict(dict)  # teacher figures per (task, seed), from any finalist run of that task and seed
    for r in finalists:
        stock[r["task"]][r["seed"]] = r
    lines = ["| task (train + unlabeled texts) | row | seeds | x sdpa 512 / 128 | dev acc. | test acc. | "
             "Δ stock dev | Δ stock test | Δ test per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for task in (t for t in TASKS if stock[t]):
        teachers = [stock[task][seed] for seed in sorted(stock[task])]
        test = [x for r in teachers if (x := accuracy(r, "teacher", "test")) is not None]
        lines.append(f"| {task} ({teachers[0]['train_texts']} + {teachers[0]['unlabeled_texts']}) | stock `sdpa` | "
                     f"{','.join(str(r['seed']) for r in teachers)} | 1.00 / 1.00 | "
                     f"{mean_spread([accuracy(r, 'teacher', 'dev') for r in teachers])} | {mean_spread(test)} "
                     "| | | |")
        for (config, t), rs in sorted(by.items()):
            if t != task:
                continue
            rs = sorted(rs, key=lambda r: r["seed"])
            dev, test = [delta(r, "dev") for r in rs], [delta(r, "test") for r in rs]
            lines.append(
                f"| | {config} | {','.join(str(r['seed']) for r in rs)} | {speed_text(speeds, architecture(config))} | "
                f"{mean_spread([accuracy(r, 'student', 'dev') for r in rs])} | "
                f"{mean_spread([accuracy(r, 'student', 'test') for r in rs])} | {mean_spread(dev, '+')} | "
                f"{mean_spread(test, '+')} | {', '.join(f'{x:+.1f}' for x in test)} |")
    return "\n".join(lines)


# Screen points from before these runs, same task, seed and recipe: QUALITY.md, "fortune-topics: the one-command
# recipe" (seed 0: random without --unlabeled_file, dev 59.4 against stock 68.2).
EARLIER_SCREEN = (("random, no unlabeled (earlier run)", "random", 59.4 - 68.2),)


def plot(runs, speeds, path: Path = HERE / "frontier.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    screen = [r for r in runs if r["stage"] == "screen"]
    for r in screen:
        x = slowest(speeds, architecture(r["config"]))
        ax.scatter(x, delta(r, "dev"), marker="o", facecolors="none", edgecolors="tab:gray")
        ax.annotate(r["config"], (x, delta(r, "dev")), fontsize=7, color="tab:gray", xytext=(3, -8),
                    textcoords="offset points")
    for label, arch, dev_delta in EARLIER_SCREEN:
        ax.scatter(slowest(speeds, arch), dev_delta, marker="o", facecolors="none", edgecolors="tab:gray")
        ax.annotate(label, (slowest(speeds, arch), dev_delta), fontsize=7, color="tab:gray", xytext=(-150, -3),
                    textcoords="offset points")
    by = defaultdict(list)
    for r in (r for r in runs if r["stage"] == "finalist" and delta(r, "test") is not None):
        by[r["config"]].append(r)
    for config, rs in by.items():
        per_task = defaultdict(list)
        for r in rs:
            per_task[r["task"]].append(delta(r, "test"))
        x = slowest(speeds, architecture(config))
        means = {t: statistics.mean(v) for t, v in per_task.items()}
        ax.scatter([x] * len(means), list(means.values()), marker="x", color="tab:blue", s=20)
        ax.scatter(x, statistics.mean(means.values()), marker="*", color="tab:red", s=120, zorder=3)
        ax.annotate(f"{config} (tasks: {len(means)})", (x, statistics.mean(means.values())), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.scatter([1.0], [0.0], marker="s", color="black")
    ax.annotate("stock sdpa", (1.0, 0.0), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(-1, color="tab:green", lw=0.8, ls="--", label="goal 1: ≥ stock − 1 (and ≥ 1.25x)")
    ax.axhline(-5, color="tab:orange", lw=0.8, ls="--", label="goal 2: pure ≥ stock − 5")
    ax.axvline(1.25, color="tab:green", lw=0.8, ls=":")
    ax.set_xlabel("MiniLM training step at length 512, speed-up vs stock sdpa (CPU time, one thread; the lower of "
                  "two runs where timed twice)", fontsize=8)
    ax.set_ylabel("accuracy − stock (points)")
    ax.set_title("Issue 24 frontier: ○ screen (fortune-topics, seed 0, dev); ★ finalists' mean test Δ over tasks "
                 "(× per task, 3 seeds)", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def put_between_markers(text: str, name: str, table: str) -> str:
    """`text` with the lines between `<!-- frontier NAME -->` and `<!-- /frontier NAME -->` replaced by `table`."""
    start, end = f"<!-- frontier {name} -->", f"<!-- /frontier {name} -->"
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", action="store_true", help="write the tables into benchmarks/QUALITY.md")
    args = parser.parse_args(argv)
    runs, speeds = load_runs(), speed()
    tables = {"speed": speed_table(), "screen": screen_table(runs, speeds), "finalists": finalist_table(runs, speeds)}
    for name, table in tables.items():
        print(f"{name}:\n{table}\n")
    plot(runs, speeds)
    print(f"wrote {HERE / 'frontier.png'}")
    if args.quality:
        quality = HERE / "QUALITY.md"
        text = quality.read_text(encoding="utf-8")
        for name, table in tables.items():
            text = put_between_markers(text, name, table)
        quality.write_text(text, encoding="utf-8")
        print(f"wrote the tables into {quality}")


if __name__ == "__main__":
    main()
