"""Writing a Llama-architecture transformers model and its tokenizer as one GGUF file.

The file is what llama.cpp, Ollama, LM Studio and transformers (``from_pretrained(folder,
gguf_file=…)``) read: weights in llama.cpp's layout (F16 or F32 matrices, F32 norms), the
byte-level BPE vocabulary with merges, token types and special ids, and the chat template in
``tokenizer.chat_template``. The layout follows llama.cpp's own ``convert_hf_to_gguf.py``.
:func:`tunekit.export.export_gguf` merges an adapter first and calls :func:`write_gguf`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .errors import ModelError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "f32")

# llama.cpp's token types (gguf.TokenType), spelled out so this module imports gguf lazily.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


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

    config = model.config
    _check_supported(config)
    vocab = _gguf_vocab(tokenizer, config.vocab_size)
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_model_keys(writer, config, dtype=dtype, name=name)
    _add_tokenizer_keys(writer, tokenizer, vocab)
    _add_tensors(writer, model, dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _heads(config) -> tuple[int, int, int]:
    """Query heads, key/value heads and the head size."""
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    return n_head, n_kv, getattr(config, "head_dim", None) or config.hidden_size // n_head


def _add_model_keys(writer, config, *, dtype: str, name: str | None) -> None:
    import gguf

    n_head, n_kv, head_dim = _heads(config)
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


def _add_tokenizer_keys(writer, tokenizer, vocab: dict[str, Any]) -> None:
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


def _add_tensors(writer, model, *, dtype: str) -> None:
    import numpy as np

    config = model.config
    n_head, n_kv, _ = _heads(config)
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
