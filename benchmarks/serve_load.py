"""Many adapters at once, measured over HTTP (issue 20): ``tunekit serve``'s one-at-a-time path
(``AdapterPool(batching=False)``: each request takes the model for its whole generation) against
its batching scheduler (the default: concurrent requests share each forward), side by side in one
run, on the embedded SmolLM2-135M-Instruct.

Each path runs in its own server process (the real app, uvicorn on 127.0.0.1), driven by the
official ``openai`` client from this process; the two take turns, cell by cell. For each number of adapters (1, 4, 32) and
concurrent clients (1, 4, 16): requests/s, generated tokens/s, p50/p95 latency; per path the
server process's peak memory (``VmHWM``); then the time to first token of a streamed request for
a cold adapter (never loaded) while 4 other clients are being served.

    python benchmarks/serve_load.py            # the full grid
    python benchmarks/serve_load.py --quick    # 1 and 4 adapters, 1 and 16 clients, short answers

The adapters are random LoRA weights (r=8 on q_proj/v_proj) written by PEFT into a temporary
folder: what costs time is their shape, not what they learned. Requests are greedy, round-robin
over the adapters, with prompts of different lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["Write a haiku about the sea.", "What is the capital of France?",
           "Explain in two sentences why the sky is blue.", "List three fruits.",
           "Give me a short tip for learning to code."]


# -- the server process ----------------------------------------------------------------------------
def make_adapters(n: int, out: Path) -> None:
    """``n`` adapter folders ``a0…`` for the embedded base, random LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    import tunekit

    pool = tunekit.AdapterPool(None, device="cpu")
    peft = get_peft_model(pool.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    for i in range(n):
        torch.manual_seed(i)
        for name, p in peft.named_parameters():
            if "lora_" in name:
                with torch.no_grad():
                    p.normal_(0, 0.02)
        peft.peft_config["default"].base_model_name_or_path = pool.base
        peft.save_pretrained(out / f"a{i}")


def serve(folder: Path, batching: bool, port_file: Path, threads: int | None) -> None:
    """Serve every adapter in ``folder`` under its folder name until killed."""
    import socket

    import torch
    import uvicorn

    import tunekit
    from tunekit.server import create_app

    if threads:
        torch.set_num_threads(threads)
    pool = tunekit.AdapterPool(None, device="cpu", batching=batching, max_batch=16)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    app = create_app(pool, [], lora_modules={n: str(folder / n) for n in names})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=lambda: (time.sleep(0.5), port_file.write_text(str(port))), daemon=True).start()
    server.run()


class Server:
    """One path's server process."""

    def __init__(self, folder: Path, batching: bool, tmp: Path, threads: int | None):
        self.port_file = tmp / f"port-{batching}"
        self.port_file.unlink(missing_ok=True)
        # OpenMP's threads sleep rather than spin while they wait: on a machine shared with other
        # work, spinning threads of one process starve the one that computes (measured: 16
        # batched requests over HTTP took 146 s spinning, 7 s passive, on the 2 shared cores).
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), "--port-file",
                                      str(self.port_file), *([] if batching else ["--no-batching"]),
                                      *(["--threads", str(threads)] if threads else [])], env=env)
        deadline = time.monotonic() + 300
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server process did not start")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port_file.read_text()}/v1"

    def peak_mb(self) -> float:
        """The server process's peak resident memory (Linux ``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the clients -----------------------------------------------------------------------------------
def client(url: str):
    import openai

    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)


def ask(c, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    reply = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                      max_tokens=max_tokens, temperature=0)
    return time.perf_counter() - t0, reply.usage.completion_tokens


def load(url: str, names: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    c = client(url)
    for name in names:  # warm: first loads are measured apart (cold TTFT)
        ask(c, name, PROMPTS[0], 2)
    jobs = [(names[i % len(names)], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(lambda job: ask(c, job[0], job[1], max_tokens), jobs))
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results)
    return {"rps": requests / wall, "tps": sum(r[1] for r in results) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def cold_ttft(url: str, warm: list[str], cold: str, max_tokens: int) -> float:
    """Seconds to the first content of a streamed request for a never-loaded adapter, while 4
    clients keep asking the warm ones."""
    c = client(url)
    stop = threading.Event()

    def busy(i: int) -> None:
        while not stop.is_set():
            ask(c, warm[i % len(warm)], PROMPTS[i % len(PROMPTS)], max_tokens)

    threads = [threading.Thread(target=busy, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    ttft = None
    for chunk in c.chat.completions.create(model=cold, messages=[{"role": "user", "content": PROMPTS[1]}],
                                           max_tokens=max_tokens, temperature=0, stream=True):
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return ttft if ttft is not None else float("nan")


def requests_for(clients: int, quick: bool) -> int:
    """Requests per cell: every client busy for a few requests (quick: about one each)."""
    return max(4, clients) if quick else max(8, clients * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid with short answers (shared CPUs)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 32; quick: 8)")
    parser.add_argument("--adapters", type=int, nargs="+", help="adapter counts to run (default 1 4 32)")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrent clients to run (default 1 4 16)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--threads", type=int, help="torch threads per server (default: torch's own; 1 keeps "
                                                    "a shared machine's other load from stalling its barriers)")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--port-file", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--no-batching", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(Path(args.serve), not args.no_batching, Path(args.port_file), args.threads)
    adapter_counts, client_counts = ((1, 4), (1, 16)) if args.quick else ((1, 4, 32), (1, 4, 16))
    adapter_counts = tuple(args.adapters or adapter_counts)
    client_counts = tuple(args.clients or client_counts)
    max_tokens = args.max_tokens or (8 if args.quick else 32)
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "adapters"
        make_adapters(max(adapter_counts) + 1, folder)  # the last one stays cold
        cold = f"a{max(adapter_counts)}"
        # Both servers stay up and take turns cell by cell, so both paths see the same minutes of
        # a machine whose speed drifts (it is shared).
        servers = {}
        try:
            for batching in (False, True):
                servers["batching" if batching else "one-at-a-time"] = Server(folder, batching, tmp, args.threads)
            for n in adapter_counts:
                names = [f"a{i}" for i in range(n)]
                for clients in client_counts:
                    for path, server in servers.items():
                        r = load(server.url, names, clients, requests_for(clients, args.quick), max_tokens)
                        rows.append({"adapters": n, "clients": clients, "path": path, **r})
                        print(f"{n:>3} adapters {clients:>3} clients {path:>14}: {r['rps']:6.2f} req/s "
                              f"{r['tps']:7.1f} tok/s  p50 {r['p50']:6.2f} s  p95 {r['p95']:6.2f} s", flush=True)
            for path, server in servers.items():
                ttft = cold_ttft(server.url, [f"a{i}" for i in range(min(4, max(adapter_counts)))], cold, max_tokens)
                summary[path] = {"peak_mb": server.peak_mb(), "cold_ttft_s": ttft}
                print(f"{path}: peak RSS {summary[path]['peak_mb']:.0f} MB, cold-adapter TTFT {ttft:.2f} s", flush=True)
        finally:
            for server in servers.values():
                server.close()
    print()
    print("| adapters | clients | one-at-a-time req/s | batching req/s | speed-up | tok/s (one / batch) "
          "| p50 s (one / batch) | p95 s (one / batch) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in adapter_counts:
        for clients in client_counts:
            a, b = (next(r for r in rows if (r["adapters"], r["clients"], r["path"]) == (n, clients, p))
                    for p in ("one-at-a-time", "batching"))
            print(f"| {n} | {clients} | {a['rps']:.2f} | {b['rps']:.2f} | {b['rps'] / a['rps']:.1f}x "
                  f"| {a['tps']:.0f} / {b['tps']:.0f} | {a['p50']:.2f} / {b['p50']:.2f} "
                  f"| {a['p95']:.2f} / {b['p95']:.2f} |")
    for path, s in summary.items():
        print(f"{path}: server peak RSS {s['peak_mb']:.0f} MB; cold adapter TTFT while 4 clients run "
              f"{s['cold_ttft_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "cpus": os.cpu_count(),
                                               "threads": args.threads, "max_tokens": max_tokens}, indent=2))


if __name__ == "__main__":
    main()
