"""Measure the real peak memory and speed of a few training steps, to check ``tunekit.estimate``.

Run it in a fresh process per measurement (peak RSS is a per-process high-water mark)::

    python benchmarks/measure_peak.py MODEL_DIR --method lora --batch 4 --seq 128 --steps 3

It prints one JSON object on the last line of stdout. ``MODEL_DIR`` is a folder written by
``save_pretrained`` (fp32 weights). The loop is deliberately plain PyTorch (AdamW, fp32, random
tokens, no padding) so the numbers measure the model and method, not a trainer's extras.

``MODEL_DIR`` may be ``embedded``: tunekit's trainable copy of its embedded SmolLM2-135M-Instruct
(``tunekit.models.embedded_model_dir()``, converted once).

Fields of the JSON:
    peak_rss_bytes: the whole process's peak, loading included (what the OS must hold), from
        ``tunekit.train.peak_rss_bytes`` (``VmHWM``: ``ru_maxrss`` would include a large parent's size).
    train_peak_rss_bytes: the high-water mark of the training steps alone (``VmHWM`` after
        resetting it through ``/proc/self/clear_refs``); null where the kernel refuses the reset.
    baseline_rss_bytes: RSS after the imports, before the model is loaded.
    loaded_rss_bytes: RSS once the model is loaded and wrapped, before the first step.
    seconds_per_step / tokens_per_second: median over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

from tunekit.methods import METHODS  # light: the registry only

log = logging.getLogger("measure_peak")


def _rss_bytes(field: str = "VmRSS") -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    # Writing "5" resets the process's peak RSS (Linux >= 4.0), so the training phase can be
    # measured apart from loading, whose transient copies may be larger for some methods.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load(model_dir: str, method: str, r: int, target_modules, dropout: float):
    # tunekit's own loading, so the measurement is of what tunekit runs (e.g. a 4-bit model's
    # checkpoint mapping is released after quantising).
    from tunekit import methods, models
    from tunekit.placement import placement

    recipe = methods.get(method)
    model = models.load_model(model_dir, where=placement("cpu"), quantize_4bit=recipe.quantized)
    if recipe.peft:
        from peft import get_peft_model

        model = get_peft_model(model, methods.lora_config(
            r=r, alpha=2 * r, dropout=dropout, target_modules=target_modules))
    return model


def measure(
    model_dir: str,
    method: str,
    *,
    batch: int = 4,
    seq: int = 128,
    steps: int = 3,
    r: int = 16,
    target_modules: str | list[str] = "all-linear",
    dropout: float = 0.05,
    gradient_checkpointing: bool = False,
    threads: int | None = None,
) -> dict:
    """Train ``steps`` steps on random tokens and return the memory/speed measurements.

    ``dropout`` is the LoRA dropout (``finetune``'s and ``estimate``'s name for it).
    """
    import torch
    import transformers  # noqa: F401  (imported before the baseline so it counts as overhead)

    from tunekit import methods
    from tunekit.train import peak_rss_bytes

    if methods.get(method).peft:
        import peft  # noqa: F401
    if methods.get(method).quantized:
        import bitsandbytes  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    baseline = _rss_bytes()
    model = _load(model_dir, method, r, target_modules, dropout)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if methods.get(method).peft:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size if hasattr(model, "config") else model.base_model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    loaded = _rss_bytes()
    load_peak = peak_rss_bytes()  # before the reset below clears the high-water mark
    reset_ok = _reset_peak()
    times, losses = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(out.loss))
        del out
    train_peak = _rss_bytes("VmHWM") if reset_ok else None
    step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "model_dir": model_dir,
        "method": method,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "r": r,
        "dropout": dropout,
        "gradient_checkpointing": gradient_checkpointing,
        "threads": torch.get_num_threads(),
        "params_trainable": n_trainable,
        "peak_rss_bytes": max(load_peak, peak_rss_bytes()),
        "train_peak_rss_bytes": train_peak,
        "baseline_rss_bytes": baseline,
        "loaded_rss_bytes": loaded,
        "seconds_per_step": step_s,
        "tokens_per_second": batch * seq / step_s,
        "losses": losses,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?")
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--target-modules", default="all-linear", help="all-linear or q_proj,v_proj")
    p.add_argument("--dropout", "--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not a.model_dir:
        p.error("model_dir is required")
    if a.model_dir == "embedded":
        from tunekit.models import embedded_model_dir

        a.model_dir = str(embedded_model_dir())
    targets = a.target_modules if a.target_modules == "all-linear" else a.target_modules.split(",")
    res = measure(
        a.model_dir,
        a.method,
        batch=a.batch,
        seq=a.seq,
        steps=a.steps,
        r=a.r,
        target_modules=targets,
        dropout=a.dropout,
        gradient_checkpointing=a.gradient_checkpointing,
        threads=a.threads,
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
