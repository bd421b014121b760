"""Cheaper equivalents of three per-layer costs of a LoRA training step, with the same results.

Measured on a 2-core CPU with SmolLM2-135M (docs/performance.md), where these costs came next
after the matmuls:

- **LoRA dropout** (:class:`SharedDropout`): PEFT gives every adapted linear its own
  ``nn.Dropout``, so q, k and v (and gate and up) each draw a mask over the same hidden states,
  and ``bernoulli_`` and boolean masks are slow here. One mask per distinct input, made as a
  0/1 float tensor from 8 (or 16) random bits per element.
- **The LoRA branch** (:class:`FusedForward`): PEFT computes ``result + B(A(drop(x))) *
  scaling`` with a separate scale, multiply and add over the layer's whole output (and their
  backward). Here it is one ``addmm`` with the scaling (and dropout's ``1/(1-p)``) as its
  ``alpha``, applied to the small rank-r product.
- **Attention over flattened rows** (:func:`packed_attention`): padding-free batches carry the
  rows' boundaries (``cu_seq_lens_q``); SDPA with a block-diagonal mask computes every row
  against every other and then masks, and cannot use grouped-query attention with a mask on CPU.
  Attending within each row (``is_causal``) does a quarter of the work for four rows. On CUDA
  (bf16/fp16, Ampere or newer) :func:`varlen_attention` hands the whole flattened batch and its
  boundaries to torch's flash varlen kernel instead: one kernel per layer, no mask, no split.

:class:`tunekit.trainer.Trainer` applies them unless its ``fastpath`` switch is off
(``fastpath=False`` or ``TUNEKIT_FASTPATH=0``), which leaves PEFT's and transformers' own code.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

# Imported here, not lazily, to define the fused layer classes: the trainer imports this module
# after TRL's SFTTrainer has loaded peft (and bitsandbytes, which peft imports) anyway.
from peft.tuners.lora.layer import Linear as _LoraLinear


def causal_lm_of(model):
    """The ``*ForCausalLM`` module inside a PEFT wrapper (LoRA layers are injected in place, so
    calling its parts directly still runs the adapters)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# --- dropout ---------------------------------------------------------------------------------


def _lanes(p: float) -> tuple[int, int]:
    """``(bits, drops)``: random bits per element and how many of their ``2**bits`` values drop.

    8 bits when ``p`` rounds to a multiple of 1/256 within 2% of itself (0.05 -> 13/256 =
    0.0508, 0.1 -> 0.1016): half the random draws of 16 bits, which take half of the mask's
    time here. Other rates (0.01 would be 0.0117) use 16 bits (0.05 -> 0.0500031).
    """
    drops = round(p * 256)
    if 0 < drops < 256 and abs(drops / 256 - p) <= 0.02 * p:
        return 8, drops
    return 16, min(round(p * 65536), 65535)  # at least one kept value: p -> 1 must not divide by 0


def drop_rate(p: float) -> float:
    """The drop probability :func:`dropout_mask` really uses for a requested ``p``."""
    bits, drops = _lanes(p)
    return drops / 2**bits


def dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A 0/1 keep-mask shaped like ``x`` (in its dtype) and the scale ``1/(1-p')``.

    ``bernoulli_`` costs ~9 ns per element on this CPU; one 64-bit draw gives eight 8-bit or
    four 16-bit lanes. The drop probability is rounded to the lanes' resolution (see
    :func:`drop_rate`) and the scale uses the rounded value, so the expectation is exact. The
    mask is made with float arithmetic (``clamp(r - t + 1, 0, 1)`` is 1 exactly when the
    integer lane ``r >= t``) because boolean masks are ~8x slower to apply here than a float
    multiply.
    """
    bits, drops = _lanes(p)
    values = 2**bits
    per_draw = 64 // bits
    n = x.numel()
    lanes = torch.randint(-(2**63), 2**63 - 1, ((n + per_draw - 1) // per_draw,), dtype=torch.int64, device=x.device)
    # Signed lanes span [-values/2, values/2).
    lanes = lanes.view(torch.int8 if bits == 8 else torch.int16)[:n].view(x.shape)
    # Exact in fp32 (a 16-bit float cannot hold every 16-bit lane); 0 and 1 are exact in any dtype.
    keep = lanes.to(torch.float32).add_(values // 2 - drops + 1).clamp_(0, 1)  # 1 where lane >= drops - values/2
    return keep.to(x.dtype), values / (values - drops)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (``x * mask / (1 - p)``) with :func:`dropout_mask`."""
    if drop_rate(p) == 0:
        return x
    keep, scale = dropout_mask(x, p)
    return x * keep * scale


class _LastDropout:
    """The last input a :class:`SharedDropout` saw and its masked copy (one per model)."""

    __slots__ = ("ref", "version", "p", "masked", "scale")

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.ref = self.version = self.p = self.masked = None
        self.scale = 1.0

    # A weakref cannot be pickled or deep-copied; the cache is only valid inside one forward anyway.
    def __getstate__(self):
        return None

    def __setstate__(self, state):
        self.clear()

    def __deepcopy__(self, memo):
        return _LastDropout()


class SharedDropout(torch.nn.Module):
    """LoRA dropout that reuses the mask when the next adapted layer reads the same tensor.

    Sharing one mask per input is what PEFT already does for models with a fused qkv projection;
    each adapter still sees its input dropped at rate ``p``. :meth:`masked` returns the input
    with dropped elements zeroed and the scale separately, so :class:`FusedForward` can fold
    the scale into its ``addmm``; calling the module returns the scaled input like ``nn.Dropout``.
    """

    def __init__(self, p: float, last: _LastDropout):
        super().__init__()
        self.p = p
        self.last = last

    def masked(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(x * keep, 1/(1-p))``; ``(x, 1.0)`` in eval mode."""
        if not self.training or drop_rate(self.p) == 0:
            self.last.clear()
            return x, 1.0
        last = self.last
        if last.ref is not None and last.ref() is x and last.version == x._version and last.p == self.p:
            return last.masked, last.scale
        keep, scale = dropout_mask(x, self.p)
        masked = x * keep
        last.ref, last.version, last.p, last.masked, last.scale = weakref.ref(x), x._version, self.p, masked, scale
        return masked, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masked, scale = self.masked(x)
        return masked if scale == 1.0 else masked * scale

    def extra_repr(self) -> str:
        return f"p={self.p}, shared"


# --- the LoRA branch -------------------------------------------------------------------------


class FusedForward:
    """Mixed into PEFT's LoRA linear classes: the vanilla single-adapter forward as
    ``addmm(base(x), A·drop(x), Bᵀ, alpha=scaling/(1-p))``. Anything else (merged weights,
    several or mixed adapters, DoRA and other variants, LoRA bias, autocast, mixed dtypes) goes
    to PEFT's own forward."""

    # bitsandbytes' 4-bit layer returns a view of a tensor made inside its autograd function, and
    # autograd refuses in-place changes to it (PEFT clones it for the same reason).
    copy_base_output = False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fusable_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        if result.dtype != x.dtype:
            return super().forward(x, *args, **kwargs)
        drop = self.lora_dropout[name]
        if isinstance(drop, SharedDropout):
            masked, scale = drop.masked(x)
        else:
            masked, scale = drop(x), 1.0
        h = F.linear(masked, self.lora_A[name].weight)
        # In place: the base layer's backward does not need its output, and addmm (out of place)
        # would first copy it into a new tensor.
        if self.copy_base_output and torch.is_grad_enabled():
            result = result.clone()
        if not result.is_contiguous():
            result = result.contiguous()
        result.view(-1, result.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), self.lora_B[name].weight.t(),
                                                 alpha=self.scaling[name] * scale)
        return result

    def _fusable_adapter(self, x, args, kwargs) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = self.active_adapters
        if len(active) != 1:
            return None
        name = active[0]
        if (name not in self.lora_A or name in getattr(self, "lora_variant", {})
                or getattr(self, "lora_bias", {}).get(name, False)):
            return None
        a, b = self.lora_A[name], self.lora_B[name]
        if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear:
            return None
        if x.dtype != a.weight.dtype or torch.is_autocast_enabled(x.device.type):
            return None
        return name


# PEFT's LoRA linear classes with the fused forward mixed in, defined at module level so that
# models holding them can be pickled. fuse_lora_layers switches the class of PEFT's own layers:
# PEFT's one hook for other LoRA layers (``LoraConfig._register_custom_module``) is private and
# experimental, acts only when adapters are injected (not on a model already wrapped or loaded
# with its adapter), and is keyed by the base layer's type, so a 4-bit layer (a subclass of
# nn.Linear) would need bitsandbytes' dispatch rebuilt. The mixin adds no state, so the layer, its
# parameters and saved files stay PEFT's, and setting ``__class__`` back undoes it.


class FusedLinear(FusedForward, _LoraLinear):
    """PEFT's ``lora.Linear`` with :class:`FusedForward`'s forward."""


FUSED_CLASSES: dict[type, type] = {_LoraLinear: FusedLinear}

try:
    from peft.tuners.lora.bnb import Linear4bit as _LoraLinear4bit
except ImportError:  # bitsandbytes missing (or without 4-bit support): no 4-bit layers to fuse
    pass
else:

    class FusedLinear4bit(FusedForward, _LoraLinear4bit):
        """PEFT's bitsandbytes ``Linear4bit`` with :class:`FusedForward`'s forward."""

        copy_base_output = True

    FUSED_CLASSES[_LoraLinear4bit] = FusedLinear4bit


def fuse_lora_layers(model) -> dict[str, int]:
    """Give every LoRA linear of ``model`` the fused forward and a :class:`SharedDropout` (in
    place; parameters, adapter configs and saved files are unchanged).

    Returns:
        ``{"dropouts": n, "layers": m}``: dropouts replaced and layers given the fused forward.
    """
    last = _LastDropout()
    counts = {"dropouts": 0, "layers": 0}
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, d in drops.items():
                if type(d) is torch.nn.Dropout and d.p > 0:
                    drops[name] = SharedDropout(d.p, last)
                    drops[name].train(d.training)
                    counts["dropouts"] += 1
        # The exact classes only: a subclass may have changed the forward this reproduces.
        fused = FUSED_CLASSES.get(type(module))
        if fused is not None:
            module.__class__ = fused  # why a class switch: see FUSED_CLASSES
            counts["layers"] += 1
    return counts


# --- attention within rows -------------------------------------------------------------------

PACKED_ATTENTION = "tunekit_packed_sdpa"
VARLEN_ATTENTION = "tunekit_varlen"
# The registered attention function of each kernel ``attention_within_rows`` can switch to.
KERNELS = {"rows": PACKED_ATTENTION, "varlen": VARLEN_ATTENTION}


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: SDPA within each row of a flattened (padding-free) batch.

    Used when the batch carries ``cu_seq_lens_q`` (TRL's padding-free collator adds the rows'
    boundaries) and nothing else shapes the scores; otherwise it is transformers' own SDPA, with
    the mask transformers built for it (the block-diagonal one included).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    plain = bounds is not None and _plain_causal(module, query, key, kwargs)
    lengths = _row_lengths(bounds) if plain else None
    if lengths is None or sum(lengths) != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    # split (not slicing): its backward is one concatenation, not a zero-filled copy per row.
    rows = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(rows, 2).transpose(1, 2).contiguous(), None


def _plain_causal(module, query, key, kwargs) -> bool:
    # One flattened batch, no KV cache, and nothing but causality shaping the scores.
    return (query.shape[0] == 1 and query.shape[2] == key.shape[2] and getattr(module, "is_causal", True)
            and getattr(module, "sliding_window", None) is None
            and not any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux", "sinks",
                                                            "position_bias")))


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: torch's flash varlen kernel over a padding-free batch.

    TRL's padding-free collator passes the rows' boundaries (``cu_seq_lens_q``/``_k``, computed
    on the CPU from ``position_ids``) and the longest row (``max_length_q``/``_k``), exactly what
    ``torch.nn.attention.varlen.varlen_attn`` takes: the whole batch attends causally within rows
    in one kernel, with no mask and no device synchronisation. Anything the kernel does not
    cover — CPU tensors, fp32, attention dropout, a KV cache, sliding windows, soft-capping — goes
    to :func:`packed_attention` (which itself falls back to transformers' SDPA).
    """
    bounds = kwargs.get("cu_seq_lens_q")
    if (bounds is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16) or dropout
            or not _plain_causal(module, query, key, kwargs)):
        return packed_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                **kwargs)
    from torch.nn.attention.varlen import varlen_attn

    # (1, heads, tokens, dim) -> (tokens, heads, dim): the projections' own layout, so no copy.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    options = _varlen_options()
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in options:
            options["enable_gqa"] = True
        else:  # an older torch: repeat the key/value heads as transformers' eager attention does
            groups = query.shape[1] // key.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bounds_k = kwargs.get("cu_seq_lens_k", bounds)
    longest_q = kwargs.get("max_length_q") or max(_row_lengths(bounds))
    longest_k = kwargs.get("max_length_k") or longest_q
    out = varlen_attn(q, k, v, bounds.to(torch.int32), bounds_k.to(torch.int32), int(longest_q), int(longest_k),
                      scale=scaling, **options)
    return out.unsqueeze(0), None


_VARLEN_OPTIONS: dict | None = None


def _varlen_options() -> dict:
    """The causal and grouped-query keywords of this torch's ``varlen_attn`` (2.9 took
    ``is_causal``; later versions a ``window_size``, and ``enable_gqa``)."""
    global _VARLEN_OPTIONS
    if _VARLEN_OPTIONS is None:
        import inspect

        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        options = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        if "enable_gqa" in params:
            options["enable_gqa"] = False
        _VARLEN_OPTIONS = options
    return dict(_VARLEN_OPTIONS)


# Every layer receives the same boundaries tensor; reading it once per forward, not once per
# layer, saves a device synchronisation per layer on a GPU.
_last_bounds: list = [None, None]


def _row_lengths(bounds: torch.Tensor) -> list[int]:
    ref, lengths = _last_bounds
    if ref is None or ref() is not bounds:
        lengths = bounds.diff().tolist()
        _last_bounds[:] = [weakref.ref(bounds), lengths]
    return lengths


def _register_packed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for name, function in ((PACKED_ATTENTION, packed_attention), (VARLEN_ATTENTION, varlen_attention)):
        AttentionInterface.register(name, function)
        # Masks are built exactly as for SDPA, which both fall back to.
        AttentionMaskInterface.register(name, sdpa_mask)


@contextlib.contextmanager
def attention_within_rows(model, kernel: str = "rows"):
    """While inside, a model using transformers' SDPA attends within each row of padding-free
    batches; other models are left alone. The model's setting is restored on exit.

    Args:
        model: the model (a PEFT wrapper or the causal LM itself).
        kernel: ``"rows"``: :func:`packed_attention` (SDPA on each row); ``"varlen"``:
            :func:`varlen_attention` (torch's flash varlen kernel on CUDA).

    Switched with transformers' ``set_attn_implementation``, which accepts a registered attention
    function's name and checks that the model supports it. The current setting is read from
    ``config._attn_implementation``, as transformers itself does: it has no public getter.

    Yields:
        True when the model now attends within rows, False when it was left alone.
    """
    lm = causal_lm_of(model)
    config = getattr(lm, "config", None)
    if (config is None or not hasattr(lm, "set_attn_implementation")
            or getattr(config, "_attn_implementation", None) != "sdpa"):
        yield False
        return
    name = KERNELS[kernel]
    _register_packed_attention()
    lm.set_attn_implementation(name)
    if config._attn_implementation != name:  # a model that cannot switch (transformers warned)
        yield False
        return
    try:
        yield True
    finally:
        lm.set_attn_implementation("sdpa")
