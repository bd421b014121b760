"""Train the same data with several methods and compare them side by side (``tunekit.compare``).

Each method trains on identical train/eval rows (split once, here, with one seed) and is scored
the same way: trainable parameters, estimated against measured peak memory, wall time, tokens/s,
final train and eval loss, and an optional task metric. The result is a :class:`Comparison`,
written as Markdown, JSON and a PNG chart.

Only the standard library is imported at the top: ``tunekit/__init__.py`` imports this module
eagerly (see the note there), and ``import tunekit`` must stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, ModelError, TemplateError, TrainingError
from .methods import METHODS, REGISTRY
from .record import Metrics

log = logging.getLogger(__name__)

# Options compare() decides itself: one method per run, its own folders, nothing pushed.
OWNED_OPTIONS: tuple[str, ...] = ("method", "output_dir", "resume", "push_to", "push_space", "private")
# Errors that would hit every method alike: stop the comparison instead of recording them.
_USER_ERRORS = (ConfigError, DataError, TemplateError, ModelError)


@dataclass
class MethodResult:
    """One method's row of a comparison.

    Attributes:
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        trainable_params: parameters the optimizer updated.
        total_params: parameters of the trained model (4-bit weights counted at logical size).
        estimated_peak_bytes: :func:`tunekit.estimate` for this method, data and device.
        measured_peak_bytes: the training process's peak: RSS high-water mark on CPU (loading
            included), ``torch.cuda.max_memory_allocated`` on CUDA.
        peak_kind: ``"rss"`` or ``"cuda_max_allocated"``.
        wall_seconds: training time (loading and saving excluded).
        tokens_per_second: training tokens (prompt and reply) per second.
        train_loss: the last logged training loss.
        eval_loss: mean loss of the saved model over the trained tokens of the eval rows (SFT).
        reward_accuracy / reward_margin: DPO/KTO: TRL's reward accuracy and margin on the eval
            rows after training (KTO logs no accuracy).
        metric: mean of the task metric over the eval rows, when a metric was given.
        steps: optimizer updates done.
        output_dir: the method's run folder (a normal tunekit output folder).
        error: why the method failed (then the numbers are None); None when it ran.
    """

    method: str
    trainable_params: int | None = None
    total_params: int | None = None
    estimated_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    peak_kind: str | None = None
    wall_seconds: float | None = None
    tokens_per_second: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    metric: float | None = None
    steps: int | None = None
    output_dir: str | None = None
    error: str | None = None


@dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes:
        base: the base model compared on.
        device: where training ran, with the compute dtype (``"cpu (float32)"``).
        train_rows: training rows every method saw.
        eval_rows: eval rows every method was scored on.
        seed: the seed of the split, initialisation and data order.
        steps: updates per method, or None when each trained for ``epochs``.
        metric_name: the task metric's name, None without one.
        rows: one :class:`MethodResult` per method, in the order asked for.
        output_dir: folder with ``compare.md``, ``compare.json``, ``compare.png``, ``data/``
            (the exact train/eval rows) and one run folder per method.
        objective: ``"sft"``, ``"dpo"`` or ``"kto"``, the same for every method.
    """

    base: str
    device: str
    train_rows: int
    eval_rows: int
    seed: int
    steps: int | None
    metric_name: str | None
    rows: list[MethodResult]
    output_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    objective: str = "sft"

    @property
    def markdown_path(self) -> Path:
        return self.output_dir / "compare.md"

    @property
    def json_path(self) -> Path:
        return self.output_dir / "compare.json"

    @property
    def png_path(self) -> Path:
        return self.output_dir / "compare.png"

    def __getitem__(self, method: str) -> MethodResult:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(method)

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-serialisable dict (what ``compare.json`` holds)."""
        out = dataclasses.asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out

    def caption(self) -> str:
        """One line saying what was compared, for the top of the table."""
        budget = f"{self.steps} updates per method" if self.steps else f"{self.options.get('epochs', 2)} epoch(s) per method"
        what = "" if self.objective == "sft" else f"{self.objective}, "
        return (f"`{self.base}` on {self.device}; {what}{self.train_rows} train / {self.eval_rows} eval rows, "
                f"seed {self.seed}; {budget}, batch {self.options.get('batch_size', 4)} x "
                f"grad. accum. {self.options.get('grad_accum', 4)}.")

    def markdown(self) -> str:
        """The comparison as a Markdown table with a caption and the footnotes it needs."""
        from .units import format_bytes as _fmt_bytes

        preference = self.objective != "sft"
        head = ["method", "trainable params", "peak memory (est.)", "peak memory (measured)", "wall time",
                "tokens/s", "train loss"] + (["reward accuracy", "reward margin"] if preference else ["eval loss"])
        if self.metric_name:
            head.append(self.metric_name)
        lines = [self.caption(), "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in self.rows:
            if r.error:
                lines.append(f"| {r.method} | failed: {r.error} |" + " |" * (len(head) - 2))
                continue
            pct = ""
            if r.trainable_params and r.total_params:
                share = 100 * r.trainable_params / r.total_params
                pct = f" ({share:.0f}%)" if share >= 10 else f" ({share:.2g}%)"
            measured = _fmt_bytes(r.measured_peak_bytes) if r.measured_peak_bytes else "–"
            if r.measured_peak_bytes and r.estimated_peak_bytes:
                measured += f" (est. {r.estimated_peak_bytes / r.measured_peak_bytes - 1:+.0%})"
            cells = [
                r.method,
                f"{r.trainable_params:,}{pct}" if r.trainable_params is not None else "–",
                _fmt_bytes(r.estimated_peak_bytes) if r.estimated_peak_bytes else "–",
                measured,
                f"{r.wall_seconds:.0f} s" if r.wall_seconds is not None else "–",
                f"{r.tokens_per_second:.0f}" if r.tokens_per_second is not None else "–",
                _num(r.train_loss),
            ] + ([_num(r.reward_accuracy), _num(r.reward_margin)] if preference else [_num(r.eval_loss)])
            if self.metric_name:
                cells.append(_num(r.metric))
            lines.append("| " + " | ".join(cells) + " |")
        kind = next((r.peak_kind for r in self.rows if r.peak_kind), "rss")
        what = ("the peak resident memory of the method's own training process, loading included"
                if kind == "rss" else "torch.cuda.max_memory_allocated of the method's own process")
        scored = ("Reward accuracy and margin are TRL's, on the eval rows after training: how often the "
                  "chosen reply out-scores the rejected one, and by how much." if preference else
                  "Eval loss is the saved model's mean loss over the trained tokens of the eval rows.")
        lines += ["", f"Measured peak memory is {what}; the estimate is `tunekit estimate` for the same "
                  f"batch, longest row and device (decimal units). {scored}"]
        if self.metric_name:
            lines.append(f"`{self.metric_name}` is the mean task metric over the eval rows (greedy replies).")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the comparison (memory, speed, loss, metric) as a PNG and return its path."""
        import matplotlib

        matplotlib.use("Agg")  # no display on servers; never open windows from a library
        import matplotlib.pyplot as plt

        ok = [r for r in self.rows if not r.error]
        names = [r.method for r in ok]
        x = list(range(len(ok)))
        panels = 4 if self.metric_name else 3
        fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4), dpi=100)

        def bars(ax, values, title, labels=None, colors=("#3182bd",), fmt="{:.3g}"):
            # Several series side by side around each method's tick; values printed on top.
            n = len(values)
            width = 0.8 / n
            for k, series in enumerate(values):
                pos = [i + (k - (n - 1) / 2) * width for i in x]
                drawn = ax.bar(pos, [v or 0 for v in series], width, color=colors[k % len(colors)],
                               label=labels[k] if labels else None)
                ax.bar_label(drawn, labels=["–" if v is None else fmt.format(v) for v in series], fontsize=7)
            top = max([v or 0 for series in values for v in series] + [1e-9])
            ax.set_ylim(0, top * 1.3)  # room for the value labels and the legend
            ax.set_title(title)
            if labels:
                ax.legend(fontsize=8, loc="upper right")

        def gb(v):
            return None if v is None else v / 1e9

        bars(axes[0], [[gb(r.estimated_peak_bytes) for r in ok], [gb(r.measured_peak_bytes) for r in ok]],
             "peak memory (GB)", ["estimated", "measured"], ("#9ecae1", "#3182bd"), "{:.2f}")
        bars(axes[1], [[r.tokens_per_second for r in ok]], "training tokens/s", colors=("#31a354",), fmt="{:.0f}")
        bars(axes[2], [[r.train_loss for r in ok], [r.eval_loss for r in ok]], "final loss", ["train", "eval"],
             ("#fdae6b", "#e6550d"), "{:.2f}")
        if self.metric_name:
            bars(axes[3], [[r.metric for r in ok]], self.metric_name, colors=("#756bb1",), fmt="{:.2f}")
            axes[3].set_ylim(0, max(1.05, axes[3].get_ylim()[1]))
        for ax in axes:
            ax.set_xticks(x, names)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{self.base}: {self.train_rows} train rows on {self.device}", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path

    def save(self, folder: str | os.PathLike | None = None) -> None:
        """Write ``compare.md``, ``compare.json`` and ``compare.png`` into ``folder`` (default:
        :attr:`output_dir`)."""
        folder = Path(folder) if folder is not None else self.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "compare.md").write_text(self.markdown())
        (folder / "compare.json").write_text(json.dumps(self.to_dict(), indent=2))
        self.plot(folder / "compare.png")


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def compare(
    data: Any,
    *,
    base: str | None = None,
    methods: Sequence[str] = METHODS,
    steps: int | None = None,
    eval_data: Any = None,
    metric: Callable[[str, str], float] | None = None,
    output_dir: str | os.PathLike | None = None,
    max_new_tokens: int = 128,
    **options: Any,
) -> Comparison:
    """Fine-tune ``base`` on the same data with each method and compare the runs.

    Every method sees the same train and eval rows (split once here with ``seed``) and the same
    options. Each one trains in a fresh child process, because peak memory (the RSS high-water
    mark on CPU, ``max_memory_allocated`` on CUDA) is per process: measured in one process, the
    second method would report the first one's peak.

    Args:
        data: anything :func:`tunekit.finetune` accepts.
        base: the base model (Hub id or folder; default: the embedded SmolLM2-135M-Instruct).
        methods: which of ``"full"``, ``"lora"``, ``"qlora"`` to train, in this order.
        steps: optimizer updates per method (``max_steps``); None trains ``epochs`` over the data.
        eval_data: a separate eval set; default: ``eval_split`` of ``data``, held out once.
        metric: ``metric(prediction, reference) -> float``: scores the greedy reply to each eval
            row's prompt against its last assistant message; the table shows the mean. Any
            callable works (it runs in this process).
        output_dir: where the table, chart, the exact rows and each method's run go; default:
            ``runs/compare-<base>-<time>``. An existing non-empty folder is never overwritten.
        max_new_tokens: reply length limit when scoring ``metric``.
        **options: any other :func:`tunekit.finetune` option (``epochs``, ``lr``, ``r``,
            ``batch_size``, ``seed``, ``eval_split``, ``device``, ``training_args``...), the same
            for every method. ``lr`` left unset means each method's own default.

    Returns:
        A :class:`Comparison`; ``compare.md``, ``compare.json`` and ``compare.png`` are already
        written to its ``output_dir``.

    Raises:
        ConfigError: invalid options, methods or steps (all reported at once).
        DataError / ModelError / TemplateError: the data, base or template cannot be used (these
            would fail every method, so the comparison stops). A method failing for another
            reason (out of memory, a missing package) is recorded in its row instead.

    Example:
        >>> c = tunekit.compare("train.jsonl", steps=20, metric=lambda p, r: float(p.strip() == r.strip()))
        >>> print(c.markdown())
    """
    from .options import Options
    from .quiet import quiet_libraries

    methods = list(methods)
    options = _checked_options(methods, steps, metric, max_new_tokens, base, options)
    opts = Options.from_kwargs({**options, "method": methods[0]})
    out = _output_dir(output_dir, base)
    train_path, eval_path, n_train, n_eval, encoded, eval_rows, objective = _prepare_data(data, eval_data, opts, out)
    base_name, plans = _plans(opts, methods, encoded, objective)
    where = plans[methods[0]].placement
    opts = plans[methods[0]].options  # grad_accum settled: the same for every method
    # The split is done: each child reads exactly the rows written to out/data/ (already in the
    # objective's shape: pairs made KTO rows stay KTO rows).
    child_options = {**options, "eval_split": 0, "eval_data": str(eval_path) if eval_path else None,
                     "grad_accum": opts.grad_accum, "objective": objective}

    rows = []
    for i, m in enumerate(methods, 1):
        log.info("compare: [%d/%d] training %s in its own process", i, len(methods), m)
        row = _train_in_child(m, train_path, {**child_options, "method": m, "output_dir": str(out / m)})
        estimate = plans[m].estimate
        row.estimated_peak_bytes = estimate.total_bytes if estimate is not None else None
        if not row.error:
            with quiet_libraries():
                _score(row, eval_rows, eval_path, metric, max_new_tokens, progress=opts.progress)
        log.info("compare: %s done%s", m, f" (failed: {row.error})" if row.error else "")
        rows.append(row)

    comparison = Comparison(
        base=base_name, device=f"{where.device} ({where.dtype_name})",
        train_rows=n_train, eval_rows=n_eval, seed=opts.seed, steps=steps, metric_name=_metric_name(metric),
        rows=rows, output_dir=out,
        options={"epochs": opts.epochs, "batch_size": opts.batch_size, "grad_accum": opts.grad_accum,
                 "lr": opts.lr, "r": opts.r, "alpha": opts.alpha, "max_new_tokens": max_new_tokens,
                 "beta": plans[methods[0]].beta},
        objective=objective,
    )
    comparison.save()
    return comparison


def _metric_name(metric: Callable | None) -> str | None:
    if metric is None:
        return None
    name = getattr(metric, "__name__", "metric")
    return "metric" if name == "<lambda>" else name


def _checked_options(methods: list[str], steps: int | None, metric: Any, max_new_tokens: Any, base: str | None,
                     options: dict[str, Any]) -> dict[str, Any]:
    """The options every method's run gets, after checking all arguments; every problem (of
    every method's options too) is reported in one ConfigError before anything trains."""
    from .options import Options

    problems = []
    for m in methods:
        if m not in REGISTRY:
            problems.append(f"methods: {m!r} is not one of {', '.join(METHODS)}")
    if not methods or len(set(methods)) != len(methods):
        problems.append(f"methods must name each method at most once, got {methods!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems.append(f"steps must be a positive integer or None, got {steps!r}")
    if metric is not None and not callable(metric):
        problems.append(f"metric must be a callable metric(prediction, reference), got {type(metric).__name__}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        problems.append(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    for key in OWNED_OPTIONS:
        if key in options:
            hint = "; use methods= (--methods)" if key == "method" else ""
            problems.append(f"compare() sets {key} itself{hint}")
    options = {k: v for k, v in options.items() if k not in OWNED_OPTIONS}
    options["base"] = base
    if steps is not None and not problems:
        options["training_args"] = {**(options.get("training_args") or {}), "max_steps": steps}
    for m in [m for m in methods if m in REGISTRY] or ["lora"]:
        try:
            Options.from_kwargs({**options, "method": m})
        except ConfigError as e:
            problems += [p for p in e.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    return options


def _output_dir(output_dir: str | os.PathLike | None, base: str | None) -> Path:
    from .folders import check_new, fresh_dir, run_name

    if output_dir is not None:
        out = check_new(output_dir)
    else:
        from .models import EMBEDDED_ID

        out = fresh_dir(run_name("compare", base or EMBEDDED_ID))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _prepare_data(data_source: Any, eval_source: Any, opts, out: Path):
    """Read and split once, validate every row against the tokenizer (training's own one-pass
    check, so bad rows stop the comparison here with every problem listed, or are dropped here
    with ``on_bad_rows="skip"`` so every method sees the same rows), and write the exact rows
    each method trains and is scored on to ``out/data/`` (a child reads a file, and the
    comparison can be rerun or inspected)."""
    from .train import prepare_data

    prepared = prepare_data(data_source, dataclasses.replace(opts, eval_data=eval_source))
    rows, eval_rows = prepared.train_rows, prepared.eval_rows
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    train_path = _write_rows(folder / "train.jsonl", rows)
    eval_path = _write_rows(folder / "eval.jsonl", eval_rows) if eval_rows else None
    return train_path, eval_path, len(rows), len(eval_rows), prepared.train_enc, eval_rows, prepared.objective


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            # Normalised rows are valid OpenAI-format (or text) rows once their locators go.
            f.write(json.dumps({k: v for k, v in r.items() if k not in ("row", "file")}, ensure_ascii=False) + "\n")
    return path


def _plans(opts, methods: list[str], encoded: list[dict], objective: str = "sft"):
    """Each method's :class:`tunekit.plan.Plan` for these rows, with its memory estimate: the
    grad_accum, checkpointing and estimate that method's run will have."""
    from . import models
    from .placement import placement
    from .plan import build

    base = models.resolve_base(opts.base)
    where = placement(opts.device)
    plans = {m: build(dataclasses.replace(opts, method=m), base.path, encoded, [], where, estimate=True,
                      objective=objective) for m in methods}
    return base.name, plans


def _train_in_child(method: str, train_path: Path, options: dict[str, Any]) -> MethodResult:
    """Run ``finetune`` for one method in a spawned process and read back its metrics.

    Spawn, not fork: a forked child would inherit this process's memory (and its RSS peak) and
    any CUDA context; a spawned one starts clean, so its peak is this method's alone.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, str(train_path), options), name=f"tunekit-compare-{method}")
    start = time.perf_counter()
    proc.start()
    send.close()  # only the child writes; recv() then sees EOF if the child dies without a word
    message = None
    try:
        message = receive.recv()
    except EOFError:
        pass
    proc.join()
    row = MethodResult(method=method, output_dir=options["output_dir"])
    if message is None:
        hint = " (killed: out of memory?)" if proc.exitcode in (-9, 137) else ""
        row.error = f"the training process exited with code {proc.exitcode}{hint}"
        return row
    status, payload = message
    if status == "error":
        exc, text = payload
        log.debug("compare: %s failed in its process:\n%s", method, text)
        if isinstance(exc, _USER_ERRORS):
            raise exc
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return row
    m: Metrics = payload
    row.trainable_params = m.trainable_params
    row.total_params = m.total_params
    row.measured_peak_bytes = m.peak_memory_bytes
    row.peak_kind = m.peak_memory_kind
    row.wall_seconds = m.wall_seconds
    row.tokens_per_second = m.tokens_per_second
    row.train_loss = m.train_loss_last
    row.reward_accuracy = m.reward_accuracy_last
    row.reward_margin = m.reward_margin_last
    row.steps = m.steps
    log.debug("compare: %s took %.0f s in its process", method, time.perf_counter() - start)
    return row


def _child_main(conn, train_path: str, options: dict[str, Any]) -> None:
    """Entry point of the spawned process: train, then send ``("ok", metrics)`` or
    ``("error", (exception, traceback text))`` back through ``conn``."""
    import pickle

    try:
        from .train import finetune

        result = finetune(train_path, **options)
        conn.send(("ok", result.metrics))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        text = traceback.format_exc()
        try:
            pickle.dumps(e)
        except Exception:  # an exception that cannot cross processes travels as its text
            e = TrainingError(f"{type(e).__name__}: {e}")
        conn.send(("error", (e, text)))
    finally:
        conn.close()


def _score(row: MethodResult, eval_rows: list[dict], eval_path: Path | None, metric, max_new_tokens: int,
           *, progress: bool) -> None:
    """Final eval loss and the task metric of one method's saved model, computed here (the
    training process has ended, so this does not touch its measured peak)."""
    if not eval_rows:
        return
    import gc

    from .result import TuneResult

    result = TuneResult.from_dir(row.output_dir)
    if all("messages" in r or "text" in r for r in eval_rows):
        row.eval_loss = float(result.evaluate(str(eval_path))["loss"])
    if metric is not None:
        scores = []
        # A chat is scored against its last reply, a pair against its chosen reply; KTO rows
        # against the completions labelled good.
        items = [_prompt_and_reference(r) for r in eval_rows]
        items = [item for item in items if item is not None]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"scoring {row.method}", unit="row", dynamic_ncols=True)
        for prompt, reference in items:
            reply = result.chat(prompt, max_new_tokens=max_new_tokens)
            scores.append(float(metric(reply, reference)))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        row.metric = sum(scores) / len(scores) if scores else None
    # The next method trains next; give its memory back (and CUDA's cache) first.
    del result
    gc.collect()
    _empty_cuda_cache()


def _prompt_and_reference(row: dict) -> tuple[list[dict], str] | None:
    """``(prompt messages, the reply to score against)`` of an eval row, or None (no reference)."""
    def plain(messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    if "messages" in row:
        messages = plain(row["messages"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last], messages[last]["content"]
    if "chosen" in row:
        return plain(row["prompt"]), row["chosen"][-1]["content"]
    if row.get("label") and "completion" in row:
        return plain(row["prompt"]), row["completion"][-1]["content"]
    return None


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

