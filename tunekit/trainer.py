"""tunekit's ``SFTTrainer`` subclass: the same training, less wasted work.

- The loss is computed only at positions that carry one: the decoder's hidden states are taken
  at trained positions and only those go through the (vocabulary-sized) lm_head. On SmolLM2 the
  lm_head is a quarter of the forward FLOPs and most positions of a chat row are prompt.
- Trainable parameters stay in the compute dtype (TRL casts a quantized model's adapters to bf16,
  which is ~100x slower than fp32 on CPU).
- LoRA dropout draws one mask per distinct input instead of one per adapted layer (q, k and v
  read the same hidden states; so do gate and up), from 16 random bits per element rather than
  ``bernoulli_`` (see :class:`SharedDropout`).

The fast loss checks itself against the model's own loss on the first batch and falls back to
the standard path (with a warning) if they differ, e.g. for models with logit soft-capping.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch
from transformers.trainer_callback import PrinterCallback, TrainerCallback
from trl import SFTTrainer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def causal_lm_of(model):
    """The ``*ForCausalLM`` module inside a PEFT wrapper (LoRA layers are injected in place, so
    calling its parts directly still runs the adapters)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


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
    the largest tensors of a QLoRA step.
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
    if chunked and torch.is_grad_enabled() and hidden.shape[0] > rows:
        from torch.utils.checkpoint import checkpoint

        loss = sum(checkpoint(_cross_entropy_sum, head, hidden[i:i + rows], targets[i:i + rows], use_reentrant=False)
                   for i in range(0, hidden.shape[0], rows))
    else:
        loss = _cross_entropy_sum(head, hidden, targets)
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    return loss / num_items_in_batch


class _LastDropout:
    """The last input a :class:`SharedDropout` saw and its dropped-out copy (one per model)."""

    __slots__ = ("ref", "version", "p", "out")

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.ref = self.version = self.p = self.out = None

    # A weakref cannot be pickled or deep-copied; the cache is only valid inside one forward anyway.
    def __getstate__(self):
        return None

    def __setstate__(self, state):
        self.clear()

    def __deepcopy__(self, memo):
        return _LastDropout()


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` saving the boolean mask (1 byte per element) for backward."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with a mask made from 16 random bits per element.

    ``bernoulli_`` costs ~9 ns per element on this CPU (a fifth of a LoRA step); one 64-bit draw
    gives four 16-bit lanes for ~1 ns each. The drop probability is rounded to a multiple of
    1/65536 (0.05 -> 0.0500031) and the scale uses the rounded value, so the expectation is exact.
    """
    drops = round(p * 65536)
    if drops == 0:
        return x
    n = x.numel()
    lanes = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = lanes.view(torch.int16)[:n].view(x.shape) >= drops - 32768  # int16 spans [-32768, 32767]
    return _MaskedScale.apply(x, keep, 65536 / (65536 - drops))


class SharedDropout(torch.nn.Module):
    """LoRA dropout that reuses the mask when the next adapted layer reads the same tensor.

    PEFT gives every adapted linear its own ``nn.Dropout``, so the attention's q, k and v (and
    the MLP's gate and up) each draw a mask over the same hidden states: 7 masks per decoder layer
    where 4 distinct inputs exist. Sharing one mask per input is what PEFT already does for models
    with a fused qkv projection; each adapter still sees its input dropped at rate ``p``.
    """

    def __init__(self, p: float, last: _LastDropout):
        super().__init__()
        self.p = p
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.last.clear()
            return x
        last = self.last
        if last.ref is not None and last.ref() is x and last.version == x._version and last.p == self.p:
            return last.out
        out = dropout(x, self.p)
        last.ref, last.version, last.p, last.out = weakref.ref(x), x._version, self.p, out
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared"


def share_lora_dropout(model) -> int:
    """Replace the ``nn.Dropout`` of every LoRA layer in ``model`` by a :class:`SharedDropout`
    (in place; adapters, configs and saved files are unchanged). Returns how many were replaced."""
    last = _LastDropout()
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, d in drops.items():
            if type(d) is torch.nn.Dropout and d.p > 0:
                drops[name] = SharedDropout(d.p, last)
                drops[name].train(d.training)
                replaced += 1
    return replaced


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
    """Allocate the trainable parameters' gradients once, before the first step, and zero them in
    place after each update instead of freeing them (``zero_grad(set_to_none=False)``).

    Freed each update, the gradients are re-allocated during every backward pass, between the
    short-lived activations being freed; these small long-lived blocks pin the heap and glibc
    cannot reuse or return the space around them. Measured on a QLoRA step on CPU: the resident
    set grew ~75 MB more during backward than with gradients kept.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        model.zero_grad = functools.partial(type(model).zero_grad, model, set_to_none=False)


class Trainer(SFTTrainer):
    """SFTTrainer with the trained-positions loss and compute-dtype adapters (see module doc)."""

    def __init__(self, *args, compute_dtype: torch.dtype | None = None, fast_loss: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # With tqdm disabled the Trainer prints every log dict; tunekit's own bar shows the losses.
        self.remove_callback(PrinterCallback)
        self.add_callback(EvaluateLastStep())
        self.add_callback(KeepGradients())
        if compute_dtype is not None:
            for p in self.model.parameters():
                if p.requires_grad and p.dtype != compute_dtype and p.dtype.is_floating_point:
                    p.data = p.data.to(compute_dtype)
        shared = share_lora_dropout(self.model)
        if shared:
            log.debug("LoRA dropout: one mask per distinct input across %d adapted layers", shared)
        # Calling the decoder directly would bypass DistributedDataParallel's forward.
        self.fast_loss = fast_loss and self.accelerator.num_processes == 1
        self._fast_loss_checked = False

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
