"""What every route needs: the adapter pool, the model ids served, and who may call."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from fastapi import Request

from ..errors import ConfigError
from .errors import model_not_found

if TYPE_CHECKING:  # pragma: no cover
    from ..serve import AdapterPool


class ServerContext:
    """One server's state, kept on ``app.state.context`` (no globals, so apps can coexist).

    Args:
        pool: the pool holding the base and the adapters.
        adapters: the adapter names (Hub ids or folders) this server answers to, listed by
            ``/v1/models``; each is pulled on first use and kept in the pool's LRU.
        allow_any: also pull adapters not listed here when a request names them (as Hub ids);
            off by default so a client cannot make the server download arbitrary repos.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>``.
        base_name: the model id that answers with the base alone; default: the pool's base name.

    Raises:
        ConfigError: an adapter has the base's name.
    """

    def __init__(self, pool: AdapterPool, adapters: list[str] | None = None, *, allow_any: bool = False,
                 api_key: str | None = None, base_name: str | None = None):
        self.pool = pool
        self.adapters = list(dict.fromkeys(adapters or []))
        self.allow_any = allow_any
        self.api_key = api_key
        self.base_name = base_name or pool.base
        if self.base_name in self.adapters:
            raise ConfigError(f"adapter {self.base_name!r} has the same name as the base; rename one")
        self.created = int(time.time())

    def model_ids(self) -> list[str]:
        """The base's name first, then the adapters in the order given."""
        return [self.base_name, *self.adapters]

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's ``model`` names; None for the base alone.

        Raises:
            APIError: 404 ``model_not_found`` for a model this server does not answer to.
        """
        if model == self.base_name:
            return None
        if model in self.adapters or self.allow_any:
            return model
        raise model_not_found(model, f"The model '{model}' does not exist. This server has: "
                                     f"{', '.join(self.model_ids())}.")

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value lets the caller in."""
        if not self.api_key:
            return True
        # Constant-time, so the key cannot be guessed from response times.
        return secrets.compare_digest((authorization or "").encode(), f"Bearer {self.api_key}".encode())


def context_of(request: Request) -> ServerContext:
    """The :class:`ServerContext` of the app serving this request."""
    return request.app.state.context
