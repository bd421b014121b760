"""One error hierarchy for tunekit.

Every error mixes in the builtin a caller would naturally catch (``ValueError`` for bad input,
``RuntimeError`` for environment problems), carries the fields that locate the problem, and says
what to do next in its message.
"""

from __future__ import annotations


class TunekitError(Exception):
    """Base class of every error tunekit raises on purpose."""


class ConfigError(TunekitError, ValueError):
    """An option passed to tunekit is unknown, has the wrong type, or conflicts with another.

    Attributes:
        problems: every problem found, so the caller can fix them all at once.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(
                f"{len(self.problems)} problems with the options:\n"
                + "\n".join(f"  - {p}" for p in self.problems)
            )


class DataError(TunekitError, ValueError):
    """The training data cannot be used as it is.

    Attributes:
        path: file (or source description) the bad rows came from.
        row: 1-based line/row number of the first bad row, when known.
        field: the field of the first bad row that is wrong, when known.
        problems: every problem found (capped), each already naming its row and field.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
        problems: list[str] | None = None,
    ):
        super().__init__(message)
        self.path = path
        self.row = row
        self.field = field
        self.problems = problems or [message]


class TemplateError(TunekitError, ValueError):
    """A chat template is unknown, fails to render, or lacks the markers loss masking needs."""


class ModelError(TunekitError, ValueError):
    """A base model or adapter cannot be found, loaded, or combined."""


class ResourceError(TunekitError, RuntimeError):
    """The machine lacks what the run needs (memory, a GPU, a package).

    Attributes:
        breakdown: the memory estimate that led to the decision, when there is one.
    """

    def __init__(self, message: str, *, breakdown: object | None = None):
        super().__init__(message)
        self.breakdown = breakdown


class HubError(TunekitError, RuntimeError):
    """A Hub operation failed (repo not found, no access, server error).

    Attributes:
        repo_id: the repository involved, when there is one.
    """

    def __init__(self, message: str, *, repo_id: str | None = None):
        super().__init__(message)
        self.repo_id = repo_id


class TrainingError(TunekitError, RuntimeError):
    """Training stopped for a reason the user can act on (diverged loss, nothing to train on)."""


def hub_error(e: Exception, *, repo_id: str | None, action: str, revision: str | None = None,
              token: str | None = None, what: str = "", hint: str = "",
              cls: type[TunekitError] | None = None) -> TunekitError:
    """The one translation of a huggingface_hub exception into tunekit's error, with the hint
    that fixes it. Use as ``raise hub_error(e, repo_id=..., action="downloading") from e``.

    Args:
        e: what huggingface_hub raised.
        repo_id: the repository involved.
        action: what was being done, as a gerund ("pushing to", "downloading").
        revision: the revision asked for, for a missing-revision message.
        token: the token given, if any (changes the hint for a repo that is not found).
        what: a noun put before the repo id ("base model").
        hint: a sentence appended: the fix specific to the caller.
        cls: the error class to raise (default :class:`HubError`; ``ModelError`` for bases).

    Returns:
        The error to raise; its class's ``repo_id`` is set when it has one.
    """
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{what} {repo_id!r}" if what else repr(repo_id)
    if isinstance(e, HFValidationError):
        message = f"{name} is neither a local folder nor a valid Hub repo id (user/name)"
    elif isinstance(e, RepositoryNotFoundError):
        access = ("the token given cannot read it" if token else
                  "if the repo is private, pass token= or set HF_TOKEN to a token that can read it")
        message = f"{name} was not found on the Hub. Check the name; {access}."
    elif isinstance(e, RevisionNotFoundError):
        message = f"{name} has no revision {revision!r}"
    elif isinstance(e, LocalEntryNotFoundError):
        message = (f"{name} is not in the local cache and the Hub cannot be reached; connect, or set "
                   "HF_ENDPOINT to a reachable hub (e.g. `tunekit hub serve`)")
    elif "xet-write-token" in str(e) or "xet-read-token" in str(e) or "Xet storage" in str(e):
        # huggingface_hub uploads through Xet whenever hf_xet is installed, with no fallback the
        # server could ask for; a Hub without Xet (tunekit's own) then fails with a raw
        # ConnectionError (or a 501) naming the missing xet-write-token URL.
        message = (f"{action} {name} failed: this Hub does not support Xet storage. Set "
                   "HF_HUB_DISABLE_XET=1 before Python starts so huggingface_hub uploads through LFS")
    elif isinstance(e, HfHubHTTPError):
        message = f"{action} {name} failed: {hub_reason(e)}"
    else:
        message = f"{action} {name} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if hint:
        message = f"{message.rstrip('.')}. {hint}"
    cls = cls or HubError
    return cls(message, repo_id=repo_id) if issubclass(cls, HubError) else cls(message)


def hub_reason(e: Exception) -> str:
    """One line saying why a Hub request failed, with the fix for refused tokens."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "the token was refused (401); log in with `hf auth login` or set HF_TOKEN"
    if status == 403:
        return "the token may not write to this repo (403); use a token with write access"
    return str(e).splitlines()[0]
