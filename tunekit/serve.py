"""Many adapters over one base model: the multi-tenant serving pattern.

An adapter is a few MB; the base is hundreds of MB to hundreds of GB. :class:`AdapterPool` loads
the base once, keeps up to ``max_loaded`` LoRA adapters beside it (PEFT named adapters) and
switches between them per request. It is the engine under tunekit's OpenAI-compatible server.
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

log = logging.getLogger(__name__)


@dataclass
class _Adapter:
    """An adapter the pool knows: where it came from, and (while loaded) its PEFT slot."""

    name: str
    source: str
    revision: str | None
    force: bool
    folder: Path
    tokenizer: Any
    slot: str | None = None  # PEFT adapter name while loaded; None once evicted


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

    Thread-safe: generation and adapter (un)loading take one lock, so requests run one at a time
    on the shared model; downloading an adapter happens outside that lock, so adding one never
    stalls requests for other adapters while it downloads.

    Args:
        base: the shared base: Hub id, local folder, or None for the embedded SmolLM2-135M-Instruct.
        max_loaded: keep at most this many adapters in memory; adding or using another evicts the
            least recently used one (it is loaded again, re-pulled if needed, on its next use).
            None: no limit.
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

    def __init__(self, base: str | None = None, *, max_loaded: int | None = None, device: str | None = None,
                 token: str | None = None, trust_remote_code: bool = False, auto_add: bool = True):
        if max_loaded is not None and (isinstance(max_loaded, bool) or not isinstance(max_loaded, int)
                                       or max_loaded < 1):
            raise ConfigError(f"max_loaded must be a positive integer or None, got {max_loaded!r}")
        self.max_loaded = max_loaded
        self.auto_add = auto_add
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

    def remove(self, name: str) -> None:
        """Unload an adapter and forget it.

        Raises:
            ModelError: no adapter of that name is in the pool.
        """
        with self._lock:
            with self._state:
                entry = self._known.pop(name, None)
                self._pending.pop(name, None)
                if entry is None:
                    raise ModelError(f"no adapter {name!r} in the pool; it has {self._names()}")
                self._loaded.pop(name, None)
            self._unload(entry)

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
        return _Adapter(name, source, revision, force, folder, tokenizer)

    def _install(self, entry: _Adapter) -> None:
        """Put a prepared adapter into the model (caller holds ``_lock``)."""
        from peft import PeftConfig, PeftModel

        with self._state:
            current = self._loaded.get(entry.name)
            if current is not None and current.folder == entry.folder and current.slot is not None:
                self._loaded.move_to_end(entry.name)
                return
            victims = [current] if current is not None else []
            self._loaded.pop(entry.name, None)
            while self.max_loaded is not None and len(self._loaded) >= self.max_loaded:
                _, lru = self._loaded.popitem(last=False)
                victims.append(lru)
        for victim in victims:
            log.info("evicting adapter %s from the pool", victim.name)
            self._unload(victim)
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
        with self._state:
            self._loaded[entry.name] = entry
            self._known[entry.name] = entry
            if self._pending.get(entry.name) is entry:
                del self._pending[entry.name]
        log.info("loaded adapter %s into the pool (%d in memory)", entry.name, len(self._loaded))

    def _unload(self, entry: _Adapter) -> None:
        if entry.slot is not None:
            self._drop_slot(entry.slot)
        entry.slot = None

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
             stream: bool = False) -> str | Iterator[str]:
        """Reply with one adapter (or the bare base).

        Args:
            prompt: a user message, or a list of ``{"role", "content"}`` messages.
            adapter: the adapter's name in the pool; None answers with the base alone. An evicted
                adapter is loaded again; an unknown one is added when ``auto_add`` is on.
            system: a system message to put first.
            max_new_tokens: length limit of the reply.
            temperature: 0 for greedy decoding (the default), > 0 to sample.
            top_p: nucleus sampling threshold when sampling.
            stream: return an iterator of text pieces instead of the whole reply.

        Returns:
            The reply text, or an iterator over its pieces when ``stream=True``.
        """
        messages = chatlib.to_messages(prompt, system=system)
        entry = self._entry(adapter) if adapter is not None else None
        tokenizer = entry.tokenizer if entry is not None else self._tokenizer
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if stream:
            return chatlib.stream(self._current, tokenizer, messages, lock=self._using(entry), **kwargs)
        with self._using(entry):
            return chatlib.generate(self._current, tokenizer, messages, **kwargs)

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
