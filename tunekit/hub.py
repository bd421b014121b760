"""Pushing runs to and pulling them from a Hub (huggingface.co or `tunekit hub serve`), always
through ``huggingface_hub`` so the same code serves both.

The Hub is chosen the way huggingface_hub chooses it: ``HF_ENDPOINT`` (read when
huggingface_hub is first imported), the token from ``token=``, ``HF_TOKEN`` or ``hf auth login``.
Tokens are handed to huggingface_hub only; they are never logged or written into a file.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HubError

if TYPE_CHECKING:
    from .result import TuneResult

log = logging.getLogger(__name__)

# Weights only as safetensors: pickled *.bin/*.pt files can run code when loaded, so they are
# never even downloaded.
PULL_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "*.md", "*.txt", "*.model", "*.png"]
# Local-only parts of a run folder: checkpoints are for resuming (and large).
_NEVER_PUSH = ["checkpoints/*", ".cache/*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]


def push_run(result: "TuneResult", repo_id: str, *, private: bool = False, token: str | None = None,
             commit_message: str | None = None) -> str:
    """Upload a run folder to ``repo_id`` in one commit and return the repo URL.

    The model card is rendered for ``repo_id`` (its usage snippets name the repo) and uploaded
    from memory, so a folder that lives in the Hub cache is never written to.

    Args:
        result: the run to upload.
        repo_id: ``user/name`` or ``org/name``; created when missing.
        private: create the repo private (an existing repo keeps its visibility).
        token: Hub token with write access; default: ``HF_TOKEN`` or the saved login.
        commit_message: message of the commit.

    Returns:
        The repo's URL.

    Raises:
        HubError: the repo cannot be created or written (bad token, no access, server error).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    from . import card
    from .result import PUSH_PATTERNS

    api = HfApi(token=token)
    files = _files_to_push(Path(result.output_dir), PUSH_PATTERNS)
    if not any(name.endswith(".safetensors") for name in files):
        raise HubError(f"{result.output_dir} holds no safetensors weights to push", repo_id=repo_id)
    if result.adapter and not card.hub_base_id(result.run):
        log.warning("%s was trained on the local folder %s; whoever loads %s needs that base too: "
                    "tunekit.load(%r, base=...)", result.output_dir, result.base, repo_id, repo_id)
    readme: bytes | None = None
    if result.run.get("data"):
        readme = str(card.render_card(result.run, result.metrics, repo_id=repo_id, endpoint=api.endpoint)).encode()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                  for name, path in files.items() if not (readme is not None and name == "README.md")]
    if readme is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id,
            operations=operations,
            repo_type="model",
            commit_message=commit_message or f"tunekit: {result.method} fine-tune of {result.base}",
        )
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid repo id (expected user/name): {e}", repo_id=repo_id) from e
    except HfHubHTTPError as e:
        raise HubError(f"pushing to {repo_id!r} failed: {_reason(e)}", repo_id=repo_id) from e
    log.info("pushed %d files to %s (commit %s)", len(operations), url, info.oid)
    return str(url)


def _files_to_push(folder: Path, patterns: list[str]) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(name, p) for p in _NEVER_PUSH):
            continue
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            files[name] = path
    return files


def download(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """Download the files of a model repo that tunekit loads (never pickled weights).

    Args:
        repo_id: ``user/name``.
        revision: branch, tag or commit id; default: the main branch.
        token: Hub token for private repos; default: ``HF_TOKEN`` or the saved login.

    Returns:
        The local snapshot folder (in the huggingface_hub cache).

    Raises:
        HubError: the repo or revision does not exist or cannot be read with this token, the Hub
            cannot be reached and nothing is cached, or the repo has no safetensors weights.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=PULL_PATTERNS)
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id (user/name)",
                       repo_id=repo_id) from e
    except RepositoryNotFoundError as e:
        hint = ("the token given cannot read it" if token else
                "if the repo is private, pass token= or set HF_TOKEN to a token that can read it")
        raise HubError(f"{repo_id!r} was not found on the Hub. Check the name; {hint}.", repo_id=repo_id) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id!r} has no revision {revision!r}", repo_id=repo_id) from e
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} is not in the local cache and the Hub cannot be reached; connect, or set "
            "HF_ENDPOINT to a reachable hub (e.g. `tunekit hub serve`)", repo_id=repo_id) from e
    except HfHubHTTPError as e:
        raise HubError(f"downloading {repo_id!r} failed: {_reason(e)}", repo_id=repo_id) from e
    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        raise HubError(
            f"{repo_id!r} has no safetensors weights; tunekit does not load pickled (.bin) weights. "
            "Convert them with safetensors (e.g. `save_pretrained(..., safe_serialization=True)`) and push again.",
            repo_id=repo_id)
    return folder


def pull(repo_id: str, *, revision: str | None = None, token: str | None = None) -> "TuneResult":
    """Download a fine-tune (tunekit run, plain PEFT adapter or full model) and open it.

    The model itself is loaded on first use (``chat``, ``evaluate``).

    Args:
        repo_id: ``user/name``.
        revision: branch, tag or commit id.
        token: Hub token for private repos (also used for the base model).

    Returns:
        A :class:`~tunekit.result.TuneResult` over the downloaded snapshot.
    """
    from .result import TuneResult

    folder = download(repo_id, revision=revision, token=token)
    result = TuneResult.from_dir(folder, repo_id=repo_id)
    result._token = token
    return result


def _reason(e: Exception) -> str:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "the token was refused (401); log in with `hf auth login` or set HF_TOKEN"
    if status == 403:
        return "the token may not write to this repo (403); use a token with write access"
    return str(e).splitlines()[0]
