"""The one exception the hub server raises to answer a request with an error.

huggingface_hub picks its exception class from the ``X-Error-Code`` header (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``), not from the message, so every error carries the code the
client needs and a message it can show.
"""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error answer: status, message and, where the client needs it, an ``X-Error-Code``.

    Attributes:
        status: HTTP status code.
        message: human-readable explanation, sent as ``{"error": message}`` and ``X-Error-Message``.
        code: value of the ``X-Error-Code`` header, or ``None``.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def bad_request(message: str) -> ApiError:
    """A 400: the request itself is malformed (bad path, bad JSON, bad name)."""
    return ApiError(400, message)


def repo_not_found(repo_id: str) -> ApiError:
    """A 404 for a repo that does not exist *or* that the caller may not see (never 403)."""
    return ApiError(404, f"Repository Not Found: {repo_id}", code="RepoNotFound")


def revision_not_found(revision: str) -> ApiError:
    """A 404 for an unknown branch or commit id in an existing repo."""
    return ApiError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str) -> ApiError:
    """A 404 for a file or folder absent from the requested revision.

    The wording matters: huggingface_hub looks for "A file with this name doesn't exist" to add a
    hint about deleting folders.
    """
    return ApiError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")


def not_implemented(feature: str) -> ApiError:
    """A 501 naming a feature of huggingface.co this hub does not have (never a silent no-op)."""
    return ApiError(501, f"Not implemented by tunekit hub: {feature}")
