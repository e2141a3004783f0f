"""Inductor's CPU boolean stores, and why dense's activation is `synthesizer_math.relu` (issue 18).

    OMP_NUM_THREADS=1 python benchmarks/inductor_boolean_store.py

Times, eager against `torch.compile` (inductor) on this machine, for 8 x 128 x 384 fp32 (one MiniLM activation at
l = 128, b = 8), medians of 7 rounds of 50 calls, CPU process time in ms:
  a > 0                         a boolean tensor written by the kernel
  F.relu(a) + b, fwd+bwd        aten's ReLU: inductor saves the boolean mask `a <= 0` for the backward
  relu(a) + b, fwd+bwd          synthesizer_math.relu: the backward reads the saved output, no boolean is saved
  F.dropout(a, 0.1), fwd+bwd    for comparison: every model's dropout (inductor draws its own random numbers)
If a later torch writes booleans as fast as eager, the first two rows say so, and `relu` can become `F.relu` again.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from hf_synthesizer.modeling.synthesizer_math import relu  # noqa: E402


def cpu_ms(fn, rounds=7, calls=50):
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - start) / calls * 1e3)
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    a = torch.randn(8, 128, 384, requires_grad=True)
    b = torch.randn(8, 128, 384, requires_grad=True)
    grad = torch.randn(8, 128, 384)
    cases = {
        "a > 0": (lambda: a.detach() > 0, False),
        "F.relu(a) + b, fwd+bwd": (lambda: F.relu(a) + b, True),
        "relu(a) + b, fwd+bwd": (lambda: relu(a) + b, True),
        "F.dropout(a, 0.1), fwd+bwd": (lambda: F.dropout(a, 0.1) + b, True),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU ms per call")
    print(f"{'case':30s} {'eager':>8s} {'compiled':>9s}")
    for name, (fn, backward) in cases.items():
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True)

        def step(f):
            return (lambda: f().backward(grad)) if backward else f

        print(f"{name:30s} {cpu_ms(step(fn)):8.2f} {cpu_ms(step(compiled)):9.2f}")


if __name__ == "__main__":
    main()
