"""tunekit's ``SFTTrainer`` subclass: the same training, less wasted work.

- The loss is computed only at positions that carry one: the decoder's hidden states are taken
  at trained positions and only those go through the (vocabulary-sized) lm_head. On SmolLM2 the
  lm_head is a quarter of the forward FLOPs and most positions of a chat row are prompt.
- LoRA layers run a fused forward with one dropout mask per distinct input, and padding-free
  batches attend within each row (:mod:`tunekit.fastpath`).
- The trainable parameters' gradients are allocated once and zeroed in place (:class:`KeepGradients`).
- Trainable parameters stay in the compute dtype (TRL casts a quantized model's adapters to bf16,
  which is ~100x slower than fp32 on CPU). This one is correctness, not speed: it always applies.

On CUDA the plan (:func:`tunekit.plan.decide_fast_paths`) picks the libraries' own fast paths
instead where they exist, passed here as ``attention="varlen"`` (torch's flash varlen kernel),
``loss="trl"`` (TRL's fused, chunked LM head) and ``liger=True`` (Liger's RMSNorm and SwiGLU
kernels, when installed).

The first three are the fast paths behind one switch, ``Trainer(fastpath=...)`` (default:
:func:`tunekit.config.fastpath`, which ``TUNEKIT_FASTPATH=0`` turns off). Off, training runs the
reference code: PEFT's LoRA forward and ``nn.Dropout``, transformers' SDPA with its own masks,
``SFTTrainer.compute_loss``. The fast loss checks itself against the model's own loss on the
first batch and falls back to the standard path (with a warning) if they differ, e.g. for models
with logit soft-capping.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path

import torch
from transformers.trainer_callback import PrinterCallback, TrainerCallback
from trl import SFTTrainer

from . import config
from .checkpoints import mark_complete
from .fastpath import KERNELS, attention_within_rows, causal_lm_of, fuse_lora_layers
from .folders import LOG_FILE
from .templates import IGNORE_INDEX

log = logging.getLogger(__name__)

__all__ = ["EvaluateLastStep", "KeepGradients", "LOG_FILE", "LogLines", "MarkCheckpoints", "SECRET_ARGS", "LIGER_KERNELS", "LOSS_CHUNK_BYTES", "Trainer", "causal_lm_of",
           "trained_positions_loss"]

# Liger's kernels tunekit applies: its cross-entropy (plain or fused with the lm_head) is left
# off because the loss is TRL's fused head (or tunekit's), and its RoPE because Liger swaps
# that function module-wide rather than on the model being trained.
LIGER_KERNELS = {"rms_norm": True, "swiglu": True, "rope": False, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}
LOSSES = ("trained", "trl")


def _cross_entropy_sum(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


# Bytes of fp32 logits per chunk when the loss is chunked: a few MB instead of positions x vocab.
LOSS_CHUNK_BYTES = 8 << 20


def trained_positions_loss(model, inputs: dict, num_items_in_batch=None, *, chunked: bool = False) -> torch.Tensor:
    """Causal-LM cross-entropy evaluated only where ``labels`` are not -100.

    Equal to the model's own loss (sum over trained tokens divided by ``num_items_in_batch``, or
    their mean), but the lm_head and softmax run on trained positions only. With ``chunked``
    (memory mode, alongside gradient checkpointing) the positions go through the lm_head a few at
    a time and each chunk's logits are recomputed in backward, so at most one chunk's logits
    exist at once: on SmolLM2's 49k vocabulary the full logits, their softmax and gradient were
    the largest tensors of a QLoRA step. Without gradients (evaluation) it always goes by chunks.
    """
    lm = causal_lm_of(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = decoder(**model_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    rows = max(8, LOSS_CHUNK_BYTES // (4 * head.weight.shape[0]))
    chunks = [slice(i, i + rows) for i in range(0, hidden.shape[0], rows)]
    if len(chunks) > 1 and not torch.is_grad_enabled():
        # Evaluation: chunks cost nothing extra without a backward, and keep the logits of the
        # larger evaluation batches from raising the run's peak.
        loss = sum(_cross_entropy_sum(head, hidden[c], targets[c]) for c in chunks)
    elif len(chunks) > 1 and chunked:
        from torch.utils.checkpoint import checkpoint

        loss = sum(checkpoint(_cross_entropy_sum, head, hidden[c], targets[c], use_reentrant=False) for c in chunks)
    else:
        loss = _cross_entropy_sum(head, hidden, targets)
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    return loss / num_items_in_batch


class EvaluateLastStep(TrainerCallback):
    """Evaluate and checkpoint after the last update too. With ``eval_strategy="steps"`` the
    Trainer only evaluates on multiples of ``eval_steps``, so the updates after the last multiple
    were never scored and ``load_best_model_at_end`` could not pick the final weights."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.eval_strategy == "steps":
            control.should_evaluate = True
            control.should_save = True
        return control


class KeepGradients(TrainerCallback):
    """Allocate the trainable parameters' gradients once, before the first step, and reuse them,
    zeroed, after each update instead of letting new ones be allocated.

    Freed each update, the gradients are re-allocated during every backward pass, between the
    short-lived activations being freed; these small long-lived blocks pin the heap and glibc
    cannot reuse or return the space around them. Measured on a QLoRA step on CPU: the resident
    set grew ~75 MB more during backward than with gradients kept.

    The Trainer frees them with ``model.zero_grad()`` right after each update and offers no
    setting for ``set_to_none``; this callback holds a reference to each buffer, so that call
    frees nothing, and hands the buffers back zeroed in ``on_step_end``, which the Trainer calls
    next, before any forward. The effect is ``zero_grad(set_to_none=False)``.
    """

    def __init__(self):
        self.kept: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        self.kept = []
        for p in model.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self.kept.append((p, p.grad))

    def on_step_end(self, args, state, control, **kwargs):
        for p, grad in self.kept:
            if p.grad is None:  # dropped by the Trainer's zero_grad()
                p.grad = grad.zero_()


# TrainingArguments fields that hold credentials: never left in a checkpoint's training_args.bin.
SECRET_ARGS = ("hub_token",)


class MarkCheckpoints(TrainerCallback):
    """After the Trainer has written a checkpoint, re-save its ``training_args.bin`` without
    credentials (transformers pickles every argument, ``hub_token`` included) and then mark the
    checkpoint complete (:func:`tunekit.checkpoints.mark_complete`), so ``resume=True`` never
    starts from one a killed process left half-written."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not (args.should_save and folder.is_dir()):  # another process wrote it
            return
        pickled = folder / "training_args.bin"
        if pickled.exists() and any(getattr(args, name, None) for name in SECRET_ARGS):
            clean = copy.copy(args)
            for name in SECRET_ARGS:
                setattr(clean, name, None)
            torch.save(clean, pickled)
        mark_complete(folder)


class LogLines(TrainerCallback):
    """Append each Trainer log (loss, learning rate, grad norm, eval metrics…) to ``path`` as one
    JSON line ``{"step", "epoch", "max_steps", **logs}`` the moment it is logged, so another
    process can follow a run live (the Fine-tuning Jobs API's step events) instead of waiting for
    a checkpoint's ``trainer_state.json``. One short append per log: cheap. A resumed run
    appends to the same file, so steps after the checkpoint it resumed from appear twice.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        line = json.dumps({"step": state.global_step, "epoch": state.epoch, "max_steps": state.max_steps, **logs},
                          default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Trainer(SFTTrainer):
    """SFTTrainer with tunekit's fast paths and compute-dtype adapters (see the module doc).

    Args:
        compute_dtype: dtype for the trainable parameters (the placement's); None leaves them.
        fast_loss: allow the trained-positions loss (with ``fastpath`` on); False keeps
            ``SFTTrainer.compute_loss`` while the other fast paths stay on.
        fastpath: tunekit's fast paths (fused LoRA forward and shared dropout, attention within
            rows, trained-positions loss, kept gradients). None reads
            :func:`tunekit.config.fastpath` (``TUNEKIT_FASTPATH=0`` turns them off); False runs
            PEFT's, transformers' and TRL's reference code. Results agree within float rounding,
            except that the shared dropout draws other masks than ``nn.Dropout``.
        attention: how padding-free batches attend with ``fastpath`` on: ``"rows"`` (SDPA on each
            row, the default), ``"varlen"`` (torch's flash varlen kernel; CUDA, bf16/fp16) or
            ``"sdpa"`` (transformers' own, with its block-diagonal mask).
        loss: ``"trained"`` (the trained-positions loss, the default) or ``"trl"``
            (``SFTTrainer.compute_loss``: TRL's fused LM head, chunked, Triton on CUDA).
        liger: apply Liger's RMSNorm and SwiGLU kernels (:data:`LIGER_KERNELS`, through
            transformers' Liger integration); needs ``liger-kernel`` and a CUDA model.
        *args, **kwargs: ``trl.SFTTrainer``'s.

    Raises:
        ConfigError: an unknown ``attention`` or ``loss``, or ``liger`` without liger-kernel.
    """

    def __init__(self, *args, compute_dtype: torch.dtype | None = None, fast_loss: bool = True,
                 fastpath: bool | None = None, attention: str = "rows", loss: str = "trained",
                 liger: bool = False, **kwargs):
        _check_fast_paths(attention, loss, liger)
        super().__init__(*args, **kwargs)
        self.fastpath = config.fastpath() if fastpath is None else bool(fastpath)
        self.attention = attention if self.fastpath else "sdpa"
        # With tqdm disabled the Trainer prints every log dict; tunekit's own bar shows the losses.
        self.remove_callback(PrinterCallback)
        self.add_callback(EvaluateLastStep())
        self.add_callback(MarkCheckpoints())
        if compute_dtype is not None:
            for p in self.model.parameters():
                if p.requires_grad and p.dtype != compute_dtype and p.dtype.is_floating_point:
                    p.data = p.data.to(compute_dtype)
        if self.fastpath:
            self.add_callback(KeepGradients())
            fused = fuse_lora_layers(self.model)
            if fused["layers"] or fused["dropouts"]:
                log.debug("LoRA: fused forward in %d layers; dropout: one mask per distinct input across %d",
                          fused["layers"], fused["dropouts"])
            if liger:
                from transformers.integrations.liger import apply_liger_kernel

                apply_liger_kernel(self.model, LIGER_KERNELS)
        self.liger = self.fastpath and liger
        # Calling the decoder directly would bypass DistributedDataParallel's forward.
        self.fast_loss = self.fastpath and fast_loss and loss == "trained" and self.accelerator.num_processes == 1
        self._fast_loss_checked = False

    def _attention(self):
        # Padding-free batches (TRL adds the rows' boundaries) attend within each row. SDPA on
        # each row goes with the trained-positions loss, as it always has (the reference loss
        # path keeps the model's own attention); the varlen kernel is chosen for CUDA on its own.
        within_rows = self.attention == "varlen" or (self.attention == "rows" and self.fast_loss)
        if within_rows and self.args.padding_free:
            return attention_within_rows(self.model, self.attention)
        return contextlib.nullcontext()

    def train(self, *args, **kwargs):
        with self._attention():
            return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._attention():
            return super().evaluate(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.fast_loss:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if not self._fast_loss_checked:
            self._check_fast_loss(model, inputs, num_items_in_batch)
            if not self.fast_loss:
                return self.compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = trained_positions_loss(model, inputs, num_items_in_batch, chunked=self.args.activation_checkpointing)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, {}) if return_outputs else loss

    def _check_fast_loss(self, model, inputs, num_items_in_batch) -> None:
        self._fast_loss_checked = True
        with torch.no_grad():
            fast = trained_positions_loss(model, inputs, num_items_in_batch)
            reference = model(**inputs, num_items_in_batch=num_items_in_batch, use_cache=False).loss
        if not torch.allclose(fast.float(), reference.float(), rtol=1e-3, atol=1e-4):
            log.warning("trained-positions loss %.6f differs from the model's own loss %.6f for this "
                        "architecture; using the standard (slower) loss", float(fast), float(reference))
            self.fast_loss = False


def _check_fast_paths(attention: str, loss: str, liger: bool) -> None:
    from .errors import ConfigError

    problems = []
    if attention not in (*KERNELS, "sdpa"):
        problems.append(f"attention={attention!r} is not one of {', '.join((*KERNELS, 'sdpa'))}")
    if loss not in LOSSES:
        problems.append(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
    if liger:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            problems.append("liger=True needs liger-kernel: pip install 'tunekit[liger]' (CUDA only)")
    if problems:
        raise ConfigError(problems)
