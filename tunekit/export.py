"""Merging an adapter into its base, and exporting a model as GGUF.

- :func:`merge` folds a LoRA/QLoRA adapter into the base weights (PEFT's ``merge_and_unload``)
  and writes a plain transformers model folder (safetensors) that loads without PEFT.
- :func:`export_gguf` writes a single GGUF file (with the ``gguf`` library) that llama.cpp and
  transformers (``from_pretrained(folder, gguf_file=…)``) read, the chat template in its metadata.
  Llama-architecture models only (SmolLM2, Llama 2/3, TinyLlama…), tensors in F16 or F32; the
  layout follows llama.cpp's own ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import models
from .errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .result import TuneResult

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("f16", "f32")

# llama.cpp's token types (gguf.TokenType), spelled out so this module imports gguf lazily.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


# -- merging ---------------------------------------------------------------------------------------
def merged_model(result: "TuneResult", *, dtype: str | None = None) -> tuple[Any, Any]:
    """The adapter folded into an unquantised copy of its base, in memory (on the CPU).

    Args:
        result: an adapter run (``tunekit.load(...)`` or ``finetune(...)``).
        dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype from its config
            (float32 when it names none).

    Returns:
        ``(model, tokenizer)``: a plain ``*ForCausalLM`` without PEFT, and the run's tokenizer.

    Raises:
        ModelError: the result is a full fine-tune (nothing to merge) or the adapter does not fit.
    """
    from peft import PeftModel

    if not result.adapter:
        raise ModelError(
            f"{result.repo_id or result.output_dir} is a full fine-tune, not an adapter: its folder is "
            "already a plain transformers model, so there is nothing to merge")
    base = result._resolve_base()
    torch_dtype = _torch_dtype(dtype or _config_dtype(base.path))
    if result.method == "qlora":
        warnings.warn(
            f"{result.repo_id or result.output_dir} is a QLoRA adapter: it was trained over the 4-bit NF4 "
            "weights of its base, and is merged into the de-quantised (full-precision) base. The two differ by "
            "the 4-bit rounding, so the merged model's answers can differ slightly from the adapter's over the "
            "4-bit base; compare a few prompts, or keep serving the adapter if you need exactly its answers.",
            UserWarning, stacklevel=3)
    from .result import has_tokenizer

    tokenizer = models.load_tokenizer(result.output_dir if has_tokenizer(result.output_dir) else base.path)
    # Always the unquantised base on the CPU: merging into 4-bit weights would round the adapter
    # away, and the merged weights are what gets written.
    model = models.load_model(base.path, where=models.Placement("cpu", torch_dtype),
                              trust_remote_code=result._trust())
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    problems = models.adapter_mismatches(models.linear_shapes(model), result.output_dir)
    if problems:
        raise ModelError(f"the adapter in {result.output_dir} does not fit base {base.name!r}: " + "; ".join(problems))
    try:
        peft_model = PeftModel.from_pretrained(model, str(result.output_dir))
        # safe_merge checks the merged weights for NaNs before replacing the originals.
        merged = peft_model.merge_and_unload(safe_merge=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"could not merge the adapter in {result.output_dir} into {base.name!r}: {e}") from e
    merged.eval()
    # The folder must name the base it came from, not a local cache path.
    merged.config._name_or_path = base.name
    return merged, tokenizer


def merge(result: "TuneResult", out_dir: str | os.PathLike, *, dtype: str | None = None) -> Path:
    """Write the adapter merged into its base as a plain transformers model folder.

    The folder holds ``model.safetensors`` (sharded when large), ``config.json``,
    ``generation_config.json``, the tokenizer with the chat template the run was trained with, and
    a short model card; ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it without PEFT.

    Args:
        result: an adapter run (``tunekit.load(...)`` or ``finetune(...)``).
        out_dir: a new (or empty) folder; an existing model is never overwritten.
        dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: ``out_dir`` exists and is not empty, or ``dtype`` is unknown.
        ModelError: nothing to merge (a full fine-tune) or the adapter does not fit its base.

    Warns:
        UserWarning: for QLoRA adapters, which were trained against 4-bit rounded weights.

    Example:
        >>> tunekit.load("alice/show-notes-lora").merge("show-notes-merged")
    """
    out = _new_folder(out_dir)
    model, tokenizer = merged_model(result, dtype=dtype)
    _write_atomically(out, lambda tmp: _save_merged(model, tokenizer, tmp, result))
    log.info("merged %s into %s: %s", result.repo_id or result.output_dir, result.base, out)
    return out


def _save_merged(model, tokenizer, folder: Path, result: "TuneResult") -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    source = result.repo_id or str(result.output_dir)
    card = {
        "base_model": result.base,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["tunekit", "merged", result.method],
    }
    license_id = result.run.get("base_license")
    header = "".join(f"{k}: {json.dumps(v)}\n" for k, v in ({"license": license_id} if license_id else {}).items())
    header += "".join(f"{k}: {json.dumps(v)}\n" for k, v in card.items())
    note = ("\nThe adapter was trained over the 4-bit (NF4) base and merged into the full-precision base; "
            "answers can differ slightly from the adapter's.\n") if result.method == "qlora" else ""
    (folder / "README.md").write_text(
        f"---\n{header}---\n# {Path(source).name} (merged)\n\n"
        f"The {result.method} adapter `{source}` merged into `{result.base}` by tunekit: a plain transformers "
        f"model that loads without PEFT.\n{note}\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "model = AutoModelForCausalLM.from_pretrained(\"<this folder or repo>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<this folder or repo>\")\n```\n")


# -- GGUF ------------------------------------------------------------------------------------------
def export_gguf(result: "TuneResult", path: str | os.PathLike, *, dtype: str = "f16") -> Path:
    """Write a fine-tune (an adapter is merged first) as one GGUF file.

    The file carries the weights in llama.cpp's layout, the tokenizer (byte-level BPE vocabulary,
    merges, token types, bos/eos/pad ids) and the chat template (``tokenizer.chat_template``).
    llama.cpp, Ollama, LM Studio and ``transformers`` (``from_pretrained(folder, gguf_file=name)``)
    read it.

    Args:
        result: a fine-tune (``tunekit.load(...)`` or ``finetune(...)``), adapter or full.
        path: the ``.gguf`` file to write; an existing file is never overwritten.
        dtype: "f16" (half the size) or "f32" (bit-exact with the fp32 model) for the weight
            matrices; norms are always F32, as llama.cpp writes them.

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
    if result.adapter:
        model, tokenizer = merged_model(result, dtype="float32")
    else:
        import torch

        tokenizer = models.load_tokenizer(result.output_dir)
        model = models.load_model(result.output_dir, where=models.Placement("cpu", torch.float32),
                                  trust_remote_code=result._trust())
    name = Path(result.repo_id or result.output_dir).name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write_gguf(model, tokenizer, tmp, dtype=dtype, name=name)
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, %.1f MB)", target, dtype, target.stat().st_size / 1e6)
    return target


def write_gguf(model, tokenizer, path: str | os.PathLike, *, dtype: str = "f16", name: str | None = None) -> None:
    """Write a Llama-architecture transformers model and its tokenizer as GGUF.

    Args:
        model: a ``LlamaForCausalLM`` (no PEFT wrapper, not quantised).
        tokenizer: its tokenizer (byte-level BPE), with the chat template set.
        path: file to write.
        dtype: "f16" or "f32" for the weight matrices.
        name: ``general.name`` in the metadata.

    Raises:
        ModelError: an architecture, rope scaling or tokenizer this exporter does not write.
    """
    import gguf
    import numpy as np

    config = model.config
    _check_supported(config)
    vocab = _gguf_vocab(tokenizer, config.vocab_size)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or "tunekit model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, value in vocab["special"].items():
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if template:
        writer.add_chat_template(template)
    else:
        log.warning("the tokenizer has no chat template; the GGUF carries none (llama.cpp will guess one)")

    float_type = np.float16 if dtype == "f16" else np.float32
    state = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, array in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # the same tensor as token_embd; readers tie them when output.weight is absent
        gguf_name = _tensor_name(hf_name, config.num_hidden_layers)
        if gguf_name is None:
            raise ModelError(f"cannot place tensor {hf_name!r} in a llama GGUF; is this a plain Llama model?")
        if gguf_name.endswith("attn_q.weight"):
            array = _permute(array, n_head, n_head)
        elif gguf_name.endswith("attn_k.weight"):
            array = _permute(array, n_head, n_kv)
        # 1-D tensors (norms) stay F32, as llama.cpp writes them; matrices in the asked type.
        writer.add_tensor(gguf_name, np.ascontiguousarray(array if array.ndim == 1 else array.astype(float_type)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_supported(config) -> None:
    if config.model_type != "llama":
        raise ModelError(
            f"GGUF export supports Llama-architecture models (SmolLM2, Llama 2/3, TinyLlama…); this model is "
            f"{config.model_type!r}. Merge it (tunekit merge) and convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py, which knows more architectures.")
    problems = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention/MLP biases")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        problems.append(f"rope scaling {rope_type!r}")
    if problems:
        raise ModelError(f"GGUF export does not write {', '.join(problems)} yet; convert the merged folder with "
                         "llama.cpp's convert_hf_to_gguf.py instead")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0


def _tensor_name(hf_name: str, n_layers: int) -> str | None:
    """llama.cpp's name for a transformers Llama tensor (``gguf.TensorNameMap`` knows them all)."""
    stem, _, suffix = hf_name.rpartition(".")
    found = _name_map(n_layers).get_name(stem)
    return None if found is None else f"{found}.{suffix}"


_MAPS: dict[int, Any] = {}


def _name_map(n_layers: int):
    import gguf

    if n_layers not in _MAPS:
        _MAPS[n_layers] = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    return _MAPS[n_layers]


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp stores Q and K with each head's rotary halves interleaved (its rope is the GPT-J
    style); transformers' GGUF loader undoes this when it reads the file."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_vocab(tokenizer, vocab_size: int) -> dict[str, Any]:
    """Tokens (in the byte-level alphabet), token types, merges, special ids and llama.cpp's
    pre-tokenizer name for a byte-level BPE tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec):
        raise ModelError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen…); this tokenizer "
            f"is {model.get('type')!r} without byte-level pre-tokenization (sentencepiece, e.g. Llama 2). Use "
            "llama.cpp's convert_hf_to_gguf.py on the merged folder.")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ModelError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(_CONTROL if i in added and added[i].special else _USER_DEFINED if i in added else _NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    return {"tokens": tokens, "types": types, "merges": merges, "special": special, "pre": _pre_name(spec)}


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def _pre_name(spec: dict) -> str:
    """llama.cpp's name for how text is split before BPE, from the tokenizer's own pre-tokenizer
    (llama.cpp picks the split regex by this name)."""
    pre = spec.get("pre_tokenizer") or {}
    text = json.dumps(pre)
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if '"Digits"' in text and '"individual_digits": true' in text and "Split" not in text:
        return "smollm"
    if "\\\\p{N}{1,3}" in text and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in text:
        return "llama-bpe"
    if "\\\\p{N}|" in text and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in text:
        return "qwen2"
    log.warning("unrecognised pre-tokenizer; writing tokenizer.ggml.pre='default' (llama.cpp may split text "
                "slightly differently from transformers)")
    return "default"


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


def _new_folder(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; tunekit never overwrites a model. "
                          "Choose another folder.")
    return out


def _write_atomically(out: Path, write) -> None:
    """Write into a sibling temp folder and rename, so an interrupted merge leaves no half model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write(tmp)
        if out.exists():
            out.rmdir()  # checked empty by _new_folder
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
