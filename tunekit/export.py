"""Merging an adapter into its base, and exporting a fine-tune as GGUF.

- :func:`merge` folds a LoRA/QLoRA adapter into the base weights (PEFT's ``merge_and_unload``)
  and writes a plain transformers model folder (safetensors) that loads without PEFT.
- :func:`export_gguf` writes a single GGUF file (through :mod:`tunekit.gguf`) that llama.cpp and
  transformers (``from_pretrained(folder, gguf_file=…)``) read, the chat template in its metadata.
  Llama-architecture models only (SmolLM2, Llama 2/3, TinyLlama…), tensors in F16 or F32.

These functions take a folder, its run record and a way to find its base; ``TuneResult.merge``
and ``TuneResult.export_gguf`` are the usual way in.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import adapters, models
from .errors import ConfigError, ModelError
from .folders import check_new, write_atomically
from .gguf import GGUF_TYPES, write_gguf
from .placement import Placement
from .record import RunInfo

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


# -- merging ---------------------------------------------------------------------------------------
def merged_model(folder: str | os.PathLike, base: models.Base, *, run: RunInfo, dtype: str | None = None,
                 trust_remote_code: bool = False, source: str | None = None) -> tuple[Any, Any]:
    """The adapter folded into an unquantised copy of its base, in memory (on the CPU).

    Args:
        folder: the adapter's folder.
        base: its resolved base (``TuneResult.resolve_base()``).
        run: the folder's record (for the method: QLoRA adapters warn).
        dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype from its config
            (float32 when it names none).
        trust_remote_code: run model code shipped with the base.
        source: the adapter's name for messages (repo id or folder); default: ``folder``.

    Returns:
        ``(model, tokenizer)``: a plain ``*ForCausalLM`` without PEFT, and the run's tokenizer.

    Raises:
        ModelError: the adapter does not fit its base, or merging fails.
    """
    source = source or str(folder)
    torch_dtype = _torch_dtype(dtype or _config_dtype(base.path))
    if run.method == "qlora":
        warnings.warn(
            f"{source} is a QLoRA adapter: it was trained over the 4-bit NF4 "
            "weights of its base, and is merged into the de-quantised (full-precision) base. The two differ by "
            "the 4-bit rounding, so the merged model's answers can differ slightly from the adapter's over the "
            "4-bit base; compare a few prompts, or keep serving the adapter if you need exactly its answers.",
            UserWarning, stacklevel=3)
    # Always the unquantised base on the CPU: merging into 4-bit weights would round the adapter
    # away, and the merged weights are what gets written.
    peft_model, tokenizer = adapters.open_adapter(folder, base, where=Placement("cpu", torch_dtype),
                                                  trust_remote_code=trust_remote_code, adapter=source)
    try:
        # safe_merge checks the merged weights for NaNs before replacing the originals.
        merged = peft_model.merge_and_unload(safe_merge=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"could not merge the adapter in {folder} into {base.name!r}: {e}") from e
    merged.eval()
    # The folder must name the base it came from, not a local cache path.
    merged.config._name_or_path = base.name
    return merged, tokenizer


def merge(folder: str | os.PathLike, output_dir: str | os.PathLike, *, run: RunInfo,
          resolve_base: Callable[[], models.Base], dtype: str | None = None, trust_remote_code: bool = False,
          source: str | None = None) -> Path:
    """Write the adapter merged into its base as a plain transformers model folder.

    The folder holds ``model.safetensors`` (sharded when large), ``config.json``,
    ``generation_config.json``, the tokenizer with the chat template the run was trained with, and
    a short model card; ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it without PEFT.

    Args:
        folder: the adapter's folder.
        output_dir: a new (or empty) folder; an existing model is never overwritten.
        run: the folder's record.
        resolve_base: finds the adapter's base (called once the checks pass).
        dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype.
        trust_remote_code: run model code shipped with the base.
        source: the adapter's name for messages and the card (repo id or folder).

    Returns:
        ``output_dir`` as a Path.

    Raises:
        ConfigError: ``output_dir`` exists and is not empty, or ``dtype`` is unknown.
        ModelError: nothing to merge (a full fine-tune) or the adapter does not fit its base.

    Warns:
        UserWarning: for QLoRA adapters, which were trained against 4-bit rounded weights.

    Example:
        >>> tunekit.load("alice/show-notes-lora").merge("show-notes-merged")
    """
    source = source or str(folder)
    out = check_new(output_dir)
    if not run.adapter:
        raise ModelError(
            f"{source} is a full fine-tune, not an adapter: its folder is "
            "already a plain transformers model, so there is nothing to merge")
    model, tokenizer = merged_model(folder, resolve_base(), run=run, dtype=dtype,
                                    trust_remote_code=trust_remote_code, source=source)
    write_atomically(out, lambda tmp: _save_merged(model, tokenizer, tmp, run=run, source=source))
    log.info("merged %s into %s: %s", source, run.base, out)
    return out


def _save_merged(model, tokenizer, folder: Path, *, run: RunInfo, source: str) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    card = {
        "base_model": run.base,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["tunekit", "merged", run.method],
    }
    header = f"license: {json.dumps(run.base_license)}\n" if run.base_license else ""
    header += "".join(f"{k}: {json.dumps(v)}\n" for k, v in card.items())
    note = ("\nThe adapter was trained over the 4-bit (NF4) base and merged into the full-precision base; "
            "answers can differ slightly from the adapter's.\n") if run.method == "qlora" else ""
    (folder / "README.md").write_text(
        f"---\n{header}---\n# {Path(source).name} (merged)\n\n"
        f"The {run.method} adapter `{source}` merged into `{run.base}` by tunekit: a plain transformers "
        f"model that loads without PEFT.\n{note}\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "model = AutoModelForCausalLM.from_pretrained(\"<this folder or repo>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<this folder or repo>\")\n```\n")


# -- GGUF ------------------------------------------------------------------------------------------
def export_gguf(folder: str | os.PathLike, path: str | os.PathLike, *, run: RunInfo,
                resolve_base: Callable[[], models.Base], dtype: str = "f16", trust_remote_code: bool = False,
                source: str | None = None) -> Path:
    """Write a fine-tune (an adapter is merged first) as one GGUF file.

    The file carries the weights in llama.cpp's layout, the tokenizer (byte-level BPE vocabulary,
    merges, token types, bos/eos/pad ids) and the chat template (``tokenizer.chat_template``).
    llama.cpp, Ollama, LM Studio and ``transformers`` (``from_pretrained(folder, gguf_file=name)``)
    read it.

    Args:
        folder: the fine-tune's folder, adapter or full model.
        path: the ``.gguf`` file to write; an existing file is never overwritten.
        run: the folder's record.
        resolve_base: finds an adapter's base (not called for a full model).
        dtype: "f16" (half the size) or "f32" (bit-exact with the fp32 model) for the weight
            matrices; norms are always F32, as llama.cpp writes them.
        trust_remote_code: run model code shipped with the model or base.
        source: the fine-tune's name (repo id or folder); its last part names the GGUF model.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: the file exists, or ``dtype`` is not f16/f32.
        ModelError: the architecture or tokenizer is one this exporter does not write.

    Example:
        >>> tunekit.load("alice/show-notes-lora").export_gguf("show-notes.f16.gguf")
    """
    if dtype not in GGUF_TYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(GGUF_TYPES)}")
    target = Path(path).expanduser()
    if target.exists():
        raise ConfigError(f"{target} already exists; tunekit does not overwrite it. Choose another path.")
    if target.suffix != ".gguf":
        raise ConfigError(f"{target} should end in .gguf (llama.cpp tools look for that)")
    source = source or str(folder)
    if run.adapter:
        model, tokenizer = merged_model(folder, resolve_base(), run=run, dtype="float32",
                                        trust_remote_code=trust_remote_code, source=source)
    else:
        import torch

        tokenizer = models.load_tokenizer(folder)
        model = models.load_model(folder, where=Placement("cpu", torch.float32), trust_remote_code=trust_remote_code)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write_gguf(model, tokenizer, tmp, dtype=dtype, name=Path(source).name)
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, %.1f MB)", target, dtype, target.stat().st_size / 1e6)
    return target


# -- helpers ---------------------------------------------------------------------------------------
def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _config_dtype(path: Path) -> str:
    cfg = models.read_model_config(path)
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
    return name if name in DTYPES else "float32"
