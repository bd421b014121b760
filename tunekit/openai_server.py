"""An OpenAI-compatible HTTP server over an :class:`~tunekit.serve.AdapterPool`.

One base model in memory, many adapters beside it; the request's ``model`` picks the adapter
(the base's own name answers with the base alone). It speaks the part of the OpenAI API that chat
clients use: ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/chat/completions``, whole
or streamed as server-sent events, with token usage and OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``), so the official ``openai`` client and tools
built on it work unchanged (``base_url="http://host:port/v1"``).

Requests share the model one generation at a time (the pool's lock); the web server stays
responsive because generation runs in worker threads, and an adapter not yet in memory is
downloaded before its request takes the model, so pulling one never stalls the others.
"""

# No `from __future__ import annotations`: FastAPI reads the route handlers' annotations
# (``request: Request``) at runtime, and Request is imported lazily inside ``app()``.
import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import chat as chatlib
from .errors import ConfigError, HubError, ModelError, TunekitError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from .serve import AdapterPool

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 8192  # a request asking for more is refused rather than hogging the model


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class _Request:
    """A validated chat completion request."""

    model: str
    adapter: str | None  # None: the base alone
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool
    seed: int | None = None


@dataclass
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def _counting_streamer(tokenizer, **kwargs):
    """A ``TextIteratorStreamer`` that also counts the generated tokens and keeps the last one,
    so a streamed reply can report usage and finish_reason."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
            self.generated = 0
            self.last_token: int | None = None
            self._prompt_seen = False

        def put(self, value):
            if self._prompt_seen:
                ids = value.reshape(-1).tolist()
                self.generated += len(ids)
                if ids:
                    self.last_token = ids[-1]
            else:
                self._prompt_seen = True  # generate() hands over the prompt first
            super().put(value)

    return CountingStreamer()


def _stop_on(event: threading.Event):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        """Ends generation when the client of a streamed reply disconnects."""

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnEvent()])


class OpenAIServer:
    """The OpenAI-compatible API over one adapter pool.

    Args:
        pool: the pool holding the base and the adapters.
        adapters: the adapter names (Hub ids or folders) this server answers to, listed by
            ``/v1/models``; each is pulled on first use and kept in the pool's LRU.
        allow_any: also pull adapters not listed here when a request names them (as Hub ids);
            off by default so a client cannot make the server download arbitrary repos.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>``.
        base_name: the model id that answers with the base alone; default: the pool's base name.
    """

    def __init__(self, pool: "AdapterPool", adapters: list[str] | None = None, *, allow_any: bool = False,
                 api_key: str | None = None, base_name: str | None = None):
        self.pool = pool
        self.adapters = list(dict.fromkeys(adapters or []))
        self.allow_any = allow_any
        self.api_key = api_key
        self.base_name = base_name or pool.base
        if self.base_name in self.adapters:
            raise ConfigError(f"adapter {self.base_name!r} has the same name as the base; rename one")
        self.created = int(time.time())

    # -- the model ids ---------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """The base's name first, then the adapters in the order given."""
        return [self.base_name, *self.adapters]

    def _model_card(self, model_id: str) -> dict[str, Any]:
        owner = model_id.split("/")[0] if "/" in model_id and not model_id.startswith((".", "/")) else "tunekit"
        card = {"id": model_id, "object": "model", "created": self.created, "owned_by": owner}
        if model_id != self.base_name:
            card["parent"] = self.base_name
        return card

    def _adapter_for(self, model: str) -> str | None:
        if model == self.base_name:
            return None
        if model in self.adapters or self.allow_any:
            return model
        raise APIError(404, f"The model '{model}' does not exist. This server has: {', '.join(self.model_ids())}.",
                       param="model", code="model_not_found")

    # -- requests --------------------------------------------------------------------------------
    def parse(self, body: Any) -> _Request:
        """Validate a ``/v1/chat/completions`` body; every problem is an HTTP 400 in OpenAI's shape."""
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
        messages = _messages(body.get("messages"))
        n = body.get("n", 1)
        if n not in (None, 1):
            raise APIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
        if body.get("stop") not in (None, [], ""):
            raise APIError(400, "Stop sequences are not supported by this server.", param="stop",
                           code="unsupported_parameter")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise APIError(400, f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}.",
                           param="max_tokens", code="invalid_value")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise APIError(400, "stream must be true or false.", param="stream", code="invalid_type")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "stream_options must be an object.", param="stream_options", code="invalid_type")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise APIError(400, "seed must be an integer.", param="seed", code="invalid_type")
        adapter = self._adapter_for(model)
        return _Request(model, adapter, messages, max_tokens, temperature, top_p, stream,
                        bool(options.get("include_usage")), seed)

    def prepare(self, request: _Request) -> None:
        """Pull the request's adapter (if it is not local yet) without holding the model; runs
        before a reply starts, so a bad adapter is an error response, not a broken stream."""
        if request.adapter is None:
            return
        try:
            self.pool.fetch(request.adapter)
        except HubError as e:
            raise APIError(404, f"The model '{request.model}' could not be pulled: {e}", param="model",
                           code="model_not_found") from e
        except ModelError as e:
            raise APIError(400, f"The model '{request.model}' cannot be served over {self.base_name}: {e}",
                           param="model", code="model_not_supported") from e

    def _generation(self, request: _Request, tokenizer) -> dict[str, Any]:
        return chatlib.generation_kwargs(tokenizer, max_new_tokens=request.max_tokens,
                                         temperature=request.temperature, top_p=request.top_p)

    def complete(self, request: _Request) -> _Reply:
        """Answer a request in one piece (blocking; the web layer runs it in a worker thread)."""
        import torch

        with self.pool.using(request.adapter) as (model, tokenizer):
            inputs = chatlib.encode_prompt(tokenizer, request.messages, model.device)
            _seed(request.seed)
            with torch.inference_mode():
                out = model.generate(**inputs, **self._generation(request, tokenizer))
        prompt = inputs["input_ids"].shape[1]
        new = out[0][prompt:].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        return _Reply(text, prompt, len(new), _finish_reason(new, tokenizer, request.max_tokens))

    def stream(self, request: _Request, stop: threading.Event) -> tuple[Iterator[str], "_StreamState"]:
        """Start generating in a worker thread; iterate the returned pieces (blocking)."""
        import torch

        state = _StreamState()
        ready = threading.Event()
        holder: dict[str, Any] = {}

        def work():
            try:
                with self.pool.using(request.adapter) as (model, tokenizer):
                    streamer = _counting_streamer(tokenizer, timeout=600)
                    holder["streamer"] = streamer
                    inputs = chatlib.encode_prompt(tokenizer, request.messages, model.device)
                    state.prompt_tokens = int(inputs["input_ids"].shape[1])
                    ready.set()
                    _seed(request.seed)
                    with torch.inference_mode():
                        model.generate(**inputs, streamer=streamer, stopping_criteria=_stop_on(stop),
                                       **self._generation(request, tokenizer))
                    state.completion_tokens = streamer.generated
                    state.finish_reason = _finish_reason(
                        [streamer.last_token] if streamer.last_token is not None else [], tokenizer,
                        request.max_tokens, count=streamer.generated)
            except BaseException as e:  # surfaced to the reader below
                state.error = e
                ready.set()
                if "streamer" in holder:
                    holder["streamer"].end()

        thread = threading.Thread(target=work, name="tunekit-generate", daemon=True)
        thread.start()

        def pieces() -> Iterator[str]:
            ready.wait()
            if state.error is not None:
                raise state.error
            for piece in holder["streamer"]:
                if piece:
                    yield piece
            thread.join()
            if state.error is not None:
                raise state.error

        return pieces(), state

    # -- the web app -----------------------------------------------------------------------------
    def app(self) -> "FastAPI":
        """The FastAPI application (run it with uvicorn, or mount it in another app)."""
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException

        app = FastAPI(title="tunekit OpenAI-compatible server", docs_url=None, redoc_url=None)

        @app.exception_handler(APIError)
        async def api_error(_request: Request, exc: APIError):
            return JSONResponse(exc.body(), status_code=exc.status)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_request: Request, exc: StarletteHTTPException):
            kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
            return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind, code=code).body(),
                                status_code=exc.status_code)

        @app.exception_handler(Exception)
        async def unexpected(_request: Request, exc: Exception):
            log.exception("request failed")
            return JSONResponse(APIError(500, f"The server could not answer: {exc}", type="server_error").body(),
                                status_code=500)

        @app.middleware("http")
        async def check_key(request: Request, call_next):
            if self.api_key and request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                    err = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
                    return JSONResponse(err.body(), status_code=401)
            return await call_next(request)

        @app.get("/health")
        async def health():
            return {"status": "ok", "base": self.base_name, "loaded": self.pool.adapters}

        @app.get("/v1/models")
        async def list_models():
            return {"object": "list", "data": [self._model_card(m) for m in self.model_ids()]}

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str):
            if model_id not in self.model_ids():
                raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
            return self._model_card(model_id)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            try:
                body = await request.json()
            except ValueError as e:
                raise APIError(400, f"The request body is not valid JSON: {e}") from e
            req = self.parse(body)
            await run_in_threadpool(self.prepare, req)
            ident = f"chatcmpl-{uuid.uuid4().hex}"
            created = int(time.time())
            if not req.stream:
                reply = await run_in_threadpool(self._complete_or_error, req)
                return {
                    "id": ident, "object": "chat.completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                                 "logprobs": None, "finish_reason": reply.finish_reason}],
                    "usage": _usage(reply.prompt_tokens, reply.completion_tokens),
                }
            return StreamingResponse(self._events(req, ident, created, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        return app

    def _complete_or_error(self, request: _Request) -> _Reply:
        try:
            return self.complete(request)
        except TunekitError as e:
            raise APIError(500, f"The model '{request.model}' could not answer: {e}", type="server_error") from e

    async def _events(self, req: _Request, ident: str, created: int, http_request) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content chunks, a final chunk with finish_reason,
        optionally a usage chunk, then ``[DONE]``."""
        import json

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if req.include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        def pump():
            # Runs in a worker thread: moves pieces from the generation thread onto the event loop.
            try:
                pieces, state = self.stream(req, stop)
                first = True
                for piece in pieces:
                    if first:
                        piece, first = piece.lstrip(), not piece.strip()
                        if not piece:
                            continue
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                loop.call_soon_threadsafe(queue.put_nowait, (done, state))
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)

        loop.run_in_executor(None, pump)
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    log.error("streamed generation failed: %s", item)
                    err = APIError(500, f"The model '{req.model}' could not answer: {item}", type="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                if isinstance(item, tuple) and item and item[0] is done:
                    state = item[1]
                    yield chunk({}, state.finish_reason)
                    if req.include_usage:
                        usage = {"id": ident, "object": "chat.completion.chunk", "created": created,
                                 "model": req.model, "choices": [],
                                 "usage": _usage(state.prompt_tokens, state.completion_tokens)}
                        yield f"data: {json.dumps(usage)}\n\n"
                    break
                yield chunk({"content": item})
            yield "data: [DONE]\n\n"
        finally:
            # Client gone (or done): stop generating so the model is free for the next request.
            stop.set()


@dataclass
class _StreamState:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: BaseException | None = None


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty array of {role, content} objects.", param="messages",
                       code="invalid_value")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object.", param=where, code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"  # OpenAI's newer name for the system role
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be system, user or assistant, got {role!r}.",
                           param=f"{where}.role", code="invalid_value")
        content = m.get("content")
        if isinstance(content, list):
            # Content parts: text only (this server has no image or audio input).
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"{where}.content[{j}] must be a text part; only text is supported.",
                                   param=f"{where}.content", code="invalid_value")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string.", param=f"{where}.content", code="invalid_type")
        out.append({"role": role, "content": content})
    return out


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}.", param=name,
                       code="invalid_value")
    return float(value)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(new_ids: list[int], tokenizer, max_tokens: int, *, count: int | None = None) -> str:
    """"length" when the reply was cut at max_tokens rather than ended by the end-of-turn token."""
    count = len(new_ids) if count is None else count
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    ended = bool(new_ids) and new_ids[-1] in eos_ids
    return "length" if count >= max_tokens and not ended else "stop"


def _seed(seed: int | None) -> None:
    if seed is not None:
        import torch

        torch.manual_seed(seed)


def serve(base: str | None = None, adapters: list[str] | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          max_loaded: int | None = None, device: str | None = None, token: str | None = None,
          allow_any: bool = False, api_key: str | None = None, ready=None) -> None:
    """Run the OpenAI-compatible server until interrupted.

    Args:
        base: the shared base (Hub id, folder, or None for the embedded SmolLM2-135M-Instruct).
        adapters: adapter Hub ids or folders to serve; each is pulled on first use.
        host: interface to listen on (127.0.0.1: this machine only).
        port: TCP port.
        max_loaded: adapters kept in memory at once (least recently used evicted); None: all.
        device: "cpu" or "cuda"; default: cuda when available.
        token: Hub token for private adapters and base.
        allow_any: also serve adapters not listed, pulled by name when a request asks.
        api_key: require ``Authorization: Bearer <api_key>``.
        ready: called with the base URL once the server accepts connections.

    Example:
        >>> serve("alice/tiny-base", ["alice/a", "alice/b"], port=8000, max_loaded=8)
    """
    import socket

    import uvicorn

    from .serve import AdapterPool

    pool = AdapterPool(base, max_loaded=max_loaded, device=device, token=token, auto_add=True)
    server = OpenAIServer(pool, adapters, allow_any=allow_any, api_key=api_key)
    # Bind before announcing the URL, so whoever reads it can connect at once (and port 0 works).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from e
    sock.listen(128)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False)
    runner = uvicorn.Server(config)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/v1"
    log.info("OpenAI-compatible server for %s at %s", ", ".join(server.model_ids()), url)
    if ready is not None:
        ready(url)
    try:
        runner.run(sockets=[sock])
    finally:
        sock.close()
