"""Peak memory of one training configuration, split the way people reason about it: weights,
gradients, optimizer states, activations and runtime overhead; and whether it fits.

The tensor accounting is mechanistic; two constants (``_CPU_OVERHEAD_BYTES``,
``_CPU_HEAP_RETENTION``) were fitted on this machine's CPU measurements, and each says where it
came from (``tests/test_estimate.py``, ``benchmarks/measure_peak.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import methods
from ..errors import ResourceError
from ..placement import normalise_device
from .shapes import Shape, lora_parameters

# Runtime overhead that is not tensors of the model. On CUDA it is the CUDA context + cuBLAS/
# cuDNN workspaces (0.5-1 GB in practice; we take the upper end because it is not negotiable).
_CUDA_OVERHEAD_BYTES = 1_000_000_000
# On CPU it is the RSS of the training process before the model's tensors exist. Measured here
# (ru_maxrss, python 3.11, torch 2.13 CPU, transformers 5.23): bare `import torch, transformers`
# 0.25 GB; plus a causal-LM class imported 0.34 GB; plus peft 0.40 GB; plus trl/datasets (what
# tunekit's trainer imports) 0.49 GB. We use 0.45 GB: between the plain-loop benchmark and the
# trl process, so both stay well inside the ±25% the tests demand.
_CPU_OVERHEAD_BYTES = 450_000_000
# glibc keeps the forward pass's freed per-layer buffers in its heap (malloc_trim(0) after a step
# gives back ~0.6 GB for SmolLM2 LoRA), and the next step's differently sized allocations do not
# all fit into the holes. So on CPU the RSS peak exceeds the live-tensor peak by a share of the
# per-layer activation volume the forward pass allocates (the *non-checkpointed* layer
# activations: with checkpointing the forward still allocates them, it only frees them sooner).
# Fitted on SmolLM2-135M, measured RSS minus live tensors over that volume: LoRA 4x128 0.60,
# LoRA 2x512 0.57, LoRA 4x128 with checkpointing 0.66, QLoRA 0.6 (after the loading leftovers
# below); full 0.33 (its gradients reuse the holes, we keep 0.6 to stay on the safe side).
# CUDA's caching allocator is modelled as exact.
_CPU_HEAP_RETENTION = 0.6
# No QLoRA loading leftover on CPU: quantising reads every page of the memory-mapped checkpoint
# (~0.46 GB more RSS than LoRA on SmolLM2 while the embeddings pointed into it), but
# tunekit.models copies those tensors out after loading and the mapping closes.

# Bytes of optimizer state per trainable parameter.
OPTIMIZER_BYTES = {
    "adamw": 8,  # exp_avg + exp_avg_sq in fp32
    "paged_adamw": 8,  # same states; paging only moves spikes to CPU RAM
    "adamw_8bit": 2,  # bitsandbytes 8-bit states (block constants are negligible)
    "paged_adamw_8bit": 2,
    "sgd": 0,  # plain SGD without momentum
}
# NF4 (bitsandbytes): 4-bit codes, one absmax per 64-weight block. Double quantisation stores
# that absmax in 8 bits and adds one fp32 constant per 256 absmax values.
_NF4_BLOCK = 64
_DQ_BLOCK = 256


def nf4_bytes_per_param(double_quant: bool = True) -> float:
    """Bytes per weight of a bitsandbytes NF4 linear layer, quantisation constants included."""
    if double_quant:
        return 0.5 + 1 / _NF4_BLOCK + 4 / (_NF4_BLOCK * _DQ_BLOCK)
    return 0.5 + 4 / _NF4_BLOCK


@dataclass(frozen=True)
class Breakdown:
    """Peak memory by part, in bytes (the fields of :class:`~tunekit.estimate.Estimate`)."""

    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    overhead: int
    total: int


def parameter_bytes(s: Shape, method: str, a: int, lora_params: int) -> tuple[int, int, int]:
    """``(trainable parameters, weight bytes, gradient bytes)`` at compute width ``a`` bytes."""
    recipe = methods.get(method)
    if not recipe.peft:
        if a < 4:
            # Mixed precision: the optimizer updates an fp32 master copy and the forward runs on
            # the 16-bit copy; gradients are reduced/accumulated in fp32 (DeepSpeed/FSDP defaults,
            # and what HF Trainer's autocast on an fp32 model amounts to). 2 + 4 weights, 4 grads,
            # 8 Adam = 18 B/param: with activations this is the seeds' "≈ 20 B/param" (70B ≈ 1.4 TB).
            return s.params_total, s.params_total * (a + 4), s.params_total * 4
        return s.params_total, s.params_total * 4, s.params_total * 4
    if recipe.quantized:
        frozen = int(
            s.quantisable_params * nf4_bytes_per_param(True)
            + (s.embedding_params + s.norm_and_bias_params) * a
        )
    else:
        frozen = s.params_total * a
    # PEFT keeps adapters in fp32 even on a 16-bit base (autocast_adapter_dtype=True).
    return lora_params, frozen + lora_params * 4, lora_params * 4


def activation_bytes(
    s: Shape,
    *,
    tokens: int,
    max_length: int,
    a: int,
    checkpointing: bool,
    targeted: list[tuple[str, int, int]],
    lora: bool,
    r: int,
    dropout: float,
) -> tuple[int, int]:
    """Bytes kept for backward at the peak (start of the backward pass).

    Returns:
        ``(layers, logits)``: the decoder layers' share and the logits/loss share.
    """
    h, kv, i = s.hidden, s.kv_dim, s.intermediate
    # Elements saved per token by one Llama-style decoder layer, counted with
    # torch.autograd.graph.saved_tensors_hooks on SmolLM2 (11.2k measured vs 11.1k here):
    # two RMSNorms (input + output: 4h), q after RoPE and the attention output (2h), the o_proj
    # and residual inputs (2h), k and v (2kv), and the gated MLP's gate, up, silu(gate) and
    # product (4i). It is Korthikanti et al.'s 34·h bytes/token (16-bit) re-derived for a
    # SwiGLU MLP and grouped-query attention, without dropout.
    per_token_layer = 8 * h + 2 * kv + 4 * i
    if s.eager_attention:
        # Materialised scores and softmax probabilities (Korthikanti's 5·a·s/h term without the
        # dropout mask); SDPA/flash kernels, transformers' default, keep only a log-sum-exp.
        per_token_layer += 2 * s.heads * max_length
    layer_bytes = per_token_layer * a
    if lora:
        # Each adapter keeps A·x (r values); with dropout it also keeps its own dropped copy of
        # the input and the boolean mask (PEFT applies dropout per adapted module; tunekit's
        # trainer keeps one copy and a float mask per distinct input instead, within ~5% of
        # this on Llama-style layers). Summed over all targeted modules, then spread evenly
        # over the layers.
        extra = sum(r * a + (fin * (a + 1) if dropout > 0 else 0) for _, fin, _ in targeted)
        layer_bytes += extra / max(1, s.layers)
    if checkpointing:
        # Only each layer's input survives the forward pass; one layer is recomputed at a time.
        layers_bytes = tokens * (s.layers * h * a + layer_bytes)
    else:
        layers_bytes = tokens * s.layers * layer_bytes
    # Embedding output + final norm.
    layers_bytes += tokens * 3 * h * a
    # Logits over the full vocabulary at every position. transformers' loss upcasts them to fp32;
    # at the start of backward the logits, log_softmax output, its gradient and the logits'
    # gradient coexist: 4 fp32 copies (+ the 16-bit logits when computing in 16-bit). For small
    # models with large vocabularies this is the largest activation by far (SmolLM2: 0.4 GB
    # at 512 tokens, more than half of all layers together).
    logits = tokens * s.vocab * (4 * 4 + (a if a < 4 else 0))
    return int(layers_bytes), int(logits)


def overhead_bytes(*, cuda: bool, layers_plain: int) -> int:
    """Runtime memory that is not the model's tensors; on CPU plus the heap's retention of the
    forward pass's freed per-layer buffers (``layers_plain``: non-checkpointed layer bytes)."""
    if cuda:
        return _CUDA_OVERHEAD_BYTES
    return _CPU_OVERHEAD_BYTES + int(_CPU_HEAP_RETENTION * layers_plain)


def breakdown(
    s: Shape,
    *,
    method: str,
    a: int,
    targeted: list[tuple[str, int, int]],
    r: int,
    dropout: float,
    optimizer: str,
    max_length: int,
    batch_size: int,
    grad_accum: int,
    gradient_checkpointing: bool,
    cuda: bool,
) -> Breakdown:
    """The peak and its parts for one configuration of shape ``s`` (``a``: compute bytes)."""
    lora_params = lora_parameters(targeted, r)
    trainable, weights, grads = parameter_bytes(s, method, a, lora_params)
    optimizer_bytes = trainable * OPTIMIZER_BYTES[optimizer]
    act_kw = dict(tokens=max_length * batch_size, max_length=max_length, a=a, targeted=targeted,
                  lora=methods.get(method).peft, r=r, dropout=dropout)  # fmt: skip
    layers_plain, logits = activation_bytes(s, checkpointing=False, **act_kw)
    layers_ckpt, _ = activation_bytes(s, checkpointing=True, **act_kw)
    act_ckpt = layers_ckpt + logits
    act = act_ckpt if gradient_checkpointing else layers_plain + logits
    # At the peak (start of backward) the activations are all alive but most gradients are not
    # yet written; they appear layer by layer as activations are freed. With grad_accum > 1 the
    # previous micro-batches' gradients are alive throughout. The lm_head's gradient (the tied
    # embedding for SmolLM2) is written first, so it always coexists with the activations.
    if grad_accum > 1:
        dynamic = act + grads
    else:
        head_grad = s.lm_head_params * 4 if not methods.get(method).peft else 0
        dynamic = max(act + head_grad, grads)
    overhead = overhead_bytes(cuda=cuda, layers_plain=layers_plain)
    return Breakdown(
        trainable=trainable,
        weights=int(weights),
        gradients=int(grads),
        optimizer=int(optimizer_bytes),
        activations=act,
        activations_checkpointed=act_ckpt,
        overhead=int(overhead),
        total=int(weights + optimizer_bytes + dynamic + overhead),
    )


def fits(est, free_bytes: int, margin: float = 0.2) -> bool:
    """Whether ``est`` fits in ``free_bytes`` with ``margin`` to spare.

    Args:
        est: the estimate (an :class:`~tunekit.estimate.Estimate`).
        free_bytes: memory available on the estimate's device.
        margin: fraction of the estimate kept in reserve for what the estimate cannot see
            (fragmentation, longer batches, other processes).

    Returns:
        True when ``est.total_bytes * (1 + margin) <= free_bytes``.
    """
    return est.total_bytes * (1 + margin) <= free_bytes


def free_memory(device: str | None = None) -> int:
    """Bytes available for training on ``device`` now.

    CPU: ``psutil.virtual_memory().available``. CUDA: free bytes from ``torch.cuda.mem_get_info``.

    Raises:
        ResourceError: the CUDA device is not visible.
    """
    device = normalise_device(device)
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    import torch

    if not torch.cuda.is_available():
        raise ResourceError(
            f"{device} requested but no CUDA device is visible; use device='cpu' or check the "
            "driver and CUDA_VISIBLE_DEVICES"
        )
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)
