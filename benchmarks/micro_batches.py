"""One accumulated update, its micro-batches run one by one against fewer, larger forwards.

With ``grad_accum`` > 1 tunekit runs an update's ``batch_size x grad_accum`` rows in forwards of
as many rows as ~1024 tokens allow on CPU when they fit (``tunekit.plan.rows_per_forward``):
the update is the same, the matmuls larger. This measures it on the embedded SmolLM2-135M with
tunekit's default LoRA and fast path, 16-row updates of the order-extraction task, taking turns
between 4 forwards of 4 rows, one of 16 and 2 of 8 in one process, so the machine's drift hits
all alike.

    python benchmarks/micro_batches.py [--updates 8]
"""

from __future__ import annotations

import argparse
import statistics

ROWS = 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=8, help="measured updates per way")
    args = p.parse_args()

    from lora_step import adamw, lora_model, task, update
    from tunekit.templates import IGNORE_INDEX

    encoded, collate = task()
    model = lora_model(fast=True)
    optimizer = adamw(model)

    def one_update(i: int, per_forward: int) -> float:
        chunk = encoded[(i * ROWS) % (len(encoded) - ROWS):][:ROWS]
        # As accumulation does: every micro-batch's loss is divided by the update's trained tokens.
        trained = sum(sum(1 for t in r["labels"][1:] if t != IGNORE_INDEX) for r in chunk)
        batches = [collate(chunk[j:j + per_forward]) for j in range(0, ROWS, per_forward)]
        return update(model, optimizer, batches, num_items_in_batch=trained)[0]

    ways = (4, 16, 8)
    for n in ways:  # warm-up: first-call allocations and kernel choices
        one_update(0, n)
    times = {n: [] for n in ways}
    for i in range(1, args.updates + 1):
        for n in ways:
            times[n].append(one_update(i, n))
    print(f"{args.updates} updates of {ROWS} rows each way, taking turns:")
    for n, ts in times.items():
        print(f"  {ROWS // n} forward(s) of {n:2d} rows: median {statistics.median(ts):.3f} s per update")
    for n in (16, 8):
        print(f"{ROWS // 4} x 4 rows over {ROWS // n} x {n}: {statistics.median(times[4]) / statistics.median(times[n]):.2f}x")


if __name__ == "__main__":
    main()
