"""``TuneResult``: a finished run on disk, and what you do next with it (chat, evaluate, push,
merge, export). It sits on top: it calls :mod:`tunekit.hub`, :mod:`tunekit.space` and
:mod:`tunekit.export` with its folder and run record, and none of them imports it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import adapters, models
from . import chat as chatlib
from .errors import ModelError
from .placement import placement
from .record import Metrics, RunInfo, describe_folder


@dataclass
class TuneResult:
    """A fine-tuned model on disk.

    Attributes:
        output_dir: folder with the adapter (or full weights), tokenizer, card and metrics.
        base: the base model's name (Hub id or folder).
        method: "full", "lora" or "qlora".
        adapter: True when ``output_dir`` holds a PEFT adapter rather than full weights.
        template: name of the chat template it was trained with.
        metrics: train/eval loss, tokens/s, wall time, peak memory… (``metrics.json``), a
            :class:`~tunekit.record.Metrics` (also readable as a mapping).
        run: everything recorded about the run (``tunekit.json``), a
            :class:`~tunekit.record.RunInfo` (also readable as a mapping).
        url: the Hub URL once pushed.
        repo_id: the Hub repo it was pushed to or loaded from.
        token: Hub token for the base and private repos when the model is loaded; never shown
            in ``repr``. Default: ``HF_TOKEN`` or the saved login.
        device: where ``chat``/``evaluate`` load the model ("cpu", "cuda"); default: the device
            a local run trained on, else cuda when available.
        base_override: load the adapter over this base (Hub id or folder) instead of the one it
            names.
        trust_remote_code: run model code shipped with the model or base; None: the choice the
            run was trained with (a downloaded repo never decides that by itself).
    """

    output_dir: Path
    base: str
    method: str
    adapter: bool
    template: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    run: RunInfo = None  # type: ignore[assignment]  # filled from base/method/adapter when omitted
    url: str | None = None
    repo_id: str | None = None
    # Kept out of repr so a token never reaches a log line.
    token: str | None = field(default=None, repr=False, compare=False)
    device: str | None = field(default=None, compare=False)
    base_override: str | None = field(default=None, compare=False)
    trust_remote_code: bool | None = field(default=None, compare=False)
    _loaded: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        # Plain dicts are accepted, as earlier versions' results held them.
        if self.run is None:
            self.run = RunInfo(base=self.base, method=self.method, adapter=self.adapter)
        elif not isinstance(self.run, RunInfo):
            self.run = RunInfo.from_dict(self.run)
        if not isinstance(self.metrics, Metrics):
            self.metrics = Metrics.from_dict(self.metrics if isinstance(self.metrics, Mapping) else {})

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, *, repo_id: str | None = None, token: str | None = None,
                 device: str | None = None, base_override: str | None = None,
                 trust_remote_code: bool | None = None) -> "TuneResult":
        """Open a tunekit output folder, a plain PEFT adapter folder or a full model folder.

        Args:
            path: the folder.
            repo_id: the Hub repo it came from, if any.
            token, device, base_override, trust_remote_code: how to load it (see the class).

        Raises:
            ModelError: the folder holds none of those, or an adapter that does not name its base.
        """
        run, metrics = describe_folder(path)
        return cls(Path(path), run.base, run.method, run.adapter, run.template.name, metrics, run, repo_id=repo_id,
                   token=token, device=device, base_override=base_override, trust_remote_code=trust_remote_code)

    def resolve_base(self) -> models.Base:
        """The base this adapter is loaded over: ``base_override``, else the embedded copy, the
        folder it was trained from (when still there), or its Hub id.

        Raises:
            ModelError: the base cannot be found or reached.
        """
        if self.base_override:
            return models.resolve_base(self.base_override, token=self.token)
        if self.run.embedded_base:
            return models.resolve_base(None)
        base_path = self.run.base_path
        if base_path and Path(base_path).is_dir():
            return models.resolve_base(base_path)
        if base_path:
            # Trained on a local folder; a pushed record keeps only its name, which is no Hub id.
            where = f"{self.repo_id!r}" if self.repo_id else str(self.output_dir)
            raise ModelError(f"{where} was trained on a local base folder named {Path(base_path).name!r}, "
                             "which is not on this machine; pass base= that folder or the same model's Hub id "
                             f"(tunekit.load({where}, base=...))")
        try:
            return models.resolve_base(self.base, token=self.token)
        except ModelError as e:
            where = f"{self.repo_id!r}" if self.repo_id else str(self.output_dir)
            raise ModelError(f"the base model of {where} is unavailable: {e} "
                             "(tunekit.load(..., base=...) picks another copy of the same base)") from e

    # -- inference -----------------------------------------------------------------------------
    def _model(self):
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _trust(self) -> bool:
        if self.trust_remote_code is not None:
            return self.trust_remote_code
        # A run folder made here may carry the user's own choice; a downloaded one never decides
        # to run code on its own (load() sets trust_remote_code for Hub repos).
        return bool(self.run.option("trust_remote_code", False))

    def _source(self) -> str:
        return self.repo_id or str(self.output_dir)

    def _load(self):
        where = placement(self.device or (None if self.repo_id else self.run.option("device")))
        if not self.adapter:
            tokenizer = models.load_tokenizer(self.output_dir)
            model = models.load_model(self.output_dir, where=where, trust_remote_code=self._trust())
            model.eval()
            return model, tokenizer
        return adapters.open_adapter(self.output_dir, self.resolve_base(), where=where,
                                     quantize_4bit=self.method == "qlora", trust_remote_code=self._trust(),
                                     adapter=self._source())

    def chat(self, prompt: str | list[dict[str, Any]], *, system: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, stream: bool = False, use_adapter: bool = True,
             tools: list[dict] | None = None, tool_choice: str | dict | None = "auto",
             parallel_tool_calls: bool = True) -> str | Iterator[str] | chatlib.ChatReply:
        """Reply to a prompt with the fine-tuned model.

        Args:
            prompt: a user message, or a list of messages: ``{"role", "content"}``, assistant
                turns with ``tool_calls`` and ``{"role": "tool", "tool_call_id", "content"}``
                results (OpenAI's shapes) included.
            system: a system message to put first.
            max_new_tokens: length limit of the reply.
            temperature: 0 for greedy decoding (the default), > 0 to sample.
            top_p: nucleus sampling threshold when sampling.
            stream: return an iterator of text pieces instead of the whole reply.
            use_adapter: False answers with the base model alone (adapters only), for comparisons.
            tools: OpenAI function schemas the model may call; the reply is then a
                :class:`~tunekit.chat.ChatReply` (text and parsed ``tool_calls``), rendered
                with the template and tool format the run was trained with.
            tool_choice: with tools: ``"auto"``, ``"none"`` (tools not offered), ``"required"``
                (some call) or a function's name (a call of it).
            parallel_tool_calls: False returns at most one call.

        Returns:
            The reply text, or an iterator over its pieces when ``stream=True``. With ``tools``,
            a :class:`~tunekit.chat.ChatReply`, or with ``stream=True`` a
            :class:`~tunekit.chat.ReplyStream` (text pieces, then ``.reply``).

        Raises:
            TemplateError: ``tools`` given, but the chat template has no tool support.

        Example:
            >>> result.chat("Write show notes for this episode: ...")
            >>> reply = result.chat("Weather in Paris?", tools=[{"type": "function", "function": {
            ...     "name": "get_weather", "parameters": {"type": "object", "properties": {
            ...         "city": {"type": "string"}}}}}])
            >>> reply.tool_calls[0].name, reply.tool_calls[0].arguments
            ('get_weather', {'city': 'Paris'})
        """
        messages = chatlib.to_messages(prompt, system=system, tools=tools)
        model, tokenizer = self._model()
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if tools is not None:
            kwargs.update(tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        hold = self._holding(model, use_adapter)
        if stream:
            # Held by the generating thread for exactly its generation.
            return chatlib.stream(model, tokenizer, messages, lock=hold, **kwargs)
        with hold:
            return chatlib.generate(model, tokenizer, messages, **kwargs)

    def _holding(self, model, use_adapter: bool):
        """The model's lock, with the adapter switched off inside it when ``use_adapter`` is False
        (the base's own answers and scores, for comparisons)."""
        if use_adapter:
            return self._lock
        if not self.adapter:
            raise ModelError("use_adapter=False needs an adapter; a full fine-tune has no separate base")

        @contextlib.contextmanager
        def base_only():
            with self._lock, model.disable_adapter():
                yield

        return base_only()

    def evaluate(self, data: Any, *, batch_size: int = 8, use_adapter: bool = True) -> dict[str, float]:
        """Mean loss and perplexity on ``data`` over the trained tokens (same template and masking
        as training).

        Args:
            data: anything ``finetune`` accepts as data.
            batch_size: rows per forward pass.
            use_adapter: False scores the base model alone (adapters only), for comparisons.

        Returns:
            ``{"loss", "perplexity", "rows", "tokens"}``.
        """
        import math

        import torch

        from . import data as datalib
        from . import templates

        rows, report = datalib.read_examples(data)
        model, tokenizer = self._model()
        hold = self._holding(model, use_adapter)
        encoded, _ = templates.encode_all(rows, tokenizer, train_on=self.run.train_on,
                                          max_length=self.run.option("max_length"), source=report.source)
        total_loss, total_tokens = 0.0, 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with hold, torch.inference_mode():
            for i in range(0, len(encoded), batch_size):
                ids, labels, mask = _batch(encoded[i:i + batch_size], pad)
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = labels[:, 1:].to(model.device)
                loss = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                    ignore_index=templates.IGNORE_INDEX, reduction="sum")
                total_loss += float(loss)
                total_tokens += int((shift_labels != templates.IGNORE_INDEX).sum())
        mean = total_loss / max(total_tokens, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "rows": len(encoded), "tokens": total_tokens}

    # -- publishing ----------------------------------------------------------------------------
    def push(self, repo_id: str, *, private: bool = False, token: str | None = None,
             commit_message: str | None = None) -> str:
        """Upload the adapter (or model), tokenizer, chat template, model card, metrics and loss
        plot to a Hub repo in one commit. Pushing again adds a commit; history is kept.
        See :func:`tunekit.hub.push_run`.

        Args:
            repo_id: ``user/name`` or ``org/name``.
            private: create the repo private (an existing repo keeps its visibility).
            token: Hub token; default: ``HF_TOKEN`` or the saved login.
            commit_message: message of the commit.

        Returns:
            The repo's URL.
        """
        from . import hub

        url = hub.push_run(self.output_dir, repo_id, run=self.run, metrics=self.metrics, private=private,
                           token=token, commit_message=commit_message)
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

        return space.push_space(self.output_dir, space_id, repo_id=self.repo_id, private=private, token=token,
                                adapters=adapters, examples=examples)

    # -- leaving tunekit -------------------------------------------------------------------------
    def merge(self, output_dir: str | Path | None = None, *, dtype: str | None = None, **deprecated: Any) -> Path:
        """Write the adapter merged into its base: a plain transformers model that loads without
        PEFT. QLoRA adapters are merged into the de-quantised base (with a warning about the
        rounding). See :func:`tunekit.export.merge`.

        Args:
            output_dir: a new (or empty) folder. (``out_dir=`` is its deprecated name.)
            dtype: "float32", "bfloat16" or "float16"; default: the base's own dtype.

        Returns:
            ``output_dir`` as a Path.

        Example:
            >>> tunekit.load("alice/show-notes-lora").merge("show-notes-merged")
        """
        from . import export
        from .options import renamed

        if output_dir is not None:
            deprecated["output_dir"] = output_dir
        kwargs = renamed(deprecated, {"out_dir": "output_dir"}, where="merge()")
        output_dir = kwargs.pop("output_dir", None)
        if kwargs:
            raise TypeError(f"merge() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if output_dir is None:
            raise TypeError("merge() missing 1 required argument: 'output_dir'")
        return export.merge(self.output_dir, output_dir, run=self.run, resolve_base=self.resolve_base, dtype=dtype,
                            trust_remote_code=self._trust(), source=self._source())

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

        return export.export_gguf(self.output_dir, path, run=self.run, resolve_base=self.resolve_base, dtype=dtype,
                                  trust_remote_code=self._trust(), source=self._source())


def _batch(rows: list[dict], pad: int):
    """Right-padded ``(input_ids, labels, attention_mask)`` tensors for encoded rows."""
    import torch

    from .templates import IGNORE_INDEX

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[j, :n] = torch.tensor(r["input_ids"])
        labels[j, :n] = torch.tensor(r["labels"])
        mask[j, :n] = 1
    return ids, labels, mask


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
    from . import hub

    folder, repo_id = hub.local_folder(name_or_path, revision=revision, token=token)
    # A local run keeps its own choice unless the caller turns code on; a download never runs it unasked.
    trust = trust_remote_code if repo_id else (True if trust_remote_code else None)
    return TuneResult.from_dir(folder, repo_id=repo_id, token=token, device=device, base_override=base,
                               trust_remote_code=trust)
