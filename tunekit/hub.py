"""Pushing runs to and pulling them from a Hub (huggingface.co or `tunekit hub serve`), always
through ``huggingface_hub`` so the same code serves both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HubError

if TYPE_CHECKING:
    from .result import TuneResult

log = logging.getLogger(__name__)

# Weights only as safetensors: pickled *.bin files can run code when loaded.
PULL_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "*.md", "*.txt", "*.model", "*.png"]


def push_run(result: "TuneResult", repo_id: str, *, private: bool = False, token: str | None = None,
             commit_message: str | None = None) -> str:
    """Upload a run folder to ``repo_id`` in one commit and return the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from . import card
    from .result import PUSH_PATTERNS

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if result.run.get("data"):
            # The card's usage snippets name the repo, so render it for this repo id.
            card.write_card(result.output_dir, result.run, result.metrics, repo_id=repo_id,
                            endpoint=api.endpoint)
        api.upload_folder(
            folder_path=str(result.output_dir),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=PUSH_PATTERNS,
            ignore_patterns=["checkpoints/**", ".cache/**"],
            commit_message=commit_message or f"tunekit: {result.method} fine-tune of {result.base}",
        )
    except HfHubHTTPError as e:
        raise HubError(f"pushing to {repo_id!r} failed: {_reason(e)}", repo_id=repo_id) from e
    return str(url)


def pull(repo_id: str, *, revision: str | None = None, token: str | None = None) -> "TuneResult":
    """Download a fine-tune (tunekit run, plain PEFT adapter or full model) and open it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .result import TuneResult

    try:
        path = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=PULL_PATTERNS)
    except RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_id!r} was not found on the Hub. Check the name; if the repo is private, pass token= "
            "or set HF_TOKEN to a token that can read it.", repo_id=repo_id) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id!r} has no revision {revision!r}", repo_id=repo_id) from e
    except LocalEntryNotFoundError as e:
        raise HubError(f"{repo_id!r} is not cached and the Hub cannot be reached: {e}", repo_id=repo_id) from e
    except HfHubHTTPError as e:
        raise HubError(f"downloading {repo_id!r} failed: {_reason(e)}", repo_id=repo_id) from e
    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        raise HubError(
            f"{repo_id!r} has no safetensors weights; tunekit does not load pickled (.bin) weights",
            repo_id=repo_id)
    return TuneResult.from_dir(folder, repo_id=repo_id)


def _reason(e: Exception) -> str:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "the token was refused (401); log in with `hf auth login` or set HF_TOKEN"
    if status == 403:
        return "the token may not write to this repo (403)"
    return str(e).splitlines()[0]
