"""tunekit's defaults against the plain TRL + PEFT recipe, side by side in one invocation.

The plain recipe is what a user writes without tunekit (seed-001): TRL ``SFTTrainer`` + PEFT
LoRA r=32, alpha=64 on q_proj/v_proj, dropout 0.05, lr 2e-4, batch 4, 2 epochs, fp32 on CPU
(``bf16=False``; bf16 is ~100x slower on this CPU), every other TRL default. tunekit runs
``tunekit.finetune(..., method="lora")`` with its defaults, and ``method="qlora"`` for the memory
comparison. Each run is a separate process (peak RSS is a per-process high-water mark).

The plain recipe and tunekit's LoRA run take turns on the CPU (``--slice`` seconds each, at step
boundaries) rather than running one after the other: this machine's speed drifts by ±25% over
minutes with other tenants' load, so two runs minutes apart compare the machine as much as the
code. Taking turns, both see the same minutes. Each run's time is the time it held the CPU
(evaluations inside training included); loading before and generation after are not timed.
``--sequential`` runs them one after the other instead.

The task: extract an order from a sentence as strict JSON (``examples/data/extract_json*.jsonl``);
the held-out rows use sentence phrasings and names never seen in training. Metric: exact match
of the greedy answer with the expected JSON.

Usage::

    python benchmarks/vs_trl.py                      # the full benchmark (20-40 min on 2 cores)
    python benchmarks/vs_trl.py --rows 48 --epochs 1 --heldout 8   # a quick look

It prints a table and the ratios, writes ``benchmarks/results/vs_trl-<time>.json`` and appends a
row to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
RUNNERS = ("plain_trl", "tunekit_lora", "tunekit_qlora")


def _rows(name: str, n: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def _peak_rss() -> int:
    from tunekit.train import peak_rss_bytes

    return peak_rss_bytes()


def _exact_match(answers: list[str], rows: list[dict]) -> float:
    hits = 0
    for answer, row in zip(answers, rows):
        expected = json.loads(row["messages"][-1]["content"])
        try:
            hits += json.loads(answer.strip()) == expected
        except json.JSONDecodeError:
            pass
    return hits / len(rows)


class Turns:
    """The child's side of turn-taking with the other timed run (see the module doc).

    The parent grants the CPU with ``G``; the child answers ``Y`` (my slice is over), ``D``
    (training done) or, before training, ``R`` (ready). ``active`` is the time between each
    grant and the answer: the time this run held the CPU.
    """

    def __init__(self, spec: str | None, slice_seconds: float):
        self.fds = tuple(int(fd) for fd in spec.split(",")) if spec else None
        self.slice = slice_seconds
        self.active = 0.0
        self.granted = None
        self.slices = []  # (start, end) on the system-wide monotonic clock, to check the turns

    def _send_and_wait(self, message: bytes) -> None:
        os.write(self.fds[1], message)
        if not os.read(self.fds[0], 1):
            raise SystemExit("the benchmark's parent went away")

    def ready(self) -> None:
        if self.fds:
            self._send_and_wait(b"R")
        self.granted = time.monotonic()

    def _end_slice(self) -> None:
        now = time.monotonic()
        self.active += now - self.granted
        self.slices.append((self.granted, now))

    def maybe_yield(self) -> None:
        if self.fds and time.monotonic() - self.granted >= self.slice:
            self._end_slice()
            self._send_and_wait(b"Y")
            self.granted = time.monotonic()

    def done(self) -> None:
        self._end_slice()
        if self.fds:
            self._send_and_wait(b"D")  # the answer comes once the other run is done training too

    def callback(self):
        from transformers import TrainerCallback

        turns = self

        class TakeTurns(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                turns.ready()

            def on_step_end(self, args, state, control, **kwargs):
                turns.maybe_yield()

            def on_train_end(self, args, state, control, **kwargs):
                turns.done()

        return TakeTurns()


def _start(cmd: list[str], log, turns: bool) -> tuple:
    """``(process, read_fd, write_fd)``; the pipes (None without ``turns``) carry the turns."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not turns:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env), None, None
    to_child, from_parent = os.pipe()  # the parent writes grants, the child reads them
    from_child, to_parent = os.pipe()
    proc = subprocess.Popen(cmd + ["--turns", f"{to_child},{to_parent}"], stdout=log, stderr=subprocess.STDOUT,
                            text=True, pass_fds=(to_child, to_parent), env=env)
    os.close(to_child)
    os.close(to_parent)
    return proc, from_child, from_parent


def take_turns(commands: dict[str, list[str]], logs: dict) -> dict[str, tuple]:
    """The parent's side. Only one run uses the CPU at any time (two processes with two OpenMP
    threads each on two cores spin against each other and crawl): each is started once the one
    before is ready to train; then they take turns, switching at each yield, until every run has
    finished training; then they finish (save, generate the held-out answers) one by one."""
    procs, ready, done = {}, [], set()

    def message(name: str) -> bytes:
        return os.read(procs[name][1], 1) or b"D"  # a run that died counts as done

    for name, cmd in commands.items():
        procs[name] = _start(cmd, logs[name], turns=True)
        (ready.append if message(name) == b"R" else done.add)(name)
    turn = 0
    while len(done) < len(procs):
        name = ready[turn % len(ready)]
        turn += 1
        if name in done:
            continue
        try:
            os.write(procs[name][2], b"G")
        except BrokenPipeError:  # it died: its error is reported when it is collected
            done.add(name)
            continue
        if message(name) == b"D":
            done.add(name)
    for proc, _, write_fd in procs.values():
        try:
            os.write(write_fd, b"G")
        except BrokenPipeError:
            pass
        proc.wait()
    return procs


def add_run_arguments(p: argparse.ArgumentParser, runners: tuple[str, ...], *, rows: str, heldout: str) -> None:
    """The options every side-by-side benchmark takes, and the hidden ones of its child runs."""
    p.add_argument("--rows", type=int, default=None, help=rows)
    p.add_argument("--heldout", type=int, default=None, help=heldout)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--slice", type=float, default=5.0, help="seconds each run holds the CPU per turn")
    p.add_argument("--child", choices=runners, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--turns", help=argparse.SUPPRESS)


def child_command(script: str, name: str, out: str, args: argparse.Namespace) -> list[str]:
    """The command line that runs ``script``'s child ``name`` with the parent's options."""
    cmd = [sys.executable, script, "--child", name, "--out", out, "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--slice", str(args.slice)]
    return cmd + (["--rows", str(args.rows)] if args.rows else []) + \
        (["--heldout", str(args.heldout)] if args.heldout else [])


def report(res: dict, turns: Turns) -> None:
    """A child's last line: its result with tokens/s and the turns it held, for run_children."""
    res["tokens_per_second"] = res["tokens"] / res["wall_seconds"]
    res["slices"] = turns.slices
    print("RESULT " + json.dumps(res))


def run_children(commands: dict[str, list[str]], *, taking_turns: bool) -> dict[str, dict]:
    """Run the child benchmarks, taking turns on the CPU (or one after the other), and return
    each one's ``RESULT`` line; exit with a failed child's output, or when timed turns overlapped."""
    logs = {name: tempfile.TemporaryFile(mode="w+") for name in commands}
    if taking_turns:
        procs = take_turns(commands, logs)
    else:
        procs = {}
        for name, cmd in commands.items():
            procs[name] = _start(cmd, logs[name], turns=False)
            procs[name][0].wait()
    results = {}
    for name, (proc, read_fd, write_fd) in procs.items():
        proc.wait()
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
        logs[name].seek(0)
        output = logs[name].read()
        line = next((l for l in output.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name} failed:\n{output[-6000:]}", file=sys.stderr)
            raise SystemExit(1)
        results[name] = json.loads(line[len("RESULT "):])
    if taking_turns:
        spans = sorted(tuple(x) for r in results.values() for x in r["slices"])
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise SystemExit("the timed runs overlapped: their times are not comparable")
        print(f"  {len(spans)} turns, none overlapping", flush=True)
    return results


def save_record(stem: str, record: dict) -> Path:
    """``benchmarks/results/<stem>-<time>.json``."""
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def _greedy_answers(model, tokenizer, rows: list[dict]) -> list[str]:
    from tunekit.chat import generate

    return [generate(model, tokenizer, row["messages"][:-1], max_new_tokens=64) for row in rows]


def run_plain(args: argparse.Namespace, out: Path, turns: Turns) -> dict:
    """The seed-001 recipe with plain TRL + PEFT."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunekit.models import embedded_model_dir

    base = embedded_model_dir()
    train = _rows("extract_json.jsonl", args.rows)
    heldout = _rows("extract_json_heldout.jsonl", args.heldout)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out), num_train_epochs=args.epochs, per_device_train_batch_size=4,
        learning_rate=2e-4, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10, seed=args.seed, disable_tqdm=True,
    )
    peft = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in train])
    eval_set = Dataset.from_list([{"messages": r["messages"]} for r in heldout])
    # The eval set is only scored after training (TRL's default eval_strategy is "no").
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft, callbacks=[turns.callback()])
    # Real tokens of the training set, as the trainer tokenized it (no padding).
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    trainer.train()
    peak = _peak_rss()  # training's peak, before anything is generated
    trained = trainer.model
    trained.eval()
    # Over every token (the plain recipe trains on whole conversations), so not comparable with
    # tunekit's assistant-only eval loss; exact match is the comparable quality metric.
    eval_loss = trainer.evaluate()["eval_loss"]
    answers = _greedy_answers(trained, tokenizer, heldout)
    return {"wall_seconds": turns.active, "tokens": tokens * args.epochs, "eval_loss": eval_loss,
            "exact_match": _exact_match(answers, heldout), "peak_rss_bytes": peak,
            "sample_answer": answers[0]}


def run_tunekit(args: argparse.Namespace, out: Path, method: str, turns: Turns) -> dict:
    import tunekit
    from tunekit import trainer

    # finetune() takes no callbacks: hand the turn-taking one to the Trainer it builds.
    class TakingTurns(trainer.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(turns.callback())

    trainer.Trainer = TakingTurns

    train = _rows("extract_json.jsonl", args.rows)
    heldout = _rows("extract_json_heldout.jsonl", args.heldout)
    result = tunekit.finetune(train, method=method, eval_data=heldout, output_dir=str(out / "run"),
                              epochs=args.epochs, seed=args.seed, progress=False)
    m = result.metrics
    # Training's peak (recorded when training ended), not the reload for generation below.
    peak = m["peak_memory_bytes"]
    model, tokenizer = result._model()
    answers = _greedy_answers(model, tokenizer, heldout)
    return {"wall_seconds": turns.active, "tokens": m["tokens_per_epoch"] * m["epochs"],
            "eval_loss": m["eval_loss_best"], "exact_match": _exact_match(answers, heldout),
            "peak_rss_bytes": peak, "sample_answer": answers[0]}


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    turns = Turns(args.turns, args.slice)
    if args.child == "plain_trl":
        res = run_plain(args, out, turns)
    else:
        res = run_tunekit(args, out, args.child.split("_", 1)[1], turns)
    report(res, turns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p, RUNNERS, rows="training rows (default: all 200)", heldout="held-out rows (default: all 40)")
    p.add_argument("--only", choices=RUNNERS, action="append", help="run only these")
    p.add_argument("--no-docs", action="store_true", help="do not append to docs/benchmarks.md")
    p.add_argument("--sequential", action="store_true", help="run one after the other instead of taking turns")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    names = args.only or list(RUNNERS)
    timed = [] if args.sequential else [n for n in ("plain_trl", "tunekit_lora") if n in names]
    if len(timed) < 2:
        timed = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        def command(name: str) -> list[str]:
            return child_command(__file__, name, f"{tmp}/{name}", args)

        batches = ([timed] if timed else []) + [[n] for n in names if n not in timed]
        for batch in batches:
            print(f"running {' and '.join(batch)}{' taking turns' if len(batch) > 1 else ''} ...", flush=True)
            results.update(run_children({name: command(name) for name in batch}, taking_turns=len(batch) > 1))

    header = f"{'':16s} {'wall s':>8s} {'tokens/s':>9s} {'peak RSS MB':>12s} {'eval loss':>10s} {'exact match':>12s}"
    print(header)
    for name, r in results.items():
        print(f"{name:16s} {r['wall_seconds']:8.1f} {r['tokens_per_second']:9.1f} {r['peak_rss_bytes'] / 2**20:12.0f} "
              f"{r['eval_loss']:10.4f} {r['exact_match']:12.3f}")
    ratios = {}
    if "plain_trl" in results and "tunekit_lora" in results:
        plain, lora = results["plain_trl"], results["tunekit_lora"]
        ratios["speedup_tokens_per_second"] = lora["tokens_per_second"] / plain["tokens_per_second"]
        # The same rows x epochs: how much sooner the user's run is done. The two count different
        # tokens per row (the base's own template adds a default system prompt to every row).
        ratios["speedup_wall_time"] = plain["wall_seconds"] / lora["wall_seconds"]
        ratios["exact_match_delta"] = lora["exact_match"] - plain["exact_match"]
    if "tunekit_lora" in results and "tunekit_qlora" in results:
        ratios["qlora_over_lora_peak_rss"] = results["tunekit_qlora"]["peak_rss_bytes"] / results["tunekit_lora"]["peak_rss_bytes"]
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")

    record = {"date": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
              "rows": args.rows or 200, "heldout": args.heldout or 40, "epochs": args.epochs,
              "taking_turns": timed, "slice_seconds": args.slice if timed else None,
              "results": results, "ratios": ratios}
    save_record("vs_trl", record)
    if not args.no_docs and {"plain_trl", "tunekit_lora"} <= results.keys():
        _append_docs(record)
    return 0


def _append_docs(record: dict) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    title = "## Training speed: tunekit defaults vs the plain TRL recipe"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if title not in text:
        text += (f"\n{title}\n\nProduced by `python benchmarks/vs_trl.py` (embedded SmolLM2-135M-Instruct, "
                 "order-extraction task, exact match on held-out phrasings). Tokens/s counts real tokens of the "
                 "training set x epochs over each run's training time (its evaluations included).\n\n"
                 "| date | machine | rows x epochs | plain tok/s | tunekit tok/s | speedup | plain EM | tunekit EM "
                 "| QLoRA/LoRA peak RSS |\n|---|---|---|---|---|---|---|---|---|\n")
    r, q = record["results"], record["ratios"]
    qr = f"{q['qlora_over_lora_peak_rss']:.2f}" if "qlora_over_lora_peak_rss" in q else "—"
    how = ", taking turns" if len(record.get("taking_turns") or []) > 1 else ""
    row = (f"| {record['date'][:16]} | {record['machine']}{how} | {record['rows']} x {record['epochs']:g} "
           f"| {r['plain_trl']['tokens_per_second']:.1f} | {r['tunekit_lora']['tokens_per_second']:.1f} "
           f"| {q['speedup_tokens_per_second']:.2f}x (wall {q['speedup_wall_time']:.2f}x) | {r['plain_trl']['exact_match']:.3f} "
           f"| {r['tunekit_lora']['exact_match']:.3f} | {qr} |\n")
    # Rows go right under the section's table header, newest last.
    lines = text.splitlines(keepends=True)
    idx = max(i for i, l in enumerate(lines) if l.startswith("|") and title in "".join(lines[:i]))
    lines.insert(idx + 1, row)
    doc.write_text("".join(lines))


if __name__ == "__main__":
    sys.exit(main())
