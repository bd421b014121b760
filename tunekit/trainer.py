"""tunekit's ``SFTTrainer`` subclass: the same training, less wasted work.

- The loss is computed only at positions that carry one: the decoder's hidden states are taken
  at trained positions and only those go through the (vocabulary-sized) lm_head. On SmolLM2 the
  lm_head is a quarter of the forward FLOPs and most positions of a chat row are prompt.
- Trainable parameters stay in the compute dtype (TRL casts a quantized model's adapters to bf16,
  which is ~100x slower than fp32 on CPU).

The fast loss checks itself against the model's own loss on the first batch and falls back to
the standard path (with a warning) if they differ, e.g. for models with logit soft-capping.
"""

from __future__ import annotations

import logging

import torch
from transformers.trainer_callback import PrinterCallback
from trl import SFTTrainer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def causal_lm_of(model):
    """The ``*ForCausalLM`` module inside a PEFT wrapper (LoRA layers are injected in place, so
    calling its parts directly still runs the adapters)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def trained_positions_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Causal-LM cross-entropy evaluated only where ``labels`` are not -100.

    Equal to the model's own loss (sum over trained tokens divided by ``num_items_in_batch``, or
    their mean), but the lm_head and softmax run on trained positions only.
    """
    lm = causal_lm_of(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = decoder(**model_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    return loss / num_items_in_batch


class Trainer(SFTTrainer):
    """SFTTrainer with the trained-positions loss and compute-dtype adapters (see module doc)."""

    def __init__(self, *args, compute_dtype: torch.dtype | None = None, fast_loss: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # With tqdm disabled the Trainer prints every log dict; tunekit's own bar shows the losses.
        self.remove_callback(PrinterCallback)
        if compute_dtype is not None:
            for p in self.model.parameters():
                if p.requires_grad and p.dtype != compute_dtype and p.dtype.is_floating_point:
                    p.data = p.data.to(compute_dtype)
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
        loss = trained_positions_loss(model, inputs, num_items_in_batch)
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
