"""The three ways of adapting a model — full, LoRA, QLoRA — as recipes over one training path.

They differ only in how the base is loaded (4-bit or not), which parameters train (all, or LoRA
matrices B·A with W' = W + (alpha/r)·B·A), the learning rate and the optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MethodName = Literal["full", "lora", "qlora"]


@dataclass(frozen=True)
class Method:
    """One way of adapting a model: the registry's entry that every module reads.

    Attributes:
        name: the option value (``"full"``, ``"lora"``, ``"qlora"``).
        label: short display name (``"LoRA"``), for tables and the Space.
        title: the card's longer name (``"QLoRA (4-bit NF4 base)"``).
        default_lr: learning rate when ``lr`` is not given (the seeds' defaults, DESIGN §2).
        preference_lr: the same for DPO/KTO (see :data:`PREFERENCE_LR`).
        peft: True when a LoRA adapter is trained over a frozen base (saved as an adapter).
        quantized: True when the frozen base is loaded in 4-bit NF4 (bitsandbytes).
    """

    name: str
    label: str
    title: str
    default_lr: float
    peft: bool
    quantized: bool
    preference_lr: float = 0.0

    def lr(self, objective: str = "sft") -> float:
        """The default learning rate for an objective (``"sft"``, ``"dpo"``, ``"kto"``)."""
        return self.default_lr if objective == "sft" else self.preference_lr

    def optimizer(self, *, cuda: bool) -> str:
        """Paged AdamW survives QLoRA's memory spikes on a GPU; paging means nothing on CPU.
        Otherwise the fused AdamW kernel (transformers' own default since torch 2.8): one pass
        over all parameters instead of a dozen, ~6x faster than the foreach version on CPU."""
        if self.quantized and cuda:
            return "paged_adamw_32bit"
        return "adamw_torch_fused"

    def gradient_checkpointing(self, *, cuda: bool) -> bool:
        """Recomputing activations costs ~30% more compute: on by default on GPUs (memory is the
        limit there) and for QLoRA (chosen to save memory), off on CPU for full and LoRA."""
        return cuda or self.quantized


# Preference tuning (DPO/KTO). LoRA/QLoRA: measured on the TL;DR pairs (280 x 2 epochs = 126
# updates, DPO + the NLL term, docs/preferences.md): 2e-4 opened 40/40 held-out replies with the
# summary, none looped, reference perplexity 27.6 -> 8.5; 5e-4 the same rate but 14.5 (the eval
# pairs memorised); 1e-3 (sigmoid alone) wrecked the model ("TL;TL;TL:..."). 1e-3 only looked
# right after 15 updates. Full weights, measured the same way: 2e-5 (full SFT's default) gave
# 40/40, none looped, perplexity 9.1. TRL's full-weight default (1e-6) and the previous 5e-7 come
# from 7B recipes and were not measured here. With the NLL term DPO steps like SFT, so both
# objectives now start from the same lr; the table stays so that they can part again.
PREFERENCE_LR = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4}

# Seeds' defaults (DESIGN §2): LoRA/QLoRA learn fast at 2e-4; full fine-tuning needs ~10x less.
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", "full fine-tune", "full fine-tuning", 2e-5, peft=False, quantized=False,
               preference_lr=PREFERENCE_LR["full"]),
        Method("lora", "LoRA", "LoRA", 2e-4, peft=True, quantized=False, preference_lr=PREFERENCE_LR["lora"]),
        Method("qlora", "QLoRA", "QLoRA (4-bit NF4 base)", 2e-4, peft=True, quantized=True,
               preference_lr=PREFERENCE_LR["qlora"]),
    )
}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Method:
    """The registry entry of a method name.

    Raises:
        ConfigError: not a method name (the message lists them).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        from .errors import ConfigError

        raise ConfigError(f"method {name!r} is not one of {', '.join(METHODS)}") from None


def default_lr(method: str) -> float:
    return get(method).default_lr


# Seeds' advice: full fine-tuning only pays off from this many examples (method="auto" picks it
# only then, and only when it fits).
FULL_MIN_EXAMPLES = 20_000

# Updates a run should get before gradient accumulation is allowed to reduce them. Measured on the
# order-extraction benchmark (200 rows x 2 epochs, lr 2e-4): 25 updates of 16 rows reached 0.175
# exact match, the plain recipe's 100 updates of 4 rows 0.275.
MIN_UPDATES = 100


def default_grad_accum(rows: int, batch_size: int, epochs: float) -> int:
    """The seeds' accumulation of 4 (16-row updates at batch 4), lowered to 2 or 1 while that
    keeps a small data set above ``MIN_UPDATES`` optimizer updates. The compute per token is the
    same; only how often the weights move changes."""
    for accum in (4, 2):
        if math.ceil(rows / (batch_size * accum)) * epochs >= MIN_UPDATES:
            return accum
    return 1


def uses_peft(method: str) -> bool:
    return get(method).peft


def quantized(method: str) -> bool:
    return get(method).quantized


def optimizer_name(method: str, *, cuda: bool) -> str:
    return get(method).optimizer(cuda=cuda)


def default_gradient_checkpointing(method: str, *, cuda: bool) -> bool:
    return get(method).gradient_checkpointing(cuda=cuda)


def lora_config(
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: str | list[str],
    use_dora: bool = False,
    use_rslora: bool = False,
    modules_to_save: list[str] | None = None,
):
    """A PEFT ``LoraConfig`` for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_dora=use_dora,
        use_rslora=use_rslora,
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_for_kbit(model, *, gradient_checkpointing: bool):
    """PEFT's k-bit preparation (norms in fp32, input grads), without forcing gradient
    checkpointing on: on CPU with memory to spare it only costs time."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights counted as their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit values per uint8 element.
        if getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
