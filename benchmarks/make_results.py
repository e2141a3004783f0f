"""Turn benchmarks/results.json (from bench_attention.py) into the tables and target checks of RESULTS.md.

    python benchmarks/make_results.py benchmarks/results.json > benchmarks/RESULTS_tables.md
"""

import json
import sys


def table(rows, title, show_mem=False):
    lengths = sorted({r["length"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = [f"**{title}** (median ms, x = time(sdpa)/time; > 1 is faster than stock sdpa)", ""]
    lines.append("| impl | " + " | ".join(f"l={l}" + (f" (b={_b(rows, l)})") for l in lengths) + " |")
    lines.append("|---|" + "---|" * len(lengths))
    for impl in impls:
        cells = []
        for length in lengths:
            m = [r for r in rows if r["impl"] == impl and r["length"] == length]
            if not m:
                cells.append("-")
                continue
            r = m[0]
            cell = f"{r['seconds'] * 1e3:.0f} ms, **{r.get('speedup_vs_sdpa', float('nan')):.2f}x**"
            if show_mem and "peak_mb" in r:
                cell += f", {r['peak_mb']:.0f} MB"
            cells.append(cell)
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _b(rows, length):
    return next(r["batch"] for r in rows if r["length"] == length)


def find(results, **kw):
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def check(results, label, threshold, **kw):
    r = find(results, **kw)
    if r is None or "speedup_vs_sdpa" not in r:
        return f"| {label} | >= {threshold:.2f}x | not measured | - |"
    x = r["speedup_vs_sdpa"]
    return f"| {label} | >= {threshold:.2f}x | {x:.2f}x | {'met' if x >= threshold else '**missed**'} |"


def main(path):
    data = json.load(open(path))
    meta, results = data["meta"], data["results"]
    out = [f"Run: `{meta['command']}`, {meta['started']} - {meta.get('finished')}, torch {meta['torch']}, "
           f"{meta['threads']} threads, allocator {meta['allocator']}", "",
           f"sdpa kernels that ran for stock BERT attention (profiler, fwd+bwd): `{meta['sdpa_kernels']}`", ""]
    out.append("Synthesizer routes (profiler, fwd+bwd, l=256): " + "; ".join(
        f"{k}: `{v}`" for k, v in meta.get("synthesizer_routes", {}).items()) + "\n")
    sections = {}
    for r in results:
        sections.setdefault((r["section"], r.get("shape", ""), r["dtype"], r["mode"]), []).append(r)
    for (section, shape, dtype, mode), rows in sections.items():
        if section == "compile":
            continue
        title = f"{section} {shape} {dtype} {mode}".replace("  ", " ")
        out.append(table(rows, title, show_mem=dtype == "fp32"))
    comp = [r for r in results if r["section"] == "compile"]
    if comp:
        c = comp[0]
        out.append(f"**torch.compile(model)** (inductor), {c['shape']} shape, l={c['length']}, b={c['batch']}, fp32 "
                   f"(median ms; x vs compiled sdpa)\n")
        out.append("| impl | mode | compiled | uncompiled | first call (compile) s | x vs compiled sdpa |")
        out.append("|---|---|---|---|---|---|")
        for r in comp:
            out.append(f"| {r['impl']} | {r['mode']} | {r['seconds'] * 1e3:.0f} | {r['uncompiled_seconds'] * 1e3:.0f} | "
                       f"{r['first_call_seconds']:.0f} | {r.get('speedup_vs_sdpa', float('nan')):.2f}x |")
        out.append("")

    rows = ["| target | goal | measured | status |", "|---|---|---|---|"]
    L = dict(section="layer", dtype="fp32")
    for v in ("random", "fixed_random"):
        for l in (128, 512, 1024):
            rows.append(check(results, f"layer fwd+bwd {v} l={l}", 2.0, impl=v, length=l, mode="fwd+bwd", **L))
    for l in (128, 512, 1024):
        rows.append(check(results, f"layer fwd+bwd factorized_random l={l}", 1.5, impl="factorized_random", length=l,
                          mode="fwd+bwd", **L))
    for l in (2048, 4096):
        rows.append(check(results, f"layer fwd+bwd factorized_random l={l} (b={4096 // l})", 1.0,
                          impl="factorized_random", length=l, mode="fwd+bwd", **L))
    rows.append(check(results, "layer fwd+bwd fixed_random l=4096 (b=1)", 1.0, impl="fixed_random", length=4096,
                      mode="fwd+bwd", **L))
    for l in (128, 512, 1024, 2048, 4096):
        rows.append(check(results, f"layer fwd+bwd dense l={l}", 0.9, impl="dense", length=l, mode="fwd+bwd", **L))
    for l in (128, 512, 1024, 2048, 4096):
        rows.append(check(results, f"layer fwd+bwd factorized_random+vanilla l={l}", 0.8,
                          impl="factorized_random+vanilla", length=l, mode="fwd+bwd", **L))
    for v in ("random+vanilla", "dense+vanilla"):
        for l in (128, 512, 1024, 2048, 4096):
            rows.append(check(results, f"layer fwd+bwd {v} l={l} (<= 2x sdpa time)", 0.5, impl=v, length=l,
                              mode="fwd+bwd", **L))
            rows.append(check(results, f"layer fwd {v} l={l} (<= 1.3x sdpa time)", 1 / 1.3, impl=v, length=l,
                              mode="fwd", **L))
    for v in ("random", "fixed_random"):
        for l in (128, 512, 1024, 2048, 4096):
            rows.append(check(results, f"inference layer fwd {v} l={l} (cached softmax)", 2.0, impl=v, length=l,
                              mode="fwd", **L))
        rows.append(check(results, f"inference small-256 encoder l=4096 {v}", 1.5, section="model", shape="small-256",
                          dtype="fp32", impl=v, length=4096, mode="infer"))
    M = dict(section="model", dtype="fp32", length=512, mode="train")
    rows.append(check(results, "train step BERT-base l=512 random", 1.2, shape="bert-base", impl="random", **M))
    rows.append(check(results, "train step BERT-base l=512 factorized_random", 1.15, shape="bert-base",
                      impl="factorized_random", **M))
    rows.append(check(results, "train step BERT-base l=512 dense", 1.0, shape="bert-base", impl="dense", **M))
    rows.append(check(results, "train step MiniLM l=512 random", 1.3, shape="minilm", impl="random", **M))
    for v in ("factorized_random", "fixed_random"):
        r = find(results, section="model", shape="minilm", length=2048, mode="train", impl=v)
        s = find(results, section="model", shape="minilm", length=2048, mode="train", impl="sdpa")
        if r and s and "peak_mb" in r:
            ok = r["peak_mb"] <= s["peak_mb"]
            rows.append(f"| peak memory train step MiniLM l=2048 b=1 {v} | <= sdpa ({s['peak_mb']:.0f} MB) | "
                        f"{r['peak_mb']:.0f} MB (persistent: {r['persistent_mb']:.0f} MB vs sdpa "
                        f"{s['persistent_mb']:.0f} MB) | {'met' if ok else '**missed**'} |")
        else:
            rows.append(f"| peak memory train step l=2048 {v} | <= sdpa | not measured | - |")
    out.append("### Targets\n")
    out.extend(rows)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json")
