"""Throughput and adapter-switch latency of ``tunekit serve`` (the OpenAI-compatible server).

Starts the server in this process on 127.0.0.1 over a base and 4 random LoRA adapters (made
here, no training), then drives it with the official ``openai`` client:

- requests/s: N requests from C concurrent clients, round-robin over the adapters, with all
  adapters in memory (``max_loaded=4``) and with LRU churn (``max_loaded=2``);
- switch latency: sequential requests to one adapter vs alternating between two loaded ones
  (``set_adapter``), and alternating with ``max_loaded=1`` (evict + load from the local cache).

    python benchmarks/serve_load.py                      # the tests' tiny model (run the tests once)
    python benchmarks/serve_load.py --base PATH --requests 200 --concurrency 8 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_adapters(base: Path, out: Path, n: int = 4) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                init_lora_weights=False))
        folder = out / f"adapter-{i}"
        peft.save_pretrained(folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(base)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        names.append(str(folder))
    return names


class Server:
    def __init__(self, base: str, adapters: list[str], max_loaded: int | None):
        import socket

        import uvicorn

        from tunekit.serve import AdapterPool
        from tunekit.server import create_app

        self.pool = AdapterPool(base, max_loaded=max_loaded, device="cpu")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(create_app(self.pool, adapters), host="127.0.0.1",
                                                     port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(timeout=30)


def client(url: str):
    import openai

    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def ask(c, model: str, max_tokens: int) -> float:
    t0 = time.perf_counter()
    c.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 3 plus 3?"}],
                              max_tokens=max_tokens, temperature=0)
    return time.perf_counter() - t0


def throughput(base, adapters, max_loaded, requests, concurrency, max_tokens) -> dict:
    with Server(base, adapters, max_loaded) as server:
        c = client(server.url)
        for a in adapters:  # warm up: pulls and first loads are not what we measure
            ask(c, a, max_tokens)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            latencies = list(ex.map(lambda i: ask(c, adapters[i % len(adapters)], max_tokens), range(requests)))
        wall = time.perf_counter() - t0
    return {"max_loaded": max_loaded, "requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
            "requests_per_s": round(requests / wall, 1), "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * sorted(latencies)[int(0.95 * len(latencies)) - 1], 1)}


def switch_latency(base, adapters, rounds, max_tokens) -> dict:
    def median_ms(xs):
        return round(1000 * statistics.median(xs), 2)

    with Server(base, adapters[:2], None) as server:
        c = client(server.url)
        for a in adapters[:2]:
            ask(c, a, max_tokens)
        same = [ask(c, adapters[0], max_tokens) for _ in range(rounds)]
        alternating = [ask(c, adapters[i % 2], max_tokens) for i in range(rounds)]
    with Server(base, adapters[:2], 1) as server:
        c = client(server.url)
        for a in adapters[:2]:
            ask(c, a, max_tokens)
        cold = [ask(c, adapters[i % 2], max_tokens) for i in range(rounds)]
    return {"same_adapter_ms": median_ms(same), "switch_loaded_ms": median_ms(alternating),
            "switch_evicted_ms": median_ms(cold),
            "switch_overhead_loaded_ms": round(median_ms(alternating) - median_ms(same), 2),
            "switch_overhead_evicted_ms": round(median_ms(cold) - median_ms(same), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(REPO / ".cache" / "test-home" / "tiny-llama"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    base = Path(args.base)
    if not (base / "config.json").exists():
        raise SystemExit(f"{base} is not a model folder; run the tests once (they build the tiny model) or pass --base")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(base, Path(tmp))
        results = {
            "base": base.name, "torch_threads": torch.get_num_threads(),
            "throughput": [throughput(str(base), adapters, m, args.requests, args.concurrency, args.max_tokens)
                           for m in (4, 2)],
            "switch": switch_latency(str(base), adapters, args.rounds, args.max_tokens),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
