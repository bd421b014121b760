"""One LoRA training step, PEFT's reference path vs tunekit's fast path, side by side.

Both models are the embedded SmolLM2-135M with tunekit's default LoRA (r=16, alpha=32, dropout
0.05, all linear layers), fp32, the same padding-free 4-row batches of the order-extraction task
and the trained-positions loss. "reference" is PEFT's own LoRA forward and dropout, SDPA with the
block-diagonal mask and foreach AdamW; "tunekit" adds :mod:`tunekit.fastpath` (fused LoRA forward,
shared float-mask dropout, attention within rows) and fused AdamW, as the Trainer does. Steps
alternate between the two so that the machine's load affects both alike.

    python benchmarks/step_profile.py [--steps 8] [--profile]
"""

from __future__ import annotations

import argparse
import statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="measured steps per path")
    p.add_argument("--rows", type=int, default=4, help="rows per step")
    p.add_argument("--profile", action="store_true", help="print the torch profiler's top operations per path")
    args = p.parse_args()

    from lora_step import adamw, lora_model, task, update

    encoded, collate = task()
    paths = {}
    for name in ("reference", "tunekit"):
        model = lora_model(fast=name == "tunekit")
        paths[name] = (model, adamw(model, fused=name == "tunekit"))

    def step(name: str, i: int) -> tuple[float, int]:
        model, optimizer = paths[name]
        chunk = encoded[i * args.rows:(i + 1) * args.rows]
        seconds, _ = update(model, optimizer, [collate(chunk)], fast=name == "tunekit")
        return seconds, sum(len(r["input_ids"]) for r in chunk)

    for name in paths:  # warm-up: first-call allocations and kernel choices
        step(name, 0)
    times = {name: [] for name in paths}
    tokens = 0
    for i in range(1, args.steps + 1):
        for name in paths:
            dt, n = step(name, i)
            times[name].append(dt)
        tokens += n
    print(f"{args.steps} steps of {args.rows} rows ({tokens / args.steps:.0f} tokens/step), alternating:")
    for name, ts in times.items():
        print(f"  {name:9s} median {statistics.median(ts):.3f} s/step   {tokens / sum(ts):6.1f} tokens/s")
    ratio = statistics.median(times["reference"]) / statistics.median(times["tunekit"])
    print(f"speedup (median step): {ratio:.2f}x")

    if args.profile:
        from torch.profiler import profile

        for name in paths:
            with profile() as prof:
                for i in range(1, 3):
                    step(name, i)
            print(f"\n{name}: self CPU time over 2 steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
