"""Synthesizer attention vs stock transformers attention (`sdpa`, `eager`) on this machine, in one process.

    python benchmarks/bench_attention.py              # everything (about 20-30 min on 2 cores)
    python benchmarks/bench_attention.py --quick      # smoke run, < 1 min
    python benchmarks/bench_attention.py --lengths 512 1024 --sections layer

Sections (all times are medians of `--repeats` runs after a warm-up; ratios are time(sdpa) / time(variant) of
the same row and section, so > 1 means faster than stock sdpa):
  layer   one BERT self-attention layer (hidden -> attention output, projections included: a synthesizer layer
          drops the query/key projections), 12 heads x 64, batch = max(1, 4096 // l) (batch 1 at l = 4096),
          "fwd" = inference (no_grad), "fwd+bwd" = forward + backward w.r.t. input and parameters. fp32 and bf16
          autocast rows.
  model   full encoder, sequence classification head: "train" = fwd + bwd + AdamW step (fused, transformers'
          Trainer default with torch >= 2.8), "infer" = no_grad forward; BERT-base shape (12 x 768) and MiniLM shape
          (6 x 384); a small-hidden (4 x 256) encoder at l = 4096 for inference; a T5-small-shaped encoder-decoder
          (6 + 6 x 512, 8 heads) at encoder/decoder length 512/128 (synthesizer in both stacks, relative position
          bias added as configured by default).
  compile `torch.compile(model)` (inductor) of every variant against compiled sdpa, train and infer, timed
          round-robin with the eager models (`--compile-shape/-length/-batch`, MiniLM l = 128 b = 8 by default);
          `--compile-fallback-random` adds training rows compiled with inductor's `fallback_random=True`.
  memory  peak of live CPU tensor memory allocated during the measured call, above the level at its start, from
          the torch profiler's memory events (each op's own allocations at its start, frees as they happen;
          allocator-independent -- RSS is not: glibc keeps freed blocks resident). Measured on an extra call after
          the timed ones, i.e. a steady-state step: parameters, AdamW state and persistent caches (fixed random's
          softmax(R)) exist before it and are reported separately as `persistent_mb` (parameters + buffers +
          caches), not as peak.

Attention-probability dropout is 0 in every row: with dropout > 0 stock `sdpa` silently leaves its flash kernel
for the math path on CPU (torch 2.13), which would flatter the synthesizers. Hidden dropout is BERT's 0.1.
Writes `--out` JSON and a PNG plot next to it; prints which sdpa kernel ran (profiler) and the allocator.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, T5Config, T5ForConditionalGeneration  # noqa: E402
from transformers.models.bert.modeling_bert import BertSelfAttention  # noqa: E402

import hf_synthesizer  # noqa: E402
from hf_synthesizer import (  # noqa: E402
    BertSynthesizerConfig,
    BertSynthesizerForSequenceClassification,
    T5SynthesizerConfig,
    T5SynthesizerForConditionalGeneration,
)
from hf_synthesizer.modeling.modeling_bert_synthesizer import BertSynthesizerSelfAttention  # noqa: E402
from hf_synthesizer.modeling.synthesizer_attention import init_synthesizer_weights  # noqa: E402

STOCK = ("eager", "sdpa")
VARIANTS = (
    "random",
    "fixed_random",
    "factorized_random",
    "dense",
    "factorized_dense",
    "random+vanilla",
    "dense+vanilla",
    "factorized_random+vanilla",
    "dense+random",
)
SHAPES = {  # name: (layers, hidden, heads, intermediate)
    "bert-base": (12, 768, 12, 3072),
    "minilm": (6, 384, 12, 1536),
    "small-256": (4, 256, 4, 1024),
}
T5_SHAPE = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, vocab_size=32128)
T5_DECODER_LENGTH = 128


def bert_config(impl, length, layers, hidden, heads, inter):
    common = dict(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=max(512, length), attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    if impl in STOCK:
        config = BertConfig(**common)
        config._attn_implementation = impl
        return config
    config = BertSynthesizerConfig(synthesizer_variant=impl, synthesizer_length=length, **common)
    return config


def build_layer(impl, length, hidden=768, heads=12):
    config = bert_config(impl, length, 1, hidden, heads, 4 * hidden)
    if impl in STOCK:
        layer = BertSelfAttention(config)
    else:
        config._attn_implementation = hf_synthesizer.attn_implementation_name(impl)
        hf_synthesizer.register_attn_implementation(config._attn_implementation)  # unnamed mixtures
        layer = BertSynthesizerSelfAttention(config, layer_idx=0)
        init_synthesizer_weights(layer.synthesizer, config.initializer_range)
    return layer


def build_model(impl, length, shape):
    if shape == "t5-small":
        common = dict(T5_SHAPE, dropout_rate=0.1, decoder_start_token_id=0, pad_token_id=0)
        if impl in STOCK:
            config = T5Config(**common)
            config._attn_implementation = impl
            return T5ForConditionalGeneration(config)
        return T5SynthesizerForConditionalGeneration(
            T5SynthesizerConfig(synthesizer_variant=impl, synthesizer_length=length, **common)
        )
    layers, hidden, heads, inter = SHAPES[shape]
    config = bert_config(impl, length, layers, hidden, heads, inter)
    if impl in STOCK:
        return BertForSequenceClassification(config)
    return BertSynthesizerForSequenceClassification(config)


# ------------------------------------------------------------------------------------------------ timing


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def peak_allocated_mb(fn):
    """Peak of live CPU tensor memory allocated during one call of `fn`, above the level at its start, in MB
    (profiler memory events; transient buffers inside a single kernel are not seen)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak / 2**20


def persistent_mb(module):
    """Parameters, buffers and synthesizer caches held between calls, in MB."""
    tensors = list(module.parameters()) + list(module.buffers())
    tensors += [m.input_independent_cache.value for m in module.modules() if hasattr(m, "input_independent_cache")]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20


def layer_fns(layer, x, dtype):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    grad_out = torch.randn_like(x)

    def fwd():
        with torch.no_grad(), autocast:
            layer(x)[0]

    def fwd_bwd():
        with autocast:
            out = layer(x)[0]
        out.float().backward(grad_out)
        x.grad = None
        for p in layer.parameters():
            p.grad = None

    return fwd, fwd_bwd


def model_fns(model, ids, dtype):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    if model.config.is_encoder_decoder:
        labels = torch.randint(2, model.config.vocab_size, (ids.shape[0], T5_DECODER_LENGTH))
    else:
        labels = torch.zeros(ids.shape[0], dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # Trainer's default optim on torch >= 2.8

    def train():
        model.train()
        with autocast:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.no_grad(), autocast:
            if model.config.is_encoder_decoder:
                model(input_ids=ids, labels=labels).logits
            else:
                model(input_ids=ids).logits

    return train, infer


def sdpa_kernels():
    """Which aten kernels sdpa dispatches to for the stock layer, fwd + bwd (flash vs math fallback)."""
    layer = build_layer("sdpa", 256)
    x = torch.randn(2, 256, 768, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)[0].sum().backward()
    names = sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key})
    return names


def route_kernels(impl, length=256):
    """Kernels behind a synthesizer layer (to show which ones stay on flash / never materialise per example)."""
    layer = build_layer(impl, length)
    x = torch.randn(2, length, 768, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)[0].sum().backward()
    keys = {e.key for e in prof.key_averages()}
    return sorted(k for k in keys if "scaled_dot_product" in k or k.startswith("_SharedLogits") or k.startswith(
        "_PerExample") or "SharedLogits" in k or "PerExample" in k)


# ------------------------------------------------------------------------------------------------- sections


def batch_for(length):
    return max(1, 4096 // length)


def interleaved(fns, repeats):
    """Median time of each fn, timed round-robin (one call of each per round) so that load from other processes
    on this shared machine hits every implementation alike; one warm-up call each first."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), v) for k, v in times.items()}


def run_layer(args, results):
    impls = list(STOCK) + list(args.variants)
    for dtype in args.dtypes:
        lengths = args.lengths if dtype == "fp32" else [l for l in args.lengths if l in args.bf16_lengths]
        for length in lengths:
            batch = batch_for(length)
            torch.manual_seed(0)
            fns = {}
            for impl in impls:
                if impl == "eager" and length > args.eager_max:
                    continue
                if dtype == "bf16" and impl not in args.bf16_variants:
                    continue
                layer = build_layer(impl, length)
                x = torch.randn(batch, length, 768, requires_grad=True)
                fns[impl] = layer_fns(layer, x, dtype)
            reps = args.repeats if length <= 1024 else max(2, args.repeats // 2)
            for m, mode in enumerate(("fwd", "fwd+bwd")):
                timed = interleaved({k: v[m] for k, v in fns.items()}, reps)
                for impl, (t, all_t) in timed.items():
                    row = dict(section="layer", dtype=dtype, length=length, batch=batch, impl=impl, mode=mode,
                               seconds=t, all_seconds=all_t)
                    if args.memory and dtype == "fp32":
                        row["peak_mb"] = peak_allocated_mb(fns[impl][m])
                    results.append(row)
                    print(f"layer {dtype} l={length:5d} b={batch:3d} {impl:28s} {mode:8s} {t * 1e3:9.1f} ms"
                          + (f"  peak {row['peak_mb']:8.1f} MB" if "peak_mb" in row else ""), flush=True)
            del fns
            gc.collect()


def run_model(args, results):
    cases = []
    for shape in args.shapes:
        for length in args.model_lengths:
            if shape == "t5-small" and length != 512:
                continue
            batch = {"bert-base": {128: 8, 512: 2}, "minilm": {128: 32, 512: 8}, "t5-small": {512: 4}}[shape].get(length, 1)
            batch = max(1, batch // args.batch_divisor)
            cases.append((shape, length, batch, ("train", "infer")))
    if args.small_long:
        cases.append(("small-256", 4096, 1, ("infer",)))
    if args.memory_2048:
        cases.append(("minilm", 2048, 1, ("train",)))
    impls = ["sdpa", "eager"] + [v for v in args.model_variants]
    for shape, length, batch, modes in cases:
        for dtype in args.model_dtypes:
            if dtype == "bf16" and (shape, length) not in (("minilm", 512), ("bert-base", 512)):
                continue
            fns, models = {}, {}
            for impl in impls:
                if impl == "eager" and length > 512:
                    continue
                torch.manual_seed(0)
                models[impl] = model = build_model(impl, length, shape)
                ids = torch.randint(2, 30522, (batch, length))
                fns[impl] = model_fns(model, ids, dtype)
            for mode in modes:
                m = 0 if mode == "train" else 1
                reps = args.model_repeats if length <= 512 else 2
                timed = interleaved({k: v[m] for k, v in fns.items()}, reps)
                for impl, (t, all_t) in timed.items():
                    row = dict(section="model", shape=shape, dtype=dtype, length=length, batch=batch, impl=impl,
                               mode=mode, seconds=t, all_seconds=all_t)
                    if args.memory and dtype == "fp32":
                        row["peak_mb"] = peak_allocated_mb(fns[impl][m])
                        row["persistent_mb"] = persistent_mb(models[impl])
                    results.append(row)
                    print(f"model {shape:9s} {dtype} l={length:5d} b={batch:3d} {impl:28s} {mode:5s} "
                          f"{t * 1e3:9.1f} ms" + (f"  peak {row['peak_mb']:8.1f} MB" if "peak_mb" in row else ""),
                          flush=True)
            del fns, models
            gc.collect()


# Mode of the compile section's extra training rows (`--compile-fallback-random`): inductor compiled with
# `fallback_random=True`, i.e. dropout masks drawn by aten's vectorised RNG as in eager mode, instead of inductor's CPU
# code, which draws each element with its own scalar Philox call (2.5-4x aten's `bernoulli_` time for BERT's hidden
# dropout in our profiles; RESULTS.md, "Compiled training: where the time goes").
FALLBACK_RANDOM = "train, fallback_random"


def run_compile(args, results):
    """`torch.compile(model)` (inductor) of every `--compile-variants` against compiled sdpa, training step and
    inference, in one process; after each model's first (compiling) calls, every compiled and eager function is timed
    round-robin (`interleaved`), so that load from other processes hits all rows alike."""
    shape, length, batch = args.compile_shape, args.compile_length, args.compile_batch
    # Every model's forward is one code object (transformers' decorator) to dynamo: without a higher limit, the
    # models compiled after the 8th graph would silently run eager.
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 1024
    fns, first_call, models = {}, {}, []
    for impl in ["sdpa"] + list(args.compile_variants):
        torch.manual_seed(0)
        model = build_model(impl, length, shape)
        ids = torch.randint(0, 30522, (batch, length))
        eager_train, eager_infer = model_fns(model, ids, "fp32")
        train, infer = model_fns(torch.compile(model), ids, "fp32")
        modes = [("infer", infer, eager_infer), ("train", train, eager_train)]
        if args.compile_fallback_random:  # the same step with dropout masks from aten's RNG (as eager)
            modes.append((FALLBACK_RANDOM, model_fns(torch.compile(model, options={"fallback_random": True}), ids,
                                                     "fp32")[0], eager_train))
        for mode, fn, ref in modes:
            t0 = time.perf_counter()
            fn()
            first_call[impl, mode] = time.perf_counter() - t0
            fns[impl, mode, "compiled"], fns[impl, mode, "eager"] = fn, ref
            print(f"compile {shape} l={length} b={batch} {impl:28s} {mode:5s} first call {first_call[impl, mode]:6.1f} s",
                  flush=True)
        models.append(model)
    for mode in ("infer", "train", FALLBACK_RANDOM):
        if not any(k[1] == mode for k in fns):
            continue
        timed = interleaved({k: f for k, f in fns.items() if k[1] == mode}, args.repeats)
        for (impl, _, kind), (t, all_t) in timed.items():
            if kind != "compiled":
                continue
            t_ref = timed[impl, mode, "eager"][0]
            results.append(dict(section="compile", shape=shape, dtype="fp32", length=length, batch=batch, impl=impl,
                                mode=mode, seconds=t, all_seconds=all_t, uncompiled_seconds=t_ref,
                                first_call_seconds=first_call[impl, mode]))
            print(f"compile {shape} l={length} b={batch} {impl:28s} {mode:5s} {t * 1e3:9.1f} ms "
                  f"(uncompiled {t_ref * 1e3:9.1f} ms)", flush=True)
    del fns, models
    torch._dynamo.reset()
    gc.collect()


# ------------------------------------------------------------------------------------------------- report


def add_ratios(results):
    def key(r):
        return tuple(r.get(k) for k in ("section", "shape", "dtype", "length", "batch", "mode"))

    sdpa = {key(r): r for r in results if r["impl"] == "sdpa"}
    for r in results:
        base = sdpa.get(key(r))
        if base:
            r["speedup_vs_sdpa"] = base["seconds"] / r["seconds"]
            if "peak_mb" in r and "peak_mb" in base:
                r["peak_mb_sdpa"] = base["peak_mb"]


def print_table(results):
    print("\n== medians; x = time(sdpa) / time(impl), > 1 is faster than stock sdpa ==")
    groups = {}
    for r in results:
        g = (r["section"], r.get("shape", "layer"), r["dtype"], r["mode"])
        groups.setdefault(g, []).append(r)
    for g, rows in groups.items():
        lengths = sorted({r["length"] for r in rows})
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        print(f"\n{' / '.join(map(str, g))}")
        print(f"{'impl':28s}" + "".join(f"{'l=' + str(l):>18s}" for l in lengths))
        for impl in impls:
            cells = []
            for length in lengths:
                m = [r for r in rows if r["impl"] == impl and r["length"] == length]
                if not m:
                    cells.append(f"{'-':>18s}")
                    continue
                r = m[0]
                cells.append(f"{r['seconds'] * 1e3:9.1f}ms {r.get('speedup_vs_sdpa', float('nan')):5.2f}x")
            print(f"{impl:28s}" + "".join(cells))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        rows = [r for r in results if r["section"] == "layer" and r["dtype"] == "fp32" and r["mode"] == mode]
        colors = plt.get_cmap("tab20").colors  # more lines than tab10's 10 colours
        for i, impl in enumerate(dict.fromkeys(r["impl"] for r in rows)):
            pts = sorted((r["length"], r.get("speedup_vs_sdpa", float("nan"))) for r in rows if r["impl"] == impl)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, color=colors[i % 20],
                    linestyle="--" if impl in STOCK else "-")
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("sequence length (batch = max(1, 4096 // l))")
        ax.set_title(f"one BERT self-attention layer, {mode}, fp32")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speed-up vs stock sdpa (time_sdpa / time)")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096])
    p.add_argument("--bf16-lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--bf16-variants", nargs="+",
                   default=["sdpa", "random", "fixed_random", "factorized_random", "dense", "random+vanilla"])
    p.add_argument("--sections", nargs="+", default=["layer", "model", "compile"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--shapes", nargs="+", default=["bert-base", "minilm", "t5-small"])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--model-variants", nargs="+",
                   default=["random", "fixed_random", "factorized_random", "dense", "random+vanilla"])
    p.add_argument("--model-dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--compile-variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--compile-shape", default="minilm", choices=list(SHAPES) + ["t5-small"])
    p.add_argument("--compile-length", type=int, default=128)
    p.add_argument("--compile-batch", type=int, default=8)
    p.add_argument("--compile-fallback-random", action="store_true",
                   help="compile section: also time each training step compiled with inductor's fallback_random=True "
                        "(dropout masks from aten's RNG, as eager) in a round-robin of its own")
    p.add_argument("--eager-max", type=int, default=2048, help="skip stock eager above this length")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-repeats", type=int, default=9,
                   help="rounds of the model section at l <= 512: its steps vary by +-20 %% round to round on this "
                        "VM (fresh page-faulted gradient buffers every step), so the median needs more rounds")
    p.add_argument("--batch-divisor", type=int, default=1, help="divide the model-section batch sizes")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-small-long", dest="small_long", action="store_false")
    p.add_argument("--no-memory-2048", dest="memory_2048", action="store_false")
    p.add_argument("--quick", action="store_true", help="smoke run: short lengths, few variants, < 1 min")
    p.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.dtypes, args.repeats, args.batch_divisor = [128, 512], ["fp32"], 2, 8
        args.model_repeats = 2
        args.variants = ["random", "factorized_random", "dense", "random+vanilla"]
        args.shapes, args.model_lengths, args.model_variants = ["minilm"], [128], ["random"]
        args.model_dtypes, args.compile_variants = ["fp32"], []
        args.sections = [s for s in args.sections if s != "compile"]
        args.small_long = args.memory_2048 = False

    meta = dict(
        command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        allocator=dict(PYTORCH_CPU_ALLOCATOR=os.environ.get("PYTORCH_CPU_ALLOCATOR", "default (glibc malloc)"),
                       MALLOC_ARENA_MAX=os.environ.get("MALLOC_ARENA_MAX"),
                       MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                       LD_PRELOAD=os.environ.get("LD_PRELOAD")),
        sdpa_kernels=sdpa_kernels(),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
    meta["synthesizer_routes"] = {v: route_kernels(v) for v in args.variants}
    print(json.dumps(meta, indent=1), flush=True)
    results = []
    out = Path(args.out)

    def save():  # after every section, so that a cut-off run still leaves its numbers
        add_ratios(results)
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
        if any(r["section"] == "layer" for r in results):
            plot(results, out.with_suffix(".png"))

    for section, run in (("layer", run_layer), ("model", run_model), ("compile", run_compile)):
        if section in args.sections:
            run(args, results)
            save()
    print_table(results)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
