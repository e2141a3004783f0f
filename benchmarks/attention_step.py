"""The attention-dominated training step of issue 25 item 7: a 1-layer BERT masked-LM (hidden 768, 12 heads, FFN 64),
length 512, batch 4, forward + backward, a synthesizer variant against the same class with a vanilla layer under
attn_implementation="sdpa". Rounds interleave the two models; the ratio of the medians is printed (>1: the variant is
faster). The machine is shared: compare ratios from one run, not times across runs.

    PYTHONPATH=. python benchmarks/attention_step.py --variant factorized_dense --rounds 7
"""

import argparse
import statistics
import time

import torch

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerForMaskedLM


def model_of(variant: str, length: int):
    config = BertSynthesizerConfig(
        vocab_size=1000, hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
        max_position_embeddings=length, synthesizer_variant=variant, synthesizer_length=length,
    )
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    return BertSynthesizerForMaskedLM(config).train()


def step_seconds(model, ids) -> float:
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="factorized_dense")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    ids = torch.randint(5, 1000, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    models = {"sdpa": model_of("vanilla", args.length), args.variant: model_of(args.variant, args.length)}
    times = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        step_seconds(model, ids)
    for _ in range(args.rounds):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            times[name].append(step_seconds(model, ids))
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    rounds = [s / v for s, v in zip(times["sdpa"], times[args.variant])]
    print(f"{args.variant}: {medians[args.variant]:.1f} ms, sdpa {medians['sdpa']:.1f} ms, "
          f"speed vs sdpa {medians['sdpa'] / medians[args.variant]:.2f}x (per round {min(rounds):.2f}-{max(rounds):.2f}, "
          f"{args.rounds} rounds, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
