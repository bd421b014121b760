"""Many adapters over one base model: the multi-tenant serving pattern.

An adapter is a few MB; the base is hundreds of MB to hundreds of GB. :class:`AdapterPool` loads
the base once and keeps adapters in three tiers: *hot* in memory beside the base (PEFT named
adapters, bounded by ``max_loaded`` and ``max_bytes``, least recently used evicted first), *warm*
on local disk (a folder, or the Hub cache once pulled), *cold* on the Hub (registered by name,
pulled on first use). ``submit`` (and ``chat``, which goes through it) batches concurrent
requests for different adapters and the base into shared forwards (:mod:`tunekit.batching`);
``using`` holds the model for one generation of the caller's own, one request at a time, as
``chat`` does with ``batching=False`` or for a model the scheduler cannot run. It is the engine
under tunekit's OpenAI-compatible server.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import adapters, hub, models
from . import chat as chatlib
from .errors import ConfigError, ModelError
from .placement import placement
from .record import describe_folder
from .units import parse_size

log = logging.getLogger(__name__)


@dataclass
class _Adapter:
    """An adapter the pool knows: where it came from, and (while loaded) its PEFT slot."""

    name: str
    source: str
    revision: str | None
    force: bool
    folder: Path | None  # None while cold: registered, never pulled
    tokenizer: Any
    slot: str | None = None  # PEFT adapter name while loaded; None once evicted
    file_bytes: int = 0  # the weights file's size: the estimate before it is loaded
    nbytes: int = 0  # its tensors in memory while hot
    mixable: bool = True  # runs in mixed-adapter batches (not DoRA, modules_to_save, trainable tokens)
    pins: int = 0  # running batched requests using it; a pinned adapter is never evicted
    doomed: bool = False  # removed while pinned: unloaded when the last request ends


class _Current:
    """What ``chat.generate``/``chat.stream`` call: the pool's model as it is at generation time
    (the bare base before the first adapter, the PEFT wrapper after)."""

    def __init__(self, pool: "AdapterPool"):
        self._pool = pool

    @property
    def device(self):
        return self._pool._base_model.device

    def generate(self, **kwargs):
        return self._pool.model.generate(**kwargs)


class AdapterPool:
    """One base model in memory, many LoRA adapters over it, switched per request.

    Thread-safe: generation and adapter (un)loading take one lock. ``submit`` and ``chat`` hand
    requests to a batching worker that holds it one decoding step at a time, with every running
    request in that step; ``using`` (and ``chat`` when the pool does not batch) holds it for a
    whole generation, so those requests take turns. Downloading an adapter happens outside the
    lock, so adding one never stalls requests for other adapters.

    Args:
        base: the shared base: Hub id, local folder, or None for the embedded SmolLM2-135M-Instruct.
        max_loaded: keep at most this many adapters in memory; adding or using another evicts the
            least recently used one (it is loaded again, re-pulled if needed, on its next use).
            None: no limit.
        max_bytes: keep at most this many bytes of adapter weights in memory (an int, or a size
            such as ``"256MiB"``), evicting like ``max_loaded``; None: no limit. Adapters in use
            by running batched requests are never evicted: a request for another adapter waits
            for room rather than pass the bound.
        max_batch: the most requests :meth:`submit` decodes together.
        batching: False answers ``chat`` one request at a time (``transformers``' ``generate``
            under the lock), the path before batching; the OpenAI server follows :attr:`batches`.
            A model the scheduler cannot run (sliding-window or linear attention) falls back to
            it by itself, with a warning in the log.
        device: "cpu" or "cuda"; default: cuda when available.
        token: Hub token for the base and for private adapter repos; default: ``HF_TOKEN`` or the
            saved login.
        trust_remote_code: run model code shipped with the base repo.
        auto_add: ``chat(adapter=name)`` with a name never added loads it (as ``add(name)``);
            False makes that an error.

    Example:
        >>> pool = tunekit.AdapterPool("HuggingFaceTB/SmolLM2-135M-Instruct", max_loaded=8)
        >>> pool.add("alice/show-notes-lora")
        >>> pool.add("bob/orders-lora")
        >>> pool.chat("Summarise: ...", adapter="alice/show-notes-lora")
    """

    def __init__(self, base: str | None = None, *, max_loaded: int | None = None, max_bytes: int | str | None = None,
                 max_batch: int = 16, device: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, auto_add: bool = True, batching: bool = True):
        if max_loaded is not None and (isinstance(max_loaded, bool) or not isinstance(max_loaded, int)
                                       or max_loaded < 1):
            raise ConfigError(f"max_loaded must be a positive integer or None, got {max_loaded!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_bytes is not None:
            max_bytes = parse_size(max_bytes)
            if max_bytes < 1:
                raise ConfigError(f"max_bytes must be a positive size or None, got {max_bytes!r}")
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.auto_add = auto_add
        self.batching = bool(batching)
        self._token = token
        self._base = models.resolve_base(base, token=token)
        self._where = placement(device)
        self._tokenizer = models.load_tokenizer(self._base.path)
        self._base_model = models.load_model(self._base.path, where=self._where, trust_remote_code=trust_remote_code)
        self._base_model.eval()
        # Shapes are taken now, before PEFT wraps the linear layers, to check adapters against.
        self._shapes = models.linear_shapes(self._base_model)
        self._vocab_rows = self._base_model.get_input_embeddings().weight.shape[0]
        self._peft = None  # the PeftModel, created by the first adapter
        # Lock order: _lock (the model) before _state (the bookkeeping), never the reverse.
        self._lock = threading.RLock()
        self._state = threading.Lock()
        self._loaded: OrderedDict[str, _Adapter] = OrderedDict()  # least recently used first
        self._known: dict[str, _Adapter] = {}
        # Adapters downloaded and checked but not yet in the model, and one lock per name, so
        # concurrent first requests for an adapter download it once (without holding _lock).
        self._pending: dict[str, _Adapter] = {}
        self._pulls: dict[str, threading.Lock] = {}
        self._slots = itertools.count()
        self._current = _Current(self)
        self._scheduler = None  # the batching worker, started by the first submit()
        log.info("adapter pool over %s (%s, %s)", self._base.name, self._where.device, self._where.dtype)

    # -- what is in the pool -------------------------------------------------------------------
    @property
    def base(self) -> str:
        """Name of the shared base model (Hub id or folder)."""
        return self._base.name

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters in memory, least recently used first."""
        with self._state:
            return list(self._loaded)

    @property
    def model(self):
        """The shared model: the base, wrapped as a ``PeftModel`` once an adapter is added."""
        return self._peft if self._peft is not None else self._base_model

    @property
    def registered(self) -> list[str]:
        """Every adapter name the pool knows, hot, warm or cold."""
        with self._state:
            return list(self._known)

    @property
    def hot_bytes(self) -> int:
        """Bytes of adapter weights in memory now."""
        with self._state:
            return sum(e.nbytes for e in self._loaded.values())

    def tier(self, name: str) -> str:
        """Where an adapter is: ``"hot"`` (in memory), ``"warm"`` (files on local disk) or
        ``"cold"`` (registered, not pulled yet).

        Raises:
            ModelError: the pool does not know the name.
        """
        with self._state:
            entry = self._loaded.get(name) or self._pending.get(name) or self._known.get(name)
        if entry is None:
            raise ModelError(f"no adapter {name!r} in the pool; it has {self._names()}")
        if entry.slot is not None:
            return "hot"
        return "warm" if entry.folder is not None and entry.folder.exists() else "cold"

    # -- adding and removing -------------------------------------------------------------------
    def add(self, name_or_path: str | Path, *, name: str | None = None, revision: str | None = None,
            force: bool = False) -> str:
        """Load an adapter into the pool (downloading it first when it is a Hub repo id).

        Args:
            name_or_path: Hub repo id (``user/adapter``) or local adapter/run folder.
            name: the name to select it by in ``chat(adapter=…)``; default: ``name_or_path``.
            revision: Hub branch, tag or commit.
            force: skip the check that the adapter names the pool's base (shapes are still checked).

        Returns:
            The adapter's name in the pool.

        Raises:
            HubError: the repo cannot be downloaded.
            ModelError: it is not an adapter, was made for another base, or does not fit it.
        """
        name = name or str(name_or_path)
        entry = self._prepare(name, str(name_or_path), revision, force)
        with self._lock:
            self._install(entry)
        return name

    def register(self, name_or_path: str | Path, *, name: str | None = None, revision: str | None = None,
                 force: bool = False) -> str:
        """Make an adapter known without loading or downloading it (the cold tier): it is pulled,
        checked and loaded on its first request. Registering thousands costs a few hundred bytes each.

        Args:
            name_or_path, name, revision, force: as for :meth:`add`.

        Returns:
            The adapter's name in the pool.
        """
        name = name or str(name_or_path)
        with self._state:
            if name not in self._known:
                self._known[name] = _Adapter(name, str(name_or_path), revision, force, None, None)
        return name

    def remove(self, name: str) -> None:
        """Unload an adapter and forget it. One in use by running batched requests is unloaded
        as soon as they end (new requests cannot name it meanwhile).

        Raises:
            ModelError: no adapter of that name is in the pool.
        """
        with self._lock:
            with self._state:
                entry = self._known.pop(name, None)
                self._pending.pop(name, None)
                if entry is None:
                    raise ModelError(f"no adapter {name!r} in the pool; it has {self._names()}")
                loaded = self._loaded.get(name)
                if loaded is not None and loaded.pins:
                    loaded.doomed = True
                    return
                self._loaded.pop(name, None)
            self._unload(loaded or entry)

    def _prepare(self, name: str, source: str, revision: str | None, force: bool) -> _Adapter:
        """Download and check an adapter; touches no model state, so it runs without the lock."""
        folder, _ = hub.local_folder(source, revision=revision, token=self._token)
        run, _ = describe_folder(folder)
        if not run.adapter:
            raise ModelError(
                f"{source!r} is a full model, not an adapter; a pool shares one base between adapters. "
                f"Open it alone with tunekit.load({source!r}).")
        adapter_base = _adapter_base(folder) or run.base
        if not force and not self._is_pool_base(adapter_base, run.base_path):
            raise ModelError(
                f"adapter {source!r} was made for base {adapter_base!r}, but this pool's base is "
                f"{self._base.name!r}. Use a pool over that base, or add(..., force=True) if they are "
                "the same model under another name.")
        adapters.check_fits(self._shapes, folder, adapter=source, base=self._base.name)
        tokenizer = self._tokenizer
        if models.has_tokenizer(folder):
            # The run's own tokenizer carries the chat template it was trained with.
            tokenizer = models.load_tokenizer(folder)
            if len(tokenizer) > self._vocab_rows:
                raise ModelError(
                    f"adapter {source!r} adds tokens to the vocabulary ({len(tokenizer)} > {self._vocab_rows}); "
                    f"that changes the shared base. Open it alone with tunekit.load({source!r}).")
        if run.method == "qlora":
            log.info("%s was trained over a 4-bit base; the pool runs it over the %s base", source, self._where.dtype)
        config = json.loads((folder / "adapter_config.json").read_text()) if (folder / "adapter_config.json").exists() else {}
        weights = [folder / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (folder / n).exists()]
        return _Adapter(name, source, revision, force, folder, tokenizer,
                        file_bytes=weights[0].stat().st_size if weights else 0,
                        mixable=not (config.get("use_dora") or config.get("modules_to_save")
                                     or config.get("trainable_token_indices")))

    def _install(self, entry: _Adapter) -> None:
        """Put a prepared adapter into the model (caller holds ``_lock``)."""
        from peft import PeftConfig, PeftModel

        with self._state:
            current = self._loaded.get(entry.name)
            if current is not None and current.slot is not None and (current.folder == entry.folder or current.pins):
                self._loaded.move_to_end(entry.name)  # a pinned one is reloaded once its requests end
                return
            victims = [current] if current is not None else []
            self._loaded.pop(entry.name, None)
        for victim in victims:
            self._unload(victim)
        self._trim(extra_count=1, extra_bytes=entry.file_bytes)
        if entry.tokenizer is None:  # its own tokenizer went with an eviction; the files are local
            entry.tokenizer = models.load_tokenizer(entry.folder) if models.has_tokenizer(entry.folder) else self._tokenizer
        slot = f"adapter{next(self._slots)}"
        try:
            if self._peft is None:
                config = PeftConfig.from_pretrained(str(entry.folder))
                config.inference_mode = True
                self._peft = PeftModel(self._base_model, config, adapter_name=slot)
            self._peft.load_adapter(str(entry.folder), adapter_name=slot, torch_device=self._where.device)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            self._drop_slot(slot)  # leave the pool as it was
            with self._state:
                if self._pending.get(entry.name) is entry:
                    del self._pending[entry.name]  # the next request checks it afresh
            raise adapters.misfit(entry.source, self._base.name, f"PEFT could not load it ({e})") from e
        self._peft.eval()
        entry.slot = slot
        entry.nbytes = _slot_bytes(self._peft, slot)
        with self._state:
            self._loaded[entry.name] = entry
            self._known[entry.name] = entry
            if self._pending.get(entry.name) is entry:
                del self._pending[entry.name]
        log.info("loaded adapter %s into the pool (%d in memory)", entry.name, len(self._loaded))

    def _unload(self, entry: _Adapter) -> None:
        if entry.slot is not None:
            self._drop_slot(entry.slot)
        entry.slot, entry.nbytes = None, 0
        if entry.tokenizer is not self._tokenizer:
            entry.tokenizer = None  # its own tokenizer is read again with its files: cold memory stays small

    def _over(self, extra_count: int = 0, extra_bytes: int = 0) -> bool:
        count = len(self._loaded) + extra_count
        size = sum(e.nbytes for e in self._loaded.values()) + extra_bytes
        return ((self.max_loaded is not None and count > self.max_loaded)
                or (self.max_bytes is not None and size > self.max_bytes))

    def _trim(self, extra_count: int = 0, extra_bytes: int = 0) -> None:
        """Evict the least recently used unpinned adapters until the bounds hold (with room for
        ``extra_*`` more); pinned ones stay, so the bounds may be passed until they are released
        (the batching worker asks :meth:`activate` first and waits instead)."""
        while True:
            with self._state:
                if not self._over(extra_count, extra_bytes):
                    return
                victim = next((e for e in self._loaded.values() if not e.pins), None)
                if victim is None:
                    return
                del self._loaded[victim.name]
            log.info("evicting adapter %s from the pool", victim.name)
            self._unload(victim)

    def _drop_slot(self, slot: str) -> None:
        if self._peft is not None and slot in self._peft.peft_config:
            with warnings.catch_warnings():
                # PEFT warns when the active adapter goes; every request sets its own anyway.
                warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
                self._peft.delete_adapter(slot)
            if not self._peft.peft_config:
                # PEFT cannot run (or disable) a wrapper without adapters: go back to the bare base,
                # the same modules and tensors; the next adapter wraps it again.
                self._base_model = self._peft.unload()
                self._peft = None

    # -- answering -----------------------------------------------------------------------------
    def chat(self, prompt: str | list[dict[str, str]], *, adapter: str | None = None, system: str | None = None,
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             stream: bool = False, tools: list[dict] | None = None,
             tool_choice: str | dict | None = "auto") -> str | Iterator[str] | chatlib.ChatReply:
        """Reply with one adapter (or the bare base).

        Args:
            prompt: a user message, or a list of messages (OpenAI's shapes, tool calls and
                ``role: "tool"`` results included).
            adapter: the adapter's name in the pool; None answers with the base alone. An evicted
                adapter is loaded again; an unknown one is added when ``auto_add`` is on.
            system: a system message to put first.
            max_new_tokens: length limit of the reply.
            temperature: 0 for greedy decoding (the default), > 0 to sample.
            top_p: nucleus sampling threshold when sampling.
            stream: return an iterator of text pieces instead of the whole reply.
            tools: OpenAI function schemas; the reply is then a :class:`~tunekit.chat.ChatReply`
                (a :class:`~tunekit.chat.ReplyStream` when streamed), read in the adapter's
                template's tool format.
            tool_choice: with tools: ``"auto"``, ``"none"``, ``"required"`` or a function's name.

        Returns:
            The reply text, or an iterator over its pieces when ``stream=True``; with ``tools``
            a ``ChatReply`` (or ``ReplyStream``).

        When the pool batches (:attr:`batches`) the request goes through :meth:`submit`, so it
        shares forwards with the server's requests rather than taking the model for its whole
        generation; greedy replies are the same either way.
        """
        if self.batches:
            return self._chat_batched(prompt, adapter=adapter, system=system, max_new_tokens=max_new_tokens,
                                      temperature=temperature, top_p=top_p, stream=stream, tools=tools,
                                      tool_choice=tool_choice)
        messages = chatlib.to_messages(prompt, system=system, tools=tools)
        entry = self._entry(adapter) if adapter is not None else None
        tokenizer = entry.tokenizer if entry is not None else self._tokenizer
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if tools is not None:
            kwargs.update(tools=tools, tool_choice=tool_choice)
        if stream:
            return chatlib.stream(self._current, tokenizer, messages, lock=self._using(entry), **kwargs)
        with self._using(entry):
            return chatlib.generate(self._current, tokenizer, messages, **kwargs)

    def _chat_batched(self, prompt, *, adapter, system, max_new_tokens, temperature, top_p, stream, tools,
                      tool_choice):
        if adapter is not None:
            self._entry(adapter)  # an unknown name fails here, as in the one-at-a-time path
        handle = self.submit(prompt, adapter=adapter, system=system, max_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, tools=tools,
                             tool_choice=tool_choice if tools is not None else "auto")
        if stream:
            pieces = iter(handle)
            plan = handle.plan
            return pieces if plan is None else chatlib.ReplyStream(pieces, plan)
        done = handle.result()
        return done.text if tools is None else chatlib.ChatReply(done.text, done.tool_calls)

    @property
    def batches(self) -> bool:
        """Whether requests are batched: ``batching`` is on and the scheduler can run this model
        (it refuses sliding-window and linear attention; the pool then falls back to one request
        at a time and logs why, once)."""
        if not self.batching:
            return False
        try:
            self._start_scheduler()
        except ConfigError as e:
            log.warning("serving one request at a time: %s", e)
            self.batching = False
            return False
        return True

    def _start_scheduler(self):
        from .batching import Scheduler

        with self._state:
            if self._scheduler is None:
                self._scheduler = Scheduler(self, max_batch=self.max_batch)
            return self._scheduler

    def fetch(self, adapter: str) -> None:
        """Make sure an adapter's files are local and checked, downloading it when needed,
        without touching the model: other requests keep generating meanwhile. ``chat`` and
        ``using`` do this themselves; call it first to report a bad adapter before answering
        (the OpenAI server does, so a stream never starts for an adapter that cannot load).

        Args:
            adapter: the adapter's name (an unknown name is pulled when ``auto_add`` is on).

        Raises:
            HubError: the repo cannot be downloaded.
            ModelError: it is not an adapter for this base, or ``auto_add`` is off and the name
                was never added.
        """
        self._entry(adapter)

    def tokenizer_for(self, adapter: str | None = None):
        """The tokenizer (with its chat template) that answers for ``adapter``, without taking the
        model: the OpenAI server counts a prompt's tokens with it before the reply starts.

        Args:
            adapter: the adapter's name (pulled like :meth:`fetch` does); None for the base's.

        Raises:
            HubError, ModelError: as for :meth:`fetch`.
        """
        return self._entry(adapter).tokenizer if adapter is not None else self._tokenizer

    @contextlib.contextmanager
    def using(self, adapter: str | None = None) -> Iterator[tuple[Any, Any]]:
        """Hold the shared model with one adapter active, for callers that run their own
        generation (the OpenAI server does, to count tokens and stream them).

        Other requests wait until the block ends, so keep it to one generation. The adapter is
        downloaded (if needed) before the model is taken.

        Args:
            adapter: the adapter's name; None holds the base with every adapter off.

        Yields:
            ``(model, tokenizer)``: an object with ``generate(**kwargs)`` and ``device``, and the
            tokenizer (with the chat template) that goes with the adapter.
        """
        entry = self._entry(adapter) if adapter is not None else None
        tokenizer = entry.tokenizer if entry is not None else self._tokenizer
        with self._using(entry):
            yield self._current, tokenizer

    # -- batching ------------------------------------------------------------------------------
    def submit(self, prompt: str | list[dict[str, Any]], *, adapter: str | None = None, system: str | None = None,
               max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               stop: list[str] | tuple[str, ...] | None = None, tools: list[dict] | None = None,
               tool_choice: str | dict | None = "auto", parallel_tool_calls: bool = True):
        """Queue a request for the batching worker: it shares each forward with every other
        running request (other adapters and the base included) and joins or leaves the batch
        between decoding steps.

        Args:
            prompt: a user message, or a list of messages (OpenAI's shapes, tool calls and
                ``role: "tool"`` results included).
            adapter: the adapter's name; None for the base alone. A cold or evicted adapter is
                pulled and loaded in the background while the batch keeps running.
            system: a system message to put first.
            max_tokens, temperature, top_p, seed, stop: this request's sampling
                (:class:`tunekit.batching.Sampling`); greedy by default.
            tools: OpenAI function schemas, rendered and read as ``chat(tools=…)`` does
                (:func:`tunekit.chat.plan_tools`); the completion then carries ``tool_calls``.
            tool_choice: with tools: ``"auto"``, ``"none"``, ``"required"`` or a function's name
                (prefilled, so a forced call works inside the batch too).
            parallel_tool_calls: False reads at most one call.

        Returns:
            A :class:`tunekit.batching.Handle`: iterate it for text pieces as they come, or call
            ``result()`` for the :class:`~tunekit.batching.Completion` (text, token counts,
            finish reason). Leaving the iteration early cancels the request.

        Raises:
            ConfigError: bad sampling settings, or a model the batching worker cannot run.
            DataError: a tool message is malformed.

        Example:
            >>> handles = [pool.submit("Hi", adapter=name) for name in ("a", "b", None)]  # doctest: +SKIP
            >>> [h.result().text for h in handles]                                         # doctest: +SKIP
        """
        from .batching import Sampling

        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            stop=tuple(stop or ()))
        messages = chatlib.to_messages(prompt, system=system, tools=tools)
        scheduler = self._start_scheduler()
        return scheduler.submit(messages, adapter=adapter, sampling=sampling, tools=tools, tool_choice=tool_choice,
                                parallel_tool_calls=parallel_tool_calls)

    @property
    def scheduler(self):
        """The batching worker (:class:`tunekit.batching.Scheduler`), or None before the first submit."""
        return self._scheduler

    def close(self) -> None:
        """Stop the batching worker (if started); requests still running end with an error."""
        with self._state:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    @contextlib.contextmanager
    def hold(self) -> Iterator[Any]:
        """Hold the shared model (no adapter selected) for one batched step; yields the model.
        The batching worker's hook: other callers use :meth:`using`."""
        with self._lock:
            yield self.model

    def activate(self, adapter: str | None) -> tuple[str, str | None, bool]:
        """Make a prepared adapter hot and pin it for one batched request (caller holds :meth:`hold`).
        Touches no network or Hub: an adapter whose files are not local is sent back to be prepared.

        Args:
            adapter: the adapter's name; None for the base.

        Returns:
            ``(status, slot, mixable)``: status ``"ready"`` (pinned: call :meth:`release` when the
            request ends), ``"busy"`` (no room among the hot adapters until a pinned one is
            released) or ``"stage"`` (prepare it again: ``tokenizer_for``); ``slot`` is PEFT's
            adapter name (``"__base__"`` for the base); ``mixable`` whether it runs in mixed batches.

        Raises:
            ModelError: the adapter is larger than ``max_bytes`` by itself, or PEFT cannot load it.
        """
        if adapter is None:
            return "ready", "__base__", True
        with self._state:
            loaded, pending = self._loaded.get(adapter), self._pending.get(adapter)
            if loaded is not None and loaded.slot is not None and not loaded.doomed:
                loaded.pins += 1
                self._loaded.move_to_end(adapter)
                return "ready", loaded.slot, loaded.mixable
            if pending is None:
                return "stage", None, True
            pinned = [e for e in self._loaded.values() if e.pins]
            if self.max_bytes is not None and pending.file_bytes > self.max_bytes:
                raise ModelError(f"adapter {adapter!r} takes {pending.file_bytes} bytes, more than this pool's "
                                 f"max_bytes ({self.max_bytes}); raise max_bytes to serve it")
            count_ok = self.max_loaded is None or len(pinned) + 1 <= self.max_loaded
            bytes_ok = self.max_bytes is None or sum(e.nbytes for e in pinned) + pending.file_bytes <= self.max_bytes
            if not (count_ok and bytes_ok):
                return "busy", None, True
        self._install(pending)
        with self._state:
            entry = self._loaded[adapter]
            entry.pins += 1
            return "ready", entry.slot, entry.mixable

    def release(self, adapter: str | None) -> None:
        """Unpin an adapter a batched request used (the counterpart of :meth:`activate`); evicts
        what the bounds no longer allow, and unloads an adapter removed while it was in use."""
        if adapter is None:
            return
        with self._lock:
            with self._state:
                entry = self._loaded.get(adapter)
                if entry is None:
                    return
                entry.pins = max(0, entry.pins - 1)
                doomed = entry.doomed and not entry.pins
                if doomed:
                    del self._loaded[adapter]
            if doomed:
                self._unload(entry)
            self._trim()

    def _entry(self, name: str) -> _Adapter:
        with self._state:
            entry = self._known.get(name)
        if entry is not None and entry.slot is not None:
            return entry
        if entry is None and not self.auto_add:
            raise ModelError(f"no adapter {name!r} in the pool; it has {self._names()}. Add it with pool.add().")
        with self._state:
            pull = self._pulls.setdefault(name, threading.Lock())
        with pull:  # one download per name; requests for other adapters are not held up
            with self._state:
                known, pending = self._known.get(name), self._pending.get(name)
            if known is not None and known.slot is not None:
                return known
            if pending is not None:
                return pending
            if known is not None:
                # Evicted: pull it again (a cache hit unless the repo moved on), outside the lock.
                prepared = self._prepare(name, known.source, known.revision, known.force)
            else:
                prepared = self._prepare(name, name, None, False)
            with self._state:
                self._pending[name] = prepared
            return prepared

    @contextlib.contextmanager
    def _using(self, entry: _Adapter | None):
        """Hold the model with ``entry`` active (or every adapter off) for one generation."""
        with self._lock:
            if entry is None:
                if self._peft is None:
                    yield
                else:
                    with self._peft.disable_adapter():
                        yield
                return
            with self._state:
                loaded = self._loaded.get(entry.name)
            if loaded is None or loaded.slot is None:
                self._install(entry)  # evicted meanwhile, or never loaded: files are local already
            else:
                entry = loaded
                with self._state:
                    self._loaded.move_to_end(entry.name)
            self._peft.set_adapter(entry.slot)
            yield

    def _is_pool_base(self, name: str | None, base_path: str | None) -> bool:
        return _is_same_base(self._base, name, base_path)

    def _names(self) -> str:
        names = list(self._known)
        return ", ".join(repr(n) for n in names) if names else "none"

    def __repr__(self) -> str:
        return f"AdapterPool(base={self._base.name!r}, adapters={self.adapters!r}, max_loaded={self.max_loaded})"


def _slot_bytes(peft, slot: str) -> int:
    from peft import get_peft_model_state_dict

    return sum(t.nbytes for t in get_peft_model_state_dict(peft, adapter_name=slot).values())


def _adapter_base(folder: Path) -> str | None:
    path = folder / "adapter_config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("base_model_name_or_path")


def _same_name(a: str, b: str) -> bool:
    return a.strip().rstrip("/").casefold() == b.strip().rstrip("/").casefold()


def _resolved(path: str | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return p.resolve() if p.is_dir() else None


def _is_same_base(base: models.Base, name: str | None, base_path: str | None) -> bool:
    """Whether an adapter that names ``name`` (and was trained from ``base_path``) belongs on
    ``base``: same Hub id, same folder, or both the embedded SmolLM2."""
    if not name:
        return True  # nothing to compare with; the shape check still runs
    if _same_name(name, base.name):
        return True
    if base.embedded and _same_name(name, models.EMBEDDED_ID):
        return True
    here = base.path.resolve()
    return here in {_resolved(name), _resolved(base_path)}
