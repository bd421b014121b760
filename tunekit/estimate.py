"""Memory and time estimates per fine-tuning method, and the choice ``method="auto"`` makes.

The estimate is built from the model's config alone: the model is instantiated on PyTorch's
``meta`` device (no weights, no download beyond ``config.json``), so any causal-LM architecture
transformers knows can be counted. Memory is split the way people reason about it (weights,
gradients, optimizer states, activations, runtime overhead) so a user can see *why* a method
does not fit and which knob (checkpointing, batch, sequence length, QLoRA) helps.

Units in :meth:`Estimate.table` are decimal (1 GB = 10**9 bytes), like the seed figures
("full ≈ 1.4 TB") they are checked against.

Calibration (see ``tests/test_estimate.py`` and ``benchmarks/measure_peak.py``): the tensor
accounting is mechanistic; three constants were fitted on this machine's CPU measurements of
SmolLM2-135M and a tiny Llama with SmolLM2's 49k vocabulary (batch 4 x 128, fp32, AdamW):
``_CPU_OVERHEAD_BYTES``, ``_CPU_HEAP_RETENTION`` and
``_EFFICIENCY``. Each says where it came from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError, ModelError, ResourceError

log = logging.getLogger(__name__)

Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")

# Seeds' advice: full fine-tuning only pays off with a large data set.
FULL_MIN_EXAMPLES = 20_000

# --- calibration constants -------------------------------------------------------------------
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
# Achieved fraction of the matmul probe's FLOP/s in a real training step (kernels smaller than
# 1024^2, elementwise ops, softmax over the vocabulary, optimizer). SmolLM2-135M, batch 4 x 128,
# fp32 on this 2-core CPU (benchmarks/measure_peak.py): LoRA r16 all-linear 136 tokens/s and full
# 89 tokens/s, against 207 and 146 tokens/s of pure matmul at the ~120 GFLOP/s the probe reads
# here, i.e. 0.61-0.66; TRL's loop measured ~100-110 tokens/s (DESIGN §3). 0.6 puts LoRA at ~125
# tokens/s and full at ~88, between the plain loop and TRL.
_EFFICIENCY = 0.6

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}
# Bytes of optimizer state per trainable parameter.
_OPTIMIZER_BYTES = {
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


def _nf4_bytes_per_param(double_quant: bool = True) -> float:
    if double_quant:
        return 0.5 + 1 / _NF4_BLOCK + 4 / (_NF4_BLOCK * _DQ_BLOCK)
    return 0.5 + 4 / _NF4_BLOCK


@dataclass
class Estimate:
    """Peak-memory and speed estimate of one fine-tuning configuration.

    Attributes:
        base: the base model's name (hub id, folder, or the config's ``name_or_path``).
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        device: ``"cpu"`` or ``"cuda:N"``.
        dtype: compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``).
        params_total: parameters of the base model (tied embeddings counted once).
        params_trainable: parameters the optimizer updates (all for full, adapters otherwise).
        weights_bytes: every weight in its stored dtype. Full fine-tuning in 16-bit counts the
            16-bit working copy plus the fp32 master copy (mixed precision); QLoRA counts 4-bit
            packed codes plus quantisation constants for the quantised linear layers, with
            embeddings, norms and the lm_head in compute dtype; adapters in fp32.
        gradients_bytes: gradients of the trainable parameters.
        optimizer_bytes: optimizer states of the trainable parameters.
        activations_bytes: activations kept for the backward pass at the given batch and sequence
            length, with the configured ``gradient_checkpointing``, logits/loss included.
        activations_checkpointed_bytes: the same with gradient checkpointing on, for comparison.
        overhead_bytes: runtime memory that is not the model's tensors (CUDA context, or the
            Python/torch process on CPU, plus CPU-specific leftovers).
        total_bytes: the estimated peak.
        gradient_checkpointing: whether the estimate assumes gradient checkpointing.
        tokens_per_second: estimated training throughput, None when the device's speed is
            unknown (e.g. planning for a GPU this machine does not have).
        seconds_per_epoch: ``tokens_per_epoch / tokens_per_second`` when both are known.
        seq_len: tokens per sequence assumed.
        batch_size: sequences per micro-batch assumed.
        grad_accum: gradient-accumulation steps assumed.
    """

    base: str
    method: Method
    device: str
    dtype: str
    params_total: int
    params_trainable: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int
    overhead_bytes: int
    total_bytes: int
    gradient_checkpointing: bool
    tokens_per_second: float | None = None
    seconds_per_epoch: float | None = None
    seq_len: int = 512
    batch_size: int = 4
    grad_accum: int = 1

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """An aligned, human-readable breakdown of the estimate.

        Example:
            >>> print(estimate("HuggingFaceTB/SmolLM2-135M-Instruct", "lora").table())  # doctest: +SKIP
        """
        pct = 100 * self.params_trainable / self.params_total if self.params_total else 0.0
        ckpt = "on" if self.gradient_checkpointing else "off"
        rows = [
            ("weights", _fmt_bytes(self.weights_bytes)),
            ("gradients", _fmt_bytes(self.gradients_bytes)),
            ("optimizer states", _fmt_bytes(self.optimizer_bytes)),
            (f"activations (checkpointing {ckpt})", _fmt_bytes(self.activations_bytes)),
        ]
        if not self.gradient_checkpointing:
            rows.append(
                ("  with checkpointing on", _fmt_bytes(self.activations_checkpointed_bytes))
            )
        rows += [
            ("runtime overhead", _fmt_bytes(self.overhead_bytes)),
            ("peak total", _fmt_bytes(self.total_bytes)),
        ]
        if self.tokens_per_second:
            rows.append(("throughput", f"{self.tokens_per_second:,.0f} tokens/s"))
        if self.seconds_per_epoch:
            rows.append(("time per epoch", _fmt_seconds(self.seconds_per_epoch)))
        head = (
            f"{self.method} fine-tuning of {self.base} on {self.device} ({self.dtype}), "
            f"batch {self.batch_size} x {self.seq_len} tokens\n"
            f"parameters: {self.params_total:,} total, {self.params_trainable:,} trainable "
            f"({pct:.2f}%)"
        )
        width = max(len(k) for k, _ in rows)
        vwidth = max(len(v) for _, v in rows)
        lines = [f"  {k:<{width}}  {v:>{vwidth}}" for k, v in rows]
        return head + "\n" + "\n".join(lines)


def _fmt_bytes(n: float) -> str:
    if n >= 1e12:
        return f"{n / 1e12:.2f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{int(n)} B"


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def comparison_table(estimates: dict[str, Estimate] | list[Estimate]) -> str:
    """Side-by-side breakdown of several estimates (one column per method).

    Args:
        estimates: estimates to compare, e.g. the third value returned by :func:`choose_method`.

    Returns:
        An aligned multi-line table, in decimal GB/MB.
    """
    ests = list(estimates.values()) if isinstance(estimates, dict) else list(estimates)
    fields = [
        ("trainable params", lambda e: f"{e.params_trainable:,}"),
        ("weights", lambda e: _fmt_bytes(e.weights_bytes)),
        ("gradients", lambda e: _fmt_bytes(e.gradients_bytes)),
        ("optimizer states", lambda e: _fmt_bytes(e.optimizer_bytes)),
        ("activations", lambda e: _fmt_bytes(e.activations_bytes)),
        ("grad. checkpointing", lambda e: "on" if e.gradient_checkpointing else "off"),
        ("runtime overhead", lambda e: _fmt_bytes(e.overhead_bytes)),
        ("peak total", lambda e: _fmt_bytes(e.total_bytes)),
    ]
    header = [""] + [e.method for e in ests]
    body = [[name] + [f(e) for e in ests] for name, f in fields]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = []
    for row in [header] + body:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


# --- resolving the base ----------------------------------------------------------------------


def _load_config(base: Any):
    """Return ``(config, name)`` for a config object, a local folder, or a Hub id."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(base, PretrainedConfig):
        return base, getattr(base, "name_or_path", "") or base.model_type
    if not isinstance(base, (str, os.PathLike)):
        raise ConfigError(
            f"base must be a transformers config, a model folder or a Hub id, got {type(base)!r}"
        )
    name = os.fspath(base)
    if os.path.isdir(name):
        path = os.path.join(name, "config.json")
        if not os.path.isfile(path):
            raise ModelError(
                f"{name} has no config.json; point base at a folder written by save_pretrained "
                "or at a Hub id"
            )
        folder = name
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(name, "config.json")
        except Exception as e:  # offline, not found, gated: all mean "no config to read"
            raise ModelError(
                f"could not fetch config.json of {name!r} from the Hub ({type(e).__name__}: {e}). "
                "Check the id and your network (HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN), or pass a "
                "local model folder or a transformers config instead."
            ) from e
        folder = os.path.dirname(path)
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise ModelError(f"cannot read {path} as a transformers config: {e}") from e
    return config, name


@dataclass(frozen=True)
class _Shape:
    """What the estimate needs to know about an architecture, counted on the meta device."""

    params_total: int
    embedding_params: int  # input embeddings (+ untied lm_head): never quantised
    quantisable_params: int  # nn.Linear weights bnb would quantise (all but the lm_head)
    norm_and_bias_params: int  # everything else stays in compute dtype
    lm_head_params: int  # the output projection's size (a matmul even when tied)
    linears: tuple[tuple[str, int, int], ...]  # (qualified name, in, out) of non-lm_head linears
    hidden: int
    layers: int
    heads: int
    kv_dim: int
    intermediate: int
    vocab: int
    eager_attention: bool


def _count(config) -> _Shape:
    import copy

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        # A quantised checkpoint's config would build quantised modules; we count the dense
        # architecture and apply our own quantisation accounting.
        del config.quantization_config
    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        # accelerate's init_empty_weights skips transformers' tying on meta tensors; tie
        # explicitly or tied embeddings (SmolLM2, Gemma, ...) are counted twice.
        model.tie_weights()
    except Exception as e:
        raise ModelError(
            f"transformers cannot build a causal LM from this config ({config.model_type}): {e}"
        ) from e
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    seen: set[int] = set()
    total = emb = quant = other = 0
    linears = []
    for name, mod in model.named_modules():
        is_linear = isinstance(mod, (torch.nn.Linear, Conv1D))
        for p in mod.parameters(recurse=False):
            if id(p) in seen:  # tied weights are one tensor
                continue
            seen.add(id(p))
            total += p.numel()
            if mod is in_emb or mod is out_emb:
                emb += p.numel()
            elif is_linear and p.dim() == 2:
                quant += p.numel()
            else:
                other += p.numel()
        if is_linear and mod is not out_emb:
            if isinstance(mod, Conv1D):
                fin, fout = mod.weight.shape
            else:
                fin, fout = mod.in_features, mod.out_features
            linears.append((name, int(fin), int(fout)))
    lm_head = out_emb.weight.numel() if out_emb is not None else 0
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size"))
    heads = int(getattr(text, "num_attention_heads"))
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    attn = getattr(model.config, "_attn_implementation", None)
    return _Shape(
        params_total=total,
        embedding_params=emb,
        quantisable_params=quant,
        norm_and_bias_params=other,
        lm_head_params=lm_head,
        linears=tuple(linears),
        hidden=hidden,
        layers=int(getattr(text, "num_hidden_layers")),
        heads=heads,
        kv_dim=kv_heads * int(head_dim),
        intermediate=int(inter),
        vocab=int(getattr(text, "vocab_size")),
        eager_attention=attn == "eager",
    )


_SHAPES: dict[str, _Shape] = {}


def _shape(config) -> _Shape:
    # Cached on the config's JSON so repeated estimates (choose_method: three methods, maybe
    # twice) build the meta model once; a 70B model takes a few seconds to build even on meta.
    key = type(config).__name__ + config.to_json_string(use_diff=False)
    if key not in _SHAPES:
        _SHAPES[key] = _count(config)
    return _SHAPES[key]


def _targeted(linears, target_modules) -> list[tuple[str, int, int]]:
    """The linear layers PEFT would wrap, following its matching rules."""
    if target_modules == "all-linear":
        return list(linears)
    if isinstance(target_modules, str):
        # PEFT: a string is a regex that must match the full module name.
        pat = re.compile(target_modules)
        return [t for t in linears if pat.fullmatch(t[0])]
    names = list(target_modules)
    return [t for t in linears if any(t[0] == n or t[0].endswith("." + n) for n in names)]


# --- device ----------------------------------------------------------------------------------


def _default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _normalise_device(device: str | None) -> str:
    if device is None:
        return _default_device()
    device = str(device)
    if device == "cuda":
        return "cuda:0"
    if device != "cpu" and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def _default_dtype(device: str) -> str:
    if device == "cpu":
        # bf16 matmuls run ~100x slower than fp32 on this kind of CPU (DESIGN §3).
        return "float32"
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"  # planning for a GPU we cannot see: assume a current one


def _normalise_dtype(dtype: Any, device: str) -> str:
    if dtype is None:
        return _default_dtype(device)
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ConfigError(f"dtype must be one of fp32, bf16, fp16 (or a torch dtype), got {dtype!r}")
    return _DTYPE_ALIASES[key]


_FLOPS_CACHE: dict[tuple[str, str], float] = {}


def probe_flops(device: str = "cpu", dtype: str | None = None) -> float:
    """Measure the device's matmul speed in FLOP/s (cached per process).

    Times a 1024 x 1024 matmul (fp32 on CPU, bf16 on CUDA unless ``dtype`` says otherwise) a
    few times and keeps the best run, which is what sustained GEMMs reach.

    Args:
        device: ``"cpu"`` or ``"cuda:N"``.
        dtype: matmul dtype; defaults to the training default for the device.

    Returns:
        Floating-point operations per second.

    Raises:
        ResourceError: the device is not available on this machine.
    """
    import torch

    device = _normalise_device(device)
    dtype = _normalise_dtype(dtype, device)
    key = (device, dtype)
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"cannot probe {device}: no CUDA device is visible")
    n = 1024
    tdtype = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(tdtype)
    b = torch.randn(n, n, device=device).to(tdtype)
    reps = 3 if device == "cpu" else 20

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    torch.mm(a, b)  # warm-up: thread pool / cuBLAS handle
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    flops = 2 * n**3 / best
    _FLOPS_CACHE[key] = flops
    log.debug("probe_flops(%s, %s) = %.1f GFLOP/s", device, dtype, flops / 1e9)
    return flops


# --- the estimate ----------------------------------------------------------------------------


def _activation_bytes(
    s: _Shape,
    *,
    tokens: int,
    seq_len: int,
    a: int,
    checkpointing: bool,
    targeted: list[tuple[str, int, int]],
    lora: bool,
    r: int,
    lora_dropout: float,
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
        per_token_layer += 2 * s.heads * seq_len
    layer_bytes = per_token_layer * a
    if lora:
        # Each adapter keeps A·x (r values); with dropout it also keeps its own dropped copy of
        # the input and the boolean mask (PEFT applies dropout per adapted module; tunekit's
        # trainer keeps one copy and a float mask per distinct input instead, within ~5% of
        # this on Llama-style layers). Summed over all targeted modules, then spread evenly
        # over the layers.
        extra = sum(r * a + (fin * (a + 1) if lora_dropout > 0 else 0) for _, fin, _ in targeted)
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


def estimate(
    base: Any,
    method: Method = "lora",
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    grad_accum: int = 1,
    r: int = 16,
    target_modules: str | list[str] = "all-linear",
    lora_dropout: float = 0.05,
    optimizer: str = "adamw",
    dtype: Any = None,
    device: str | None = None,
    gradient_checkpointing: bool | None = None,
    tokens_per_epoch: int | None = None,
    flops: float | None = None,
) -> Estimate:
    """Estimate peak memory and throughput of fine-tuning ``base`` with ``method``.

    Nothing is downloaded but ``config.json``; the model is counted on the meta device.

    Args:
        base: a transformers ``PretrainedConfig``, a local model folder, or a Hub id.
        method: ``"full"``, ``"lora"`` or ``"qlora"`` (4-bit NF4 with double quantisation).
        seq_len: tokens per sequence (after padding/packing).
        batch_size: sequences per micro-batch.
        grad_accum: gradient-accumulation steps. Above 1, gradients live through the next
            micro-batch's forward pass, so they add to the activations instead of replacing them.
        r: LoRA rank.
        target_modules: ``"all-linear"`` (every linear layer but the lm_head), a list of module
            names such as ``["q_proj", "v_proj"]``, or a regex matched against full names (PEFT's
            rules).
        lora_dropout: LoRA dropout; above 0 each adapter keeps a dropped copy of its input.
        optimizer: ``"adamw"``, ``"paged_adamw"``, ``"adamw_8bit"``, ``"paged_adamw_8bit"`` or
            ``"sgd"``.
        dtype: compute dtype (``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype). Defaults to
            bf16 on CUDA where supported and fp32 on CPU.
        device: ``"cpu"`` or ``"cuda:N"``; defaults to the first GPU if there is one. A GPU that
            is not present can be planned for; its throughput is then unknown.
        gradient_checkpointing: defaults to on for CUDA (memory is the scarce resource, as in the
            seed recipes) and off for CPU (recompute costs more than memory there, DESIGN §3).
        tokens_per_epoch: trained tokens in one epoch, for ``seconds_per_epoch``.
        flops: the device's matmul FLOP/s; by default measured once with :func:`probe_flops`.

    Returns:
        An :class:`Estimate`; ``print(est.table())`` shows the breakdown.

    Raises:
        ConfigError: an option is unknown or out of range (all problems reported at once).
        ModelError: the base's config cannot be found or turned into a causal LM.

    Example:
        >>> from transformers import LlamaConfig
        >>> est = estimate(LlamaConfig(), "qlora", device="cuda:0")  # doctest: +SKIP
        >>> print(est.table())  # doctest: +SKIP
    """
    problems = []
    if method not in METHODS:
        problems.append(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if not isinstance(value, int) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if method != "full" and (not isinstance(r, int) or r < 1):
        problems.append(f"r must be a positive integer, got {r!r}")
    if optimizer not in _OPTIMIZER_BYTES:
        problems.append(f"optimizer must be one of {', '.join(_OPTIMIZER_BYTES)}, got {optimizer!r}")
    if not 0 <= lora_dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    try:
        device = _normalise_device(device)
        dtype_name = _normalise_dtype(dtype, device)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)

    config, name = _load_config(base)
    s = _shape(config)
    a = _DTYPE_BYTES[dtype_name]
    on_cpu = device == "cpu"
    if gradient_checkpointing is None:
        from .methods import default_gradient_checkpointing

        gradient_checkpointing = default_gradient_checkpointing(method, cuda=not on_cpu)
    lora = method != "full"
    targeted = _targeted(s.linears, target_modules) if lora else []
    if lora and not targeted:
        raise ConfigError(f"target_modules={target_modules!r} matches no linear layer of {name}")

    # Weights, gradients and optimizer states.
    if method == "full":
        trainable = s.params_total
        if a < 4:
            # Mixed precision: the optimizer updates an fp32 master copy and the forward runs on
            # the 16-bit copy; gradients are reduced/accumulated in fp32 (DeepSpeed/FSDP defaults,
            # and what HF Trainer's autocast on an fp32 model amounts to). 2 + 4 weights, 4 grads,
            # 8 Adam = 18 B/param: with activations this is the seeds' "≈ 20 B/param" (70B ≈ 1.4 TB).
            weights = s.params_total * (a + 4)
            grads = s.params_total * 4
        else:
            weights = s.params_total * 4
            grads = s.params_total * 4
        lora_params = 0
    else:
        lora_params = sum(r * (fin + fout) for _, fin, fout in targeted)
        trainable = lora_params
        # PEFT keeps adapters in fp32 even on a 16-bit base (autocast_adapter_dtype=True).
        grads = lora_params * 4
        if method == "lora":
            frozen = s.params_total * a
        else:
            frozen = int(
                s.quantisable_params * _nf4_bytes_per_param(True)
                + (s.embedding_params + s.norm_and_bias_params) * a
            )
        weights = frozen + lora_params * 4
    optimizer_bytes = trainable * _OPTIMIZER_BYTES[optimizer]

    tokens = seq_len * batch_size
    act_kw = dict(
        tokens=tokens, seq_len=seq_len, a=a, targeted=targeted,
        lora=lora, r=r, lora_dropout=lora_dropout,
    )  # fmt: skip
    layers_plain, logits = _activation_bytes(s, checkpointing=False, **act_kw)
    layers_ckpt, _ = _activation_bytes(s, checkpointing=True, **act_kw)
    act_ckpt = layers_ckpt + logits
    act = act_ckpt if gradient_checkpointing else layers_plain + logits

    # At the peak (start of backward) the activations are all alive but most gradients are not
    # yet written; they appear layer by layer as activations are freed. With grad_accum > 1 the
    # previous micro-batches' gradients are alive throughout. The lm_head's gradient (the tied
    # embedding for SmolLM2) is written first, so it always coexists with the activations.
    if grad_accum > 1:
        dynamic = act + grads
    else:
        head_grad = s.lm_head_params * 4 if method == "full" else 0
        dynamic = max(act + head_grad, grads)
    overhead = _CUDA_OVERHEAD_BYTES if not on_cpu else _CPU_OVERHEAD_BYTES
    if on_cpu:
        overhead += int(_CPU_HEAP_RETENTION * layers_plain)
    total = weights + optimizer_bytes + dynamic + overhead

    # Throughput: matmul FLOPs per trained token. Forward is 2 FLOPs per weight; backward is 2
    # for the input gradient plus 2 for the weight gradient, the latter skipped for frozen
    # weights (LoRA/QLoRA: ≈ 4·N). The lm_head runs on every position even when tied. Attention
    # scores add 2·2·seq·h per layer forward (halved by the causal mask), ×3 with backward.
    matmul_params = s.quantisable_params + s.lm_head_params
    per_token = (6 if method == "full" else 4) * matmul_params + 6 * lora_params
    per_token += 3 * 2 * s.layers * seq_len * s.hidden
    if gradient_checkpointing:
        per_token += 2 * matmul_params  # the recomputed forward of every layer
    tps = None
    if flops is None:
        try:
            flops = probe_flops(device, dtype_name)
        except ResourceError:
            log.info("throughput unknown: %s is not available to probe", device)
    if flops:
        tps = flops * _EFFICIENCY / per_token
    spe = tokens_per_epoch / tps if (tps and tokens_per_epoch) else None

    return Estimate(
        base=name,
        method=method,  # type: ignore[arg-type]
        device=device,
        dtype=dtype_name,
        params_total=s.params_total,
        params_trainable=trainable,
        weights_bytes=int(weights),
        gradients_bytes=int(grads),
        optimizer_bytes=int(optimizer_bytes),
        activations_bytes=act,
        activations_checkpointed_bytes=act_ckpt,
        overhead_bytes=int(overhead),
        total_bytes=int(total),
        gradient_checkpointing=gradient_checkpointing,
        tokens_per_second=tps,
        seconds_per_epoch=spe,
        seq_len=seq_len,
        batch_size=batch_size,
        grad_accum=grad_accum,
    )


def fits(est: Estimate, free_bytes: int, margin: float = 0.2) -> bool:
    """Whether ``est`` fits in ``free_bytes`` with ``margin`` to spare.

    Args:
        est: the estimate.
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
    device = _normalise_device(device)
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


def choose_method(
    base: Any,
    *,
    n_examples: int,
    device: str | None = None,
    free_bytes: int | None = None,
    margin: float = 0.2,
    **kw: Any,
) -> tuple[str, str, dict[str, Estimate]]:
    """Pick full, LoRA or QLoRA for this base, data size and machine (``method="auto"``).

    The seeds' advice: LoRA when it fits free memory with a margin; QLoRA when only it fits;
    full fine-tuning only for large data sets (at least 20,000 examples) and when it fits.
    When gradient checkpointing is left to the default and a method does not fit without it,
    that method is re-estimated with checkpointing on before giving up on it.

    Args:
        base: as for :func:`estimate`.
        n_examples: training examples in the data set.
        device: as for :func:`estimate`.
        free_bytes: memory available; measured with :func:`free_memory` when None.
        margin: reserve kept free, as a fraction of each estimate (see :func:`fits`).
        **kw: passed to :func:`estimate` (``seq_len``, ``batch_size``, ``r``, ...).

    Returns:
        ``(method, reason, estimates)``: the method, a one-line reason, and the estimate per
        method that the decision used.

    Raises:
        ResourceError: no method fits; ``breakdown`` holds the estimates and the message the
            side-by-side table.
    """
    if "method" in kw:
        raise ConfigError("choose_method picks the method; do not pass method=")
    device = _normalise_device(device)
    if free_bytes is None:
        free_bytes = free_memory(device)
    auto_ckpt = kw.get("gradient_checkpointing") is None
    ests: dict[str, Estimate] = {}
    ok: dict[str, bool] = {}
    for m in METHODS:
        est = estimate(base, m, device=device, **kw)
        if not fits(est, free_bytes, margin) and auto_ckpt and not est.gradient_checkpointing:
            est = estimate(base, m, device=device, **{**kw, "gradient_checkpointing": True})
        ests[m] = est
        ok[m] = fits(est, free_bytes, margin)

    def need(m: str) -> str:
        e = ests[m]
        ck = ", gradient checkpointing on" if e.gradient_checkpointing else ""
        return f"needs ~{_fmt_bytes(e.total_bytes)} of {_fmt_bytes(free_bytes)} free{ck}"

    if n_examples >= FULL_MIN_EXAMPLES and ok["full"]:
        return "full", f"full: {n_examples:,} examples is enough data and it {need('full')}", ests
    big = n_examples >= FULL_MIN_EXAMPLES
    why_not_full = (
        "full fine-tuning does not fit"
        if big
        else f"full fine-tuning pays off from {FULL_MIN_EXAMPLES:,} examples ({n_examples:,} given)"
    )
    if ok["lora"]:
        return "lora", f"lora: it {need('lora')}; {why_not_full}", ests
    if ok["qlora"]:
        return "qlora", f"qlora: only the 4-bit base fits; it {need('qlora')}", ests
    table = comparison_table(ests)
    raise ResourceError(
        f"no fine-tuning method fits in {_fmt_bytes(free_bytes)} free on {device} (keeping a "
        f"{margin:.0%} margin); even QLoRA {need('qlora')}.\n{table}\n"
        "Reduce seq_len or batch_size (raise grad_accum to keep the effective batch), lower r, "
        "or use a smaller base or a bigger device.",
        breakdown=ests,
    )
