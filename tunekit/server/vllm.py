"""The way to vLLM and back: ``--lora-modules`` entries in vLLM's two forms, the vLLM command line
that serves the same base and adapters (``tunekit serve --print-vllm``), and whether an adapter
folder is in the form vLLM loads.

What vLLM refuses is read from its ``PEFTHelper.validate_legal`` (vllm/lora/peft_helper.py):
``modules_to_save`` must be None, no DoRA, no bias without ``--enable-lora-bias``; the rank must
fit ``--max-lora-rank`` (one of its allowed values). Trainable tokens are a PEFT feature vLLM
does not read.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

# vLLM's allowed --max-lora-rank values (vllm/config: possible_max_ranks).
_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class LoraModule:
    """One ``--lora-modules`` entry: the name requests use, and the adapter's Hub id or folder."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoraModule:
    """``name=path`` or vLLM's JSON form ``{"name": …, "path": …, "base_model_name": …}``.

    Raises:
        ConfigError: neither form, or a name or path left empty.

    Example:
        >>> parse_lora_module("support=alice/support-lora")
        LoraModule(name='support', path='alice/support-lora', base_model_name=None)
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--lora-modules {text!r}: not valid JSON ({e.msg})") from e
        unknown = set(data) - {"name", "path", "base_model_name"}
        if unknown or not isinstance(data.get("name"), str) or not isinstance(data.get("path"), str):
            raise ConfigError(f"--lora-modules {text!r}: the JSON form is "
                              '{"name": "...", "path": "...", "base_model_name": "..."} (base_model_name optional)')
        name, path, base = data["name"].strip(), data["path"].strip(), data.get("base_model_name")
    else:
        name, sep, path = text.partition("=")
        name, path, base = name.strip(), path.strip(), None
        if not sep:
            raise ConfigError(f"--lora-modules {text!r}: write name=path (path: a Hub id or an adapter folder)")
    if not name or not path:
        raise ConfigError(f"--lora-modules {text!r}: both the name and the path must be given")
    return LoraModule(name, path, base)


def vllm_problems(folder: str | Path) -> list[str]:
    """Why vLLM would refuse the adapter in ``folder`` (empty: it loads it as it is).

    Args:
        folder: a local adapter folder (PEFT's ``adapter_config.json`` and weights).
    """
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.exists():
        return ["no adapter_config.json: not a PEFT adapter folder (a full model is served by vLLM as the base)"]
    config = json.loads(config_file.read_text())
    problems = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r}: vLLM serves LoRA adapters only")
    if not any((folder / n).exists() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        problems.append("no adapter_model.safetensors or adapter_model.bin")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']!r}: vLLM only supports modules_to_save being None")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora): vLLM does not support DoRA adapters; merge it (tunekit merge) instead")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices: vLLM does not load PEFT's trainable tokens")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config['bias']!r}: vLLM needs --enable-lora-bias for it")
    return problems


def _rank(folder: Path) -> int:
    config = json.loads((folder / "adapter_config.json").read_text())
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def command(base: str | None, adapters: list[LoraModule], *, folders: dict[str, Path] | None = None,
            host: str = "127.0.0.1", port: int = 8000, max_loaded: int | None = None,
            api_key: bool = False) -> tuple[str, list[str]]:
    """The ``vllm serve`` command line for the same base and adapters, and the adapters left out.

    Args:
        base: the base as tunekit was given it (None: the embedded SmolLM2, by its Hub id).
        adapters: the adapters, by the name requests use.
        folders: each adapter's local folder (by name), to check its form and read its rank;
            adapters without one are passed as they are and not checked.
        host, port: where vLLM listens.
        max_loaded: adapters in GPU memory at once (``--max-loras``); default: all of them.
        api_key: whether the server needs a key (printed as ``"$VLLM_API_KEY"``, never the key).

    Returns:
        ``(command line, notes)``: one note per adapter left out (and why) or not checked.
    """
    folders = folders or {}
    notes, kept, ranks = [], [], []
    for module in adapters:
        folder = folders.get(module.name)
        if folder is None:
            notes.append(f"{module.name}: not checked (its files are not local)")
            kept.append(module)
            continue
        problems = vllm_problems(folder)
        if problems:
            notes.append(f"{module.name}: left out: {'; '.join(problems)}")
            continue
        kept.append(module)
        ranks.append(_rank(folder))
    args = ["vllm", "serve", base or EMBEDDED_NAME, "--host", host, "--port", str(port)]
    if kept:
        args += ["--enable-lora", "--lora-modules", *(f"{m.name}={m.path}" for m in kept)]
        args += ["--max-loras", str(min(max_loaded or len(kept), len(kept)))]
        if ranks and max(ranks) > 16:  # vLLM's default --max-lora-rank is 16
            args += ["--max-lora-rank", str(next((r for r in _RANKS if r >= max(ranks)), max(ranks)))]
    line = shlex.join(args)
    if api_key:
        line += ' --api-key "$VLLM_API_KEY"'
    return line, notes
