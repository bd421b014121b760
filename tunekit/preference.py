"""tunekit's preference trainers: TRL's ``DPOTrainer`` and ``KTOTrainer`` on rows tunekit encoded.

The loss, the reference log-probs and the reward metrics are TRL's. What the subclasses add:

- Rows arrive tokenized (:mod:`tunekit.templates.pairs`: the chat-time prompt, replies ending in
  the end-of-turn token, control tokens in messages kept as text); TRL's own ``_prepare_dataset``
  would render and tokenize them again from text, so it is skipped for such columns. KTO's
  mismatched KL completions are still built as TRL builds them.
- The reference: with LoRA/QLoRA TRL scores it with the adapter switched off (no second copy of
  the model); when training continues an adapter (``base=`` an SFT run), TRL copies it into a
  frozen ``"ref"`` adapter and scores with that. Only the trained adapter is saved.
- Trainable parameters stay in the compute dtype (TRL casts a quantized model's adapters to bf16,
  ~100x slower than fp32 on CPU), LoRA layers run tunekit's fused forward
  (:func:`tunekit.fastpath.fuse_lora_layers`), kept gradients and marked checkpoints as for SFT.
"""

from __future__ import annotations

import logging

import torch
from transformers.trainer_callback import PrinterCallback
from trl import DPOTrainer, KTOTrainer

from . import config
from .fastpath import fuse_lora_layers
from .trainer import EvaluateLastStep, KeepGradients, MarkCheckpoints

log = logging.getLogger(__name__)

__all__ = ["PreferenceDPOTrainer", "PreferenceKTOTrainer", "REFERENCE_ADAPTER", "TRAINERS"]

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of an adapter that training continues


class _PreferenceMixin:
    """Shared by both trainers: tokenized datasets, compute dtype, fast paths, callbacks."""

    def _tunekit_setup(self, compute_dtype: torch.dtype | None, fastpath: bool | None) -> None:
        self.remove_callback(PrinterCallback)  # tunekit's progress bar shows the losses
        self.add_callback(EvaluateLastStep())
        self.add_callback(MarkCheckpoints())
        if compute_dtype is not None:
            for p in self.model.parameters():
                if p.requires_grad and p.dtype != compute_dtype and p.dtype.is_floating_point:
                    p.data = p.data.to(compute_dtype)
        self.fastpath = config.fastpath() if fastpath is None else bool(fastpath)
        if self.fastpath:
            self.add_callback(KeepGradients())
            fused = fuse_lora_layers(self.model)
            log.debug("LoRA: fused forward in %d layers", fused["layers"])

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        # The frozen reference copy of a continued adapter is TRL's working state, not a result.
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", None)
        if isinstance(peft_config, dict) and REFERENCE_ADAPTER in peft_config and output_dir is not None \
                and not _internal_call:
            if self.args.should_save:
                model.save_pretrained(output_dir, selected_adapters=["default"], safe_serialization=True)
            return
        return super().save_model(output_dir, _internal_call)


class PreferenceDPOTrainer(_PreferenceMixin, DPOTrainer):
    """``trl.DPOTrainer`` on tunekit-encoded pairs (see the module doc).

    Args:
        compute_dtype: dtype for the trainable parameters (the placement's); None leaves them.
        fastpath: tunekit's fast paths (fused LoRA forward, kept gradients); None reads
            :func:`tunekit.config.fastpath`.
        *args, **kwargs: ``trl.DPOTrainer``'s.
    """

    def __init__(self, *args, compute_dtype: torch.dtype | None = None, fastpath: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._tunekit_setup(compute_dtype, fastpath)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names and "chosen_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


class PreferenceKTOTrainer(_PreferenceMixin, KTOTrainer):
    """``trl.KTOTrainer`` on tunekit-encoded labelled completions (see the module doc).

    Args:
        compute_dtype, fastpath: as for :class:`PreferenceDPOTrainer`.
        *args, **kwargs: ``trl.KTOTrainer``'s.
    """

    def __init__(self, *args, compute_dtype: torch.dtype | None = None, fastpath: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._tunekit_setup(compute_dtype, fastpath)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" not in dataset.column_names or "completion_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.calculate_KL:
            # As TRL does: the KL term is estimated from mismatched (prompt, completion) pairs, the
            # completions rotated by one within each batch of the (sequential) training order.
            def add_kl_completion_ids(batch):
                batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                return batch

            dataset = dataset.map(add_kl_completion_ids, batched=True, batch_size=args.per_device_train_batch_size)
        return dataset


TRAINERS = {"dpo": PreferenceDPOTrainer, "kto": PreferenceKTOTrainer}
