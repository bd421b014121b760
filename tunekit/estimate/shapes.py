"""What the estimate knows about an architecture: its config, and its parameters and linear layers
counted on PyTorch's ``meta`` device (no weights, no download beyond ``config.json``), so any
causal-LM architecture transformers knows can be counted."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ModelError


def load_config(base: Any) -> tuple[Any, str]:
    """``(config, name)`` for a transformers config object, a local model folder, or a Hub id.

    Raises:
        ConfigError: ``base`` is none of those types.
        ModelError: the folder has no config.json, the Hub has none to give, or it is not a
            transformers config.
    """
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
        path = _download_config(name)
        folder = os.path.dirname(path)
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise ModelError(f"cannot read {path} as a transformers config: {e}") from e
    return config, name


def _download_config(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, "config.json")
    except Exception as e:  # offline, not found, gated: all mean "no config to read"
        raise ModelError(
            f"could not fetch config.json of {repo_id!r} from the Hub ({type(e).__name__}: {e}). "
            "Check the id and your network (HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN), or pass a "
            "local model folder or a transformers config instead."
        ) from e


@dataclass(frozen=True)
class Shape:
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


def _meta_model(config):
    import copy

    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

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
    return model


def _count_parameters(model) -> tuple[int, int, int, int, list[tuple[str, int, int]]]:
    """``(total, embedding, quantisable, other, linears)`` of a (meta) model."""
    import torch
    from transformers.pytorch_utils import Conv1D

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
    return total, emb, quant, other, linears


def count(config) -> Shape:
    """Count ``config``'s causal LM on the meta device (uncached: see :func:`shape_of`).

    Raises:
        ModelError: transformers cannot build a causal LM from the config.
    """
    model = _meta_model(config)
    total, emb, quant, other, linears = _count_parameters(model)
    out_emb = model.get_output_embeddings()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size"))
    heads = int(getattr(text, "num_attention_heads"))
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return Shape(
        params_total=total,
        embedding_params=emb,
        quantisable_params=quant,
        norm_and_bias_params=other,
        lm_head_params=out_emb.weight.numel() if out_emb is not None else 0,
        linears=tuple(linears),
        hidden=hidden,
        layers=int(getattr(text, "num_hidden_layers")),
        heads=heads,
        kv_dim=kv_heads * int(head_dim),
        intermediate=int(inter),
        vocab=int(getattr(text, "vocab_size")),
        eager_attention=getattr(model.config, "_attn_implementation", None) == "eager",
    )


_SHAPES: dict[str, Shape] = {}


def shape_of(config) -> Shape:
    """:func:`count`, cached per process on the config's JSON.

    Repeated estimates (choose_method: three methods, maybe twice) build the meta model once; a
    70B model takes a few seconds to build even on meta.
    """
    key = type(config).__name__ + config.to_json_string(use_diff=False)
    if key not in _SHAPES:
        _SHAPES[key] = count(config)
    return _SHAPES[key]


def targeted(linears, target_modules: str | list[str]) -> list[tuple[str, int, int]]:
    """The linear layers PEFT would wrap for ``target_modules``, following its matching rules:
    ``"all-linear"``, a regex matched against full names, or a list of (suffix) names."""
    if target_modules == "all-linear":
        return list(linears)
    if isinstance(target_modules, str):
        pat = re.compile(target_modules)
        return [t for t in linears if pat.fullmatch(t[0])]
    names = list(target_modules)
    return [t for t in linears if any(t[0] == n or t[0].endswith("." + n) for n in names)]


def lora_parameters(linears: list[tuple[str, int, int]], r: int) -> int:
    """Parameters of rank-``r`` LoRA adapters (A: r x in, B: out x r) on ``linears``."""
    return sum(r * (fin + fout) for _, fin, fout in linears)
