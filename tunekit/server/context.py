"""What every route needs: the adapter pool, the model ids served, who may call, and how much a
request may send."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from ..errors import ConfigError
from ..hubid import is_hub_id
from .errors import model_not_found

if TYPE_CHECKING:  # pragma: no cover
    from ..serve import AdapterPool
    from .errors import APIError


# 8 MiB: a 128k-token prompt is about 0.5 MB of text, a few MB JSON-escaped; nothing an OpenAI
# chat client sends comes near it, and a body this size costs the server nothing to hold.
DEFAULT_MAX_BODY = 8 * 2**20


class ServerContext:
    """One server's state, kept on ``app.state.context`` (no globals, so apps can coexist).

    Args:
        pool: the pool holding the base and the adapters.
        adapters: the adapter names (Hub ids or folders) this server answers to, listed by
            ``/v1/models``; each is pulled on first use and kept in the pool's LRU.
        allow_any: also pull adapters not listed here when a request names them; such names must
            be Hub ids (``owner/name``), never paths, so a client cannot reach the server's disk.
            Off by default so a client cannot make the server download arbitrary repos.
        api_key: when set, every request must carry ``Authorization: Bearer <api_key>``.
        base_name: the model id that answers with the base alone; default: the pool's base name.
        max_body: the largest request body accepted, in bytes; larger ones get 413.
        lora_modules: adapters served under a name of their own (``{name: Hub id or folder}``,
            vLLM's ``--lora-modules``); registered in the pool (pulled on first use) and listed.
        allow_runtime_lora: turn on ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.
        lora_root: the one folder whose subfolders ``/v1/load_lora_adapter`` may load by path;
            None: Hub ids only.

    Raises:
        ConfigError: an adapter has the base's name, or ``max_body`` is not a positive integer.
    """

    def __init__(self, pool: AdapterPool, adapters: list[str] | None = None, *, allow_any: bool = False,
                 api_key: str | None = None, base_name: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 lora_modules: dict[str, str] | None = None, allow_runtime_lora: bool = False,
                 lora_root: str | Path | None = None):
        self.pool = pool
        named = served_names(adapters or [])
        for name, source in [*named.items(), *(lora_modules or {}).items()]:
            if name != source:
                pool.register(source, name=name)
        self.adapters = list(dict.fromkeys([*named, *(lora_modules or {})]))
        # A listed folder is still found by the path the operator gave (clients that knew it), but
        # only its name is ever shown.
        self._paths = {source: name for name, source in named.items() if name != source}
        self.allow_runtime_lora = allow_runtime_lora
        self.lora_root = Path(lora_root).expanduser().resolve() if lora_root is not None else None
        if self.lora_root is not None and not self.lora_root.is_dir():
            raise ConfigError(f"lora_root {str(lora_root)!r} is not a folder")
        self.allow_any = allow_any
        self.api_key = api_key
        self.base_name = base_name or pool.base
        if self.base_name in self.adapters:
            raise ConfigError(f"adapter {self.base_name!r} has the same name as the base; rename one")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ConfigError(f"max_body must be a positive number of bytes, got {max_body!r}")
        self.max_body = max_body
        self.created = int(time.time())

    def model_ids(self) -> list[str]:
        """The base's name first, then the adapters in the order given, then the caller's
        fine-tuned models (:meth:`extra_models`)."""
        return [self.base_name, *self.adapters, *self.extra_models()]

    def extra_models(self) -> list[str]:
        """Models served besides those named at start: the Fine-tuning Jobs API replaces this
        (``tunekit.server.routes_jobs.attach``) with the fine-tunes of the request's caller."""
        return []

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's ``model`` names; None for the base alone.

        Raises:
            APIError: 404 ``model_not_found`` for a model this server does not answer to.
        """
        if model == self.base_name:
            return None
        if model in self._paths:
            return self._paths[model]
        if self.is_listed(model) or (self.allow_any and is_hub_id(model, existing_path_wins=True)):
            return model
        raise self.unknown(model)

    def is_listed(self, model: str) -> bool:
        """Whether ``model`` was named when the server started (the base or a listed adapter)."""
        return (model == self.base_name or model in self.adapters or model in self._paths
                or model in self.extra_models())

    def unknown(self, model: str) -> APIError:
        """The one answer for every model this server will not serve: a path, a name it does not
        list, a Hub id it cannot pull. One wording for all, so the answer reveals nothing about
        the server's disk (which folders exist) or why a pull failed."""
        return model_not_found(model, f"The model '{model}' does not exist or is not served here. "
                                      f"This server lists: {', '.join(self.model_ids())}.")

    def health(self) -> dict:
        """``/health``'s answer: Hub ids as they are, local folders only as ``"<local>"`` (a
        folder's path says too much about the server's disk)."""
        return {"status": "ok", "base": _public(self.base_name),
                "loaded": [_public(name) for name in self.pool.adapters]}

    def check_lora_name(self, name: str) -> str:
        """A ``lora_name`` from a request, as a model id: printable, at most 256 characters, not
        the base's name.

        Raises:
            APIError: 400 for a name that breaks those rules.
        """
        from .errors import APIError

        if len(name) > 256 or not name.isprintable() or name.strip() != name or name == self.base_name:
            raise APIError(400, "lora_name must be 1 to 256 printable characters, without surrounding spaces, "
                                "and not the base model's name.", type="InvalidUserInput", param="lora_name")
        return name

    def lora_source(self, path: str) -> str:
        """Where ``/v1/load_lora_adapter`` may load ``lora_path`` from: a Hub id as it is; a folder
        only inside ``lora_root`` (resolved, so ``..`` and links cannot leave it).

        Raises:
            APIError: 400, one wording for every refused path (it says nothing about the disk).
        """
        from .errors import APIError

        if is_hub_id(path) and not Path(path).expanduser().exists():
            return path
        if self.lora_root is not None:
            resolved = (self.lora_root / path).resolve()
            if resolved != self.lora_root and resolved.is_relative_to(self.lora_root) and resolved.is_dir():
                return str(resolved)
        raise APIError(400, "lora_path must be a Hub id (owner/name)"
                            + (" or a folder inside the server's --lora-root." if self.lora_root else
                               "; this server loads no local folders by request (start it with --lora-root DIR)."),
                       type="InvalidUserInput", param="lora_path")

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value lets the caller in."""
        if not self.api_key:
            return True
        # One key, or several (a list, or a mapping of key to owner): each its own tenant.
        keys = [self.api_key] if isinstance(self.api_key, str) else list(self.api_key)
        given = (authorization or "").encode()
        # Constant-time, every key compared, so no key can be guessed from response times.
        return any([secrets.compare_digest(given, f"Bearer {key}".encode()) for key in keys])


def served_names(adapters: list[str]) -> dict[str, str]:
    """The model id each adapter named at start is served under, and where it comes from: a Hub
    id as it is; ``name=path`` under ``name``; a local folder under its folder's name (the run's
    name; ``-2``, ``-3``… when two share one), so no local path ever reaches a client (issue 17).
    """
    out: dict[str, str] = {}
    for item in adapters:
        text = str(item)
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name and not Path(text).expanduser().exists():
            out[name] = path
        elif is_hub_id(text, existing_path_wins=True):
            out[text] = text
        else:
            stem = Path(text).expanduser().resolve().name or "adapter"
            name, n = stem, 1
            while name in out:
                n += 1
                name = f"{stem}-{n}"
            out[name] = text
    return out


def _public(name: str) -> str:
    return name if is_hub_id(name) else "<local>"


def context_of(request: Request) -> ServerContext:
    """The :class:`ServerContext` of the app serving this request."""
    return request.app.state.context
