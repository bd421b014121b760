"""tunekit's LoRA step in eager mode against the same step with ``torch.compile``d regions.

Both models are the embedded SmolLM2-135M with tunekit's default LoRA and fast path, trained on
the same padding-free 4-row batches of the order-extraction task, steps alternating between
the two so that the machine's drift hits both alike. ``--regions`` picks what is compiled
(``dynamic=True``, one call per decoder layer, so the layers share one compiled graph):
``layers`` each decoder layer whole, ``mlp`` its MLP and both RMSNorms, ``norms`` the RMSNorms
only. The first compiled step includes compiling; by default inductor's cache is a fresh
folder, so that time is a cold start's (``--warm-cache`` keeps the user's cache).

    python benchmarks/compile_step.py [--regions layers] [--steps 8] [--no-dropout] [--warm-cache]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", choices=("layers", "mlp", "norms"), default="layers")
    p.add_argument("--steps", type=int, default=8, help="measured steps per model")
    p.add_argument("--no-dropout", action="store_true",
                   help="LoRA dropout off in both models (its mask cache is a graph break per adapter)")
    p.add_argument("--warm-cache", action="store_true", help="reuse inductor's cache instead of a fresh one")
    args = p.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="tunekit-inductor-")

    import torch

    from lora_step import adamw, lora_model, task, update
    from tunekit import fastpath

    torch._dynamo.config.cache_size_limit = 64  # 30 layers' guards must not fall back to eager
    encoded, collate = task()
    paths = {}
    for name in ("eager", "compiled"):
        model = lora_model(fast=True)
        if args.no_dropout:
            for m in model.modules():
                if isinstance(m, fastpath.SharedDropout):
                    m.p = 0.0
        if name == "compiled":
            for layer in model.base_model.model.model.layers:
                norms = [layer.input_layernorm, layer.post_attention_layernorm]
                regions = {"layers": [layer], "mlp": [layer.mlp, *norms], "norms": norms}[args.regions]
                for region in regions:
                    region.compile(dynamic=True)
        paths[name] = (model, adamw(model))

    def step(name: str, i: int) -> tuple[float, float]:
        model, optimizer = paths[name]
        return update(model, optimizer, [collate(encoded[(i * 4) % (len(encoded) - 4):][:4])])

    first = {}
    for name in paths:  # the first step compiles; two more settle recompiles for dynamic shapes
        first[name], loss = step(name, 0)
        print(f"{name:8s} first step {first[name]:6.1f} s (loss {loss:.4f})", flush=True)
        for i in (1, 2):
            step(name, i)
    times = {name: [] for name in paths}
    for i in range(3, args.steps + 3):
        for name in paths:
            times[name].append(step(name, i)[0])
    eager, compiled = (statistics.median(times[n]) for n in paths)
    print(f"{args.steps} steps each, alternating, regions={args.regions}, dropout {'off' if args.no_dropout else 'on'}:")
    print(f"  eager    median {eager:.3f} s/step")
    print(f"  compiled median {compiled:.3f} s/step (first step {first['compiled']:.0f} s with compiling)")
    print(f"eager over compiled: {eager / compiled:.2f}x")


if __name__ == "__main__":
    main()
