"""``TuneResult``: a finished run on disk, and what you do next with it (chat, evaluate, push)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import chat as chatlib
from . import models
from .errors import ModelError

log = logging.getLogger(__name__)

# What a pushed repo carries; checkpoints stay local (they are for resuming, and large).
PUSH_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "*.md", "*.png", "*.txt", "*.model"]


@dataclass
class TuneResult:
    """A fine-tuned model on disk.

    Attributes:
        output_dir: folder with the adapter (or full weights), tokenizer, card and metrics.
        base: the base model's name (Hub id or folder).
        method: "full", "lora" or "qlora".
        adapter: True when ``output_dir`` holds a PEFT adapter rather than full weights.
        template: name of the chat template it was trained with.
        metrics: train/eval loss, tokens/s, wall time, peak memory… (``metrics.json``).
        run: everything recorded about the run (``tunekit.json``).
        url: the Hub URL once pushed.
    """

    output_dir: Path
    base: str
    method: str
    adapter: bool
    template: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    repo_id: str | None = None
    _loaded: Any = field(default=None, repr=False, compare=False)
    # How to load, set by ``load()``; kept out of repr so a token never reaches a log line.
    _token: str | None = field(default=None, repr=False, compare=False)
    _trust_remote_code: bool | None = field(default=None, repr=False, compare=False)
    _device: str | None = field(default=None, repr=False, compare=False)
    _base_override: str | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, *, repo_id: str | None = None) -> "TuneResult":
        """Open a tunekit output folder, a plain PEFT adapter folder or a full model folder."""
        path = Path(path)
        run_file = path / "tunekit.json"
        if run_file.exists():
            run = json.loads(run_file.read_text())
            metrics_file = path / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            return cls(path, run["base"], run["method"], run["adapter"], run["template"]["name"], metrics, run,
                       repo_id=repo_id)
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.exists():
            cfg = json.loads(adapter_cfg.read_text())
            base = cfg.get("base_model_name_or_path") or _card_base_model(path)
            if not base:
                raise ModelError(
                    f"{path} is a PEFT adapter that does not name its base model (no base_model_name_or_path "
                    "in adapter_config.json, no base_model in README.md)"
                )
            method = "qlora" if "4bit" in json.dumps(cfg).lower() else "lora"
            return cls(path, base, method, True, None, {}, {"base": base, "method": method, "adapter": True},
                       repo_id=repo_id)
        if (path / "config.json").exists():
            base = _card_base_model(path) or str(path)
            return cls(path, base, "full", False, None, {}, {"base": base, "method": "full", "adapter": False},
                       repo_id=repo_id)
        raise ModelError(f"{path} holds no tunekit run, PEFT adapter or transformers model")

    # -- inference -----------------------------------------------------------------------------
    def _model(self):
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _trust(self) -> bool:
        if self._trust_remote_code is not None:
            return self._trust_remote_code
        # A run folder made here may carry the user's own choice; a downloaded one never decides
        # to run code on its own (load() sets _trust_remote_code for Hub repos).
        return bool(self.run.get("options", {}).get("trust_remote_code", False))

    def _load(self):
        where = models.placement(self._device or (None if self.repo_id else self.run.get("options", {}).get("device")))
        trust = self._trust()
        if not self.adapter:
            tokenizer = models.load_tokenizer(self.output_dir)
            model = models.load_model(self.output_dir, where=where, trust_remote_code=trust)
            model.eval()
            return model, tokenizer
        from peft import PeftModel

        base = self._resolve_base()
        # Adapters made with PEFT alone often ship no tokenizer: the base's is the right one then.
        tokenizer = models.load_tokenizer(self.output_dir if has_tokenizer(self.output_dir) else base.path)
        model = models.load_model(base.path, where=where, quantize_4bit=self.method == "qlora", trust_remote_code=trust)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        problems = models.adapter_mismatches(models.linear_shapes(model), self.output_dir)
        if problems:
            raise ModelError(
                f"the adapter {self.repo_id or self.output_dir} does not fit base {base.name!r}: "
                + "; ".join(problems) + ". It was trained on another model; load it with the base it names, "
                "or pass base= the right one.")
        try:
            model = PeftModel.from_pretrained(model, str(self.output_dir))
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelError(
                f"the adapter in {self.output_dir} does not fit base {self.base!r} (shapes or module names "
                f"differ): {e}"
            ) from e
        model.eval()
        return model, tokenizer

    def _resolve_base(self) -> models.Base:
        if self._base_override:
            return models.resolve_base(self._base_override, token=self._token)
        if self.run.get("embedded_base"):
            return models.resolve_base(None)
        base_path = self.run.get("base_path")
        if base_path and Path(base_path).is_dir():
            return models.resolve_base(base_path)
        try:
            return models.resolve_base(self.base, token=self._token)
        except ModelError as e:
            where = f"{self.repo_id!r}" if self.repo_id else str(self.output_dir)
            raise ModelError(f"the base model of {where} is unavailable: {e} "
                             "(tunekit.load(..., base=...) picks another copy of the same base)") from e

    def chat(self, prompt: str | list[dict[str, str]], *, system: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, stream: bool = False,
             use_adapter: bool = True) -> str | Iterator[str]:
        """Reply to a prompt with the fine-tuned model.

        Args:
            prompt: a user message, or a list of ``{"role", "content"}`` messages.
            system: a system message to put first.
            max_new_tokens: length limit of the reply.
            temperature: 0 for greedy decoding (the default), > 0 to sample.
            top_p: nucleus sampling threshold when sampling.
            stream: return an iterator of text pieces instead of the whole reply.
            use_adapter: False answers with the base model alone (adapters only), for comparisons.

        Returns:
            The reply text, or an iterator over its pieces when ``stream=True``.

        Example:
            >>> result.chat("Write show notes for this episode: ...")
        """
        messages = chatlib.to_messages(prompt, system=system)
        model, tokenizer = self._model()
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if not use_adapter:
            if not self.adapter:
                raise ModelError("use_adapter=False needs an adapter; a full fine-tune has no separate base")
            return self._base_reply(model, tokenizer, messages, stream, kwargs)
        if stream:
            return chatlib.stream(model, tokenizer, messages, lock=self._lock, **kwargs)
        with self._lock:
            return chatlib.generate(model, tokenizer, messages, **kwargs)

    def _base_reply(self, model, tokenizer, messages, stream: bool, kwargs):
        def pieces():
            with self._lock, model.disable_adapter():
                yield from chatlib.stream(model, tokenizer, messages, **kwargs)

        if stream:
            return pieces()
        with self._lock, model.disable_adapter():
            return chatlib.generate(model, tokenizer, messages, **kwargs)

    def evaluate(self, data: Any, *, batch_size: int = 8) -> dict[str, float]:
        """Mean loss and perplexity on ``data`` over the trained tokens (same template and masking
        as training).

        Args:
            data: anything ``finetune`` accepts as data.
            batch_size: rows per forward pass.

        Returns:
            ``{"loss", "perplexity", "rows", "tokens"}``.
        """
        import math

        import torch

        from . import data as datalib
        from . import templates

        rows, report = datalib.read_examples(data)
        model, tokenizer = self._model()
        train_on = self.run.get("train_on", "assistant")
        max_length = self.run.get("options", {}).get("max_length")
        encoded, _ = templates.encode_all(rows, tokenizer, train_on=train_on, max_length=max_length,
                                          source=report.source)
        total_loss, total_tokens = 0.0, 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with self._lock, torch.inference_mode():
            for i in range(0, len(encoded), batch_size):
                batch = encoded[i:i + batch_size]
                width = max(len(r["input_ids"]) for r in batch)
                ids = torch.full((len(batch), width), pad)
                labels = torch.full((len(batch), width), -100)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, r in enumerate(batch):
                    n = len(r["input_ids"])
                    ids[j, :n] = torch.tensor(r["input_ids"])
                    labels[j, :n] = torch.tensor(r["labels"])
                    mask[j, :n] = 1
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = labels[:, 1:].to(model.device)
                loss = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                    ignore_index=-100, reduction="sum")
                total_loss += float(loss)
                total_tokens += int((shift_labels != -100).sum())
        mean = total_loss / max(total_tokens, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "rows": len(encoded), "tokens": total_tokens}

    # -- publishing ----------------------------------------------------------------------------
    def push(self, repo_id: str, *, private: bool = False, token: str | None = None,
             commit_message: str | None = None) -> str:
        """Upload the adapter (or model), tokenizer, chat template, model card, metrics and loss
        plot to a Hub repo in one commit. Pushing again adds a commit; history is kept.

        Args:
            repo_id: ``user/name`` or ``org/name``.
            private: create the repo private (an existing repo keeps its visibility).
            token: Hub token; default: ``HF_TOKEN`` or the saved login.
            commit_message: message of the commit.

        Returns:
            The repo's URL.
        """
        from . import hub

        url = hub.push_run(self, repo_id, private=private, token=token, commit_message=commit_message)
        self.url, self.repo_id = url, repo_id
        return url

    def push_space(self, space_id: str, *, private: bool = False, token: str | None = None,
                   adapters: list[str] | None = None, examples: list[str] | None = None) -> str:
        """Publish a Gradio Space that demos this (already pushed) fine-tune, and link it from
        the model card. See :func:`tunekit.space.push_space`.

        Args:
            space_id: the Space, e.g. ``"user/name-demo"``.
            private: create the Space private.
            token: Hub token; default: ``HF_TOKEN`` or the saved login.
            adapters: more adapter repo ids on the same base, shown in an adapter picker.
            examples: example prompts; default: user turns of the held-out rows.

        Returns:
            The Space's URL.
        """
        from . import space

        return space.push_space(self, space_id, private=private, token=token, adapters=adapters,
                                examples=examples)

    # -- leaving tunekit -------------------------------------------------------------------------
    def merge(self, out_dir: str | Path, *, dtype: str | None = None) -> Path:
        """Write the adapter merged into its base: a plain transformers model that loads without
        PEFT. QLoRA adapters are merged into the de-quantised base (with a warning about the
        rounding). See :func:`tunekit.export.merge`.

        Args:
            out_dir: a new (or empty) folder.
            dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype.

        Returns:
            ``out_dir`` as a Path.

        Example:
            >>> tunekit.load("alice/show-notes-lora").merge("show-notes-merged")
        """
        from . import export

        return export.merge(self, out_dir, dtype=dtype)

    def export_gguf(self, path: str | Path, *, dtype: str = "f16") -> Path:
        """Write the fine-tune (merged, for an adapter) as one GGUF file for llama.cpp and
        friends, the chat template in its metadata. See :func:`tunekit.export.export_gguf`.

        Args:
            path: the ``.gguf`` file to write.
            dtype: "f16" or "f32" weight matrices.

        Returns:
            ``path`` as a Path.

        Example:
            >>> tunekit.load("alice/show-notes-lora").export_gguf("show-notes.f16.gguf")
        """
        from . import export

        return export.export_gguf(self, path, dtype=dtype)


def load(name_or_path: str | Path, *, revision: str | None = None, token: str | None = None,
         base: str | None = None, device: str | None = None, trust_remote_code: bool = False) -> TuneResult:
    """Open a fine-tuned model by output folder or Hub repo id, ready to ``chat``.

    Works for tunekit runs, plain PEFT adapter repos (the base comes from
    ``adapter_config.json``, else the card's ``base_model``) and full-model repos. Only
    safetensors weights are downloaded and loaded, never pickles.

    Args:
        name_or_path: a local output folder, or a Hub repo id (``user/adapter``) holding a PEFT
            adapter or a full model.
        revision: Hub branch, tag or commit id.
        token: Hub token for private repos; also used to download the base. Default:
            ``HF_TOKEN`` or the saved login.
        base: load the adapter over this base (Hub id or folder) instead of the one it names.
        device: "cpu" or "cuda"; default: cuda when available.
        trust_remote_code: run model code shipped in the repo. A downloaded repo never turns
            this on by itself; a local run folder keeps the choice it was trained with.

    Returns:
        A :class:`TuneResult`; the base model is resolved and loaded on first use.

    Raises:
        HubError: the repo or revision is not found, is private and the token cannot read it,
            or has no safetensors weights.
        ModelError: the base cannot be found (or reached offline), or the adapter does not fit it.

    Example:
        >>> tunekit.load("alice/show-notes-lora").chat("Write show notes for: ...")
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        result = TuneResult.from_dir(path)
        result._trust_remote_code = True if trust_remote_code else None
    else:
        from . import hub

        result = hub.pull(str(name_or_path), revision=revision, token=token)
        result._trust_remote_code = trust_remote_code
    result._token, result._device, result._base_override = token, device, base
    return result


def has_tokenizer(folder: Path) -> bool:
    """True when ``folder`` holds a tokenizer of its own (not just a model or adapter)."""
    return any((Path(folder) / name).exists() for name in ("tokenizer.json", "tokenizer_config.json",
                                                             "tokenizer.model"))


def _card_base_model(path: Path) -> str | None:
    readme = path / "README.md"
    if not readme.exists():
        return None
    try:
        from huggingface_hub import ModelCard

        base = ModelCard.load(readme).data.to_dict().get("base_model")
    except Exception:  # an unreadable card just means we cannot learn the base from it
        return None
    return base[0] if isinstance(base, list) and base else base
