"""Errors answered in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the
official client raises its usual exceptions (``NotFoundError``, ``BadRequestError``, …)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

# The codes schemas' validators raise as error types; pydantic's own types are mapped below.
OPENAI_CODES = frozenset({"invalid_value", "invalid_type", "unsupported_value", "unsupported_parameter",
                          "missing_required_parameter"})
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class APIError(Exception):
    """An error answered in OpenAI's shape.

    Attributes:
        status: HTTP status code.
        message: what went wrong, for people.
        type: ``invalid_request_error`` (the client's fault) or ``server_error``.
        param: the request field at fault, e.g. ``"messages[0].role"``.
        code: a machine-readable reason, e.g. ``"model_not_found"``.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorBody(error=detail).model_dump()

    def response(self) -> JSONResponse:
        """The whole answer."""
        return JSONResponse(self.body(), status_code=self.status)


def model_not_found(model: str, message: str | None = None) -> APIError:
    """A 404 for a ``model`` this server does not answer to (``openai.NotFoundError``)."""
    return APIError(404, message or f"The model '{model}' does not exist.", param="model", code="model_not_found")


def too_large(limit: int) -> APIError:
    """A 413 for a body over the server's limit (``openai.APIStatusError`` with status 413)."""
    return APIError(413, f"The request body is larger than this server accepts ({limit} bytes). Send a shorter "
                         "request, or start the server with a larger --max-body.", code="request_too_large")


def context_exceeded(context: int, prompt: int, completion: int | None) -> APIError:
    """A 400 ``context_length_exceeded``, worded as OpenAI words it, for a prompt (and, when the
    request set one, its ``max_tokens``) that does not fit the model's context."""
    if completion is None:
        asked = f"your messages resulted in {prompt} tokens"
    else:
        asked = f"you requested {prompt + completion} tokens ({prompt} in the messages, {completion} in the completion)"
    return APIError(400, f"This model's maximum context length is {context} tokens. However, {asked}. "
                         "Please reduce the length of the messages or completion.",
                    param="messages", code="context_length_exceeded")


def server_error(model: str, e: BaseException) -> APIError:
    """A 500 for a generation that failed."""
    return APIError(500, f"The model '{model}' could not answer: {e}", type="server_error")


def param_of(loc: tuple[int | str, ...]) -> str | None:
    """A pydantic error location as OpenAI names a field: ``("messages", 0, "role")`` →
    ``"messages[0].role"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def from_validation(errors: list[dict[str, Any]]) -> APIError:
    """A 400 for the first of pydantic's errors (``ValidationError.errors()``).

    OpenAI reports one problem at a time; the request models declare fields in the order they
    should be reported.
    """
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path"):  # FastAPI's prefix, for routes it validates
        loc = loc[1:]
    kind = err["type"]
    if kind == "json_invalid":
        return APIError(400, f"The request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
    if not loc:
        return APIError(400, "The request body must be a JSON object.")
    param = param_of(loc)
    if kind in OPENAI_CODES:
        code = kind
        message = err["msg"] if len(loc) == 1 else f"Invalid '{param}': {err['msg']}"
    else:
        code = ("missing_required_parameter" if kind == "missing"
                else "invalid_type" if kind.endswith("_type") else "invalid_value")
        message = f"Invalid '{param}': {err['msg'][:1].lower()}{err['msg'][1:]}{_got(err)}."
    return APIError(400, message, param=param, code=code)


def _got(err: dict[str, Any]) -> str:
    if err["type"] == "missing" or "input" not in err:
        return ""
    shown = repr(err["input"])
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


# -- handlers ------------------------------------------------------------------------------------
async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # Routes that let FastAPI validate their parameters; chat validates its body itself.
    return from_validation(list(exc.errors())).response()


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return APIError(exc.status_code, str(exc.detail), type=kind, code=_HTTP_CODES.get(exc.status_code)).response()


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # The exception's text stays in the log: it can name files on the server's disk.
    log.exception("request failed")
    return APIError(500, f"The server could not answer ({type(exc).__name__}); its log has the details.",
                    type="server_error").response()


def add_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape: ours, validation, HTTP (404, 405) and unexpected."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
