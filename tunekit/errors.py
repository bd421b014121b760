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
