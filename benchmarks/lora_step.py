"""What the step benchmarks share: the order-extraction rows encoded for the embedded
SmolLM2-135M, padding-free batches, and the model with tunekit's default LoRA."""

from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _embedded():
    """``(base, tokenizer)`` of the embedded model, resolved once for the task and every model."""
    from tunekit.train import prepare_tokenizer

    base, tokenizer, _, _ = prepare_tokenizer(None, None)
    return base, tokenizer


def task():
    """``(encoded rows, collate)``: ``collate(rows)`` makes one padding-free batch."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunekit import data, templates

    rows, _ = data.read_examples(ROOT / "examples/data/extract_json.jsonl")
    tokenizer = _embedded()[1]
    encoded, _ = templates.encode_all(rows, tokenizer)
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)

    def collate(chunk):
        return collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in chunk])

    return encoded, collate


def lora_model(fast: bool):
    """The embedded model with tunekit's default LoRA (seeded alike), in training mode, on the
    CPU; ``fast``: with :mod:`tunekit.fastpath`'s fused LoRA layers."""
    import torch
    from peft import get_peft_model

    from tunekit import fastpath, methods, models
    from tunekit.options import Options
    from tunekit.placement import placement

    base = _embedded()[0]
    opts = Options()
    models.tune_cpu_runtime()
    torch.manual_seed(0)
    model = models.load_model(base.path, where=placement("cpu"), quantize_4bit=False)
    model = get_peft_model(model, methods.lora_config(r=opts.r, alpha=opts.alpha, dropout=opts.dropout,
                                                      target_modules=opts.target_module_list()))
    model.train()
    if fast:
        fastpath.fuse_lora_layers(model)
    return model


def adamw(model, fused: bool = True):
    """AdamW over the trainable parameters: fused as tunekit's Trainer uses it, else foreach."""
    import torch

    params = [q for q in model.parameters() if q.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=fused, foreach=not fused)


def update(model, optimizer, batches: list[dict], *, fast: bool = True, num_items_in_batch=None) -> tuple[float, float]:
    """One optimizer update over collated ``batches`` (a forward and backward each), as tunekit's
    Trainer runs it (``fast``: attention within rows; gradients kept and zeroed in place) or as
    PEFT's reference path does: ``(seconds, summed loss)``."""
    import contextlib
    import time

    from tunekit import fastpath
    from tunekit.trainer import trained_positions_loss

    attention = fastpath.attention_within_rows(model) if fast else contextlib.nullcontext()
    start = time.perf_counter()
    losses = []
    with attention:
        for batch in batches:
            loss = trained_positions_loss(model, batch, num_items_in_batch=num_items_in_batch)
            loss.backward()
            losses.append(loss.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return time.perf_counter() - start, float(sum(losses))
