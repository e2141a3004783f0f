"""Peak memory of one training step (fwd + bwd + AdamW), one fresh subprocess per implementation.

    python benchmarks/bench_memory.py --shape minilm --length 2048 --batch 1

Method: the child builds the model and inputs, records its RSS (psutil), runs ONE training step and reports
`ru_maxrss` (the kernel's peak RSS of the process) minus that baseline. Fresh processes avoid glibc's heap reuse
hiding allocations (the in-process RSS sampler in bench_attention.py reads ~0 MB for anything below the 32 MB
mmap threshold). The step includes one-off allocations that are the same for every implementation (gradients,
AdamW state, ~3x the parameter bytes) plus anything implementation-specific (fixed random's softmax cache,
random's R gradient and AdamW state).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, resource, json
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import psutil, torch
import bench_attention as b
torch.manual_seed(0)
impl, _, option = {impl!r}.partition(":")
model = b.build_model(impl, {length}, {shape!r})
if option == "nocache":  # fixed random without its softmax(R) cache (cache_input_independent=False)
    for m in model.modules():
        if hasattr(m, "cache_input_independent"):
            m.cache_input_independent = False
ids = torch.randint(0, 30522, ({batch}, {length}))
train, _ = b.model_fns(model, ids, "fp32")
base = psutil.Process().memory_info().rss
train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(p.numel() * p.element_size() for p in model.parameters())
buffers = sum(x.numel() * x.element_size() for x in model.buffers())
print(json.dumps(dict(peak_above_build_mb=(peak - base) / 2**20, param_mb=params / 2**20, buffer_mb=buffers / 2**20)))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="minilm")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--impls", nargs="+",
                   default=["sdpa", "fixed_random", "fixed_random:nocache", "factorized_random", "random"])
    p.add_argument("--out", default=str(Path(__file__).parent / "memory.json"))
    args = p.parse_args()
    root, bench = str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)
    rows = []
    for impl in args.impls:
        code = CHILD.format(root=root, bench=bench, impl=impl, length=args.length, shape=args.shape, batch=args.batch)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [l for l in res.stdout.splitlines() if l.startswith("{")]
        if not line:
            print(impl, "failed:", res.stderr[-2000:])
            continue
        row = dict(impl=impl, shape=args.shape, length=args.length, batch=args.batch, **json.loads(line[-1]))
        rows.append(row)
        print(f"{impl:20s} peak above post-build RSS {row['peak_above_build_mb']:8.0f} MB  "
              f"(params {row['param_mb']:.0f} MB, buffers {row['buffer_mb']:.0f} MB)", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
