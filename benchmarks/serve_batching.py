"""Many adapters at once, measured (issue 20): the one-at-a-time path (``AdapterPool.chat``,
requests taking turns on the model) against the batching scheduler (``AdapterPool.submit``),
side by side in one run, on the embedded SmolLM2-135M-Instruct.

For each number of adapters (1, 4, 32) and concurrent clients (1, 4, 16): requests/s, generated
tokens/s, p50/p95 latency, the process's peak memory; then the time to first token for a cold
adapter while other requests are being served. It calls the pool directly (no HTTP), so what is
measured is the engine.

    python benchmarks/serve_batching.py            # the full grid
    python benchmarks/serve_batching.py --quick    # 1 and 4 adapters, 1 and 16 clients, short answers

The adapters are random LoRA weights (r=8 on q_proj/v_proj) written by PEFT into a temporary
folder: what costs time is their shape, not what they learned.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = ["Write a haiku about the sea.", "What is the capital of France?",
           "Explain in two sentences why the sky is blue.", "List three fruits.",
           "Give me a short tip for learning to code."]


def make_adapters(base_model, base_name: str, n: int, out: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    folders = []
    peft = get_peft_model(base_model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    for i in range(n):
        torch.manual_seed(i)
        for name, p in peft.named_parameters():
            if "lora_" in name:
                with torch.no_grad():
                    p.normal_(0, 0.02)
        folder = out / f"adapter-{i}"
        peft.peft_config["default"].base_model_name_or_path = base_name
        peft.save_pretrained(folder)
        folders.append(folder)
    peft.unload()
    return folders


def run(pool, names: list[str | None], clients: int, requests: int, max_tokens: int, batched: bool) -> dict:
    latencies, tokens = [], []
    lock = threading.Lock()
    jobs = iter(range(requests))
    rng = random.Random(0)
    plan = [(PROMPTS[i % len(PROMPTS)], rng.choice(names)) for i in range(requests)]

    def client():
        while True:
            with lock:
                i = next(jobs, None)
            if i is None:
                return
            prompt, adapter = plan[i]
            t0 = time.perf_counter()
            if batched:
                done = pool.submit(prompt, adapter=adapter, max_tokens=max_tokens).result()
                n = done.completion_tokens
            else:
                text = pool.chat(prompt, adapter=adapter, max_new_tokens=max_tokens)
                n = len(pool.tokenizer_for(adapter)(text)["input_ids"]) + 1
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"rps": requests / wall, "tps": sum(tokens) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cold_ttft(pool, warm: list[str], cold_folder: Path, max_tokens: int) -> float:
    """Time to the first piece for an adapter never loaded, while 4 requests for warm ones run."""
    busy = [pool.submit(PROMPTS[i % 5], adapter=warm[i % len(warm)], max_tokens=max_tokens * 4) for i in range(4)]
    for h in busy:
        next(iter(h), None)
    pool.register(str(cold_folder), name="cold")
    t0 = time.perf_counter()
    handle = pool.submit(PROMPTS[0], adapter="cold", max_tokens=max_tokens)
    next(iter(handle), None)
    ttft = time.perf_counter() - t0
    for h in busy:
        h.result()
    handle.result()
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid with short answers (shared CPUs)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 32; quick: 12)")
    parser.add_argument("--adapters", type=int, nargs="+", help="adapter counts to run (default 1 4 32)")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrent clients to run (default 1 4 16)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    import torch

    import tunekit

    if args.threads:
        torch.set_num_threads(args.threads)
    adapter_counts, client_counts = ((1, 4), (1, 16)) if args.quick else ((1, 4, 32), (1, 4, 16))
    adapter_counts = tuple(args.adapters or adapter_counts)
    client_counts = tuple(args.clients or client_counts)
    max_tokens = args.max_tokens or (12 if args.quick else 32)
    pool = tunekit.AdapterPool(None, device="cpu", max_batch=16)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(pool.model, pool.base, max(adapter_counts) + 1, Path(tmp))
        for i, folder in enumerate(folders[:-1]):
            pool.add(str(folder), name=f"a{i}")
        print(f"{'adapters':>8} {'clients':>7} {'path':>10} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} "
              f"{'peak MB':>8}")
        for n in adapter_counts:
            names = [f"a{i}" for i in range(n)]
            for clients in client_counts:
                requests = max(4, clients * 2)
                for batched in (False, True):
                    r = run(pool, names, clients, requests, max_tokens, batched)
                    print(f"{n:>8} {clients:>7} {'batched' if batched else 'one-by-one':>10} {r['rps']:>7.2f} "
                          f"{r['tps']:>7.1f} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['peak_mb']:>8.0f}", flush=True)
        ttft = cold_ttft(pool, [f"a{i}" for i in range(min(4, max(adapter_counts)))], folders[-1], max_tokens)
        print(f"time to first token, cold adapter while 4 requests run: {ttft:.2f} s")
    pool.close()


if __name__ == "__main__":
    main()
