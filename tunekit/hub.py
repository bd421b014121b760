"""Pushing run folders to and downloading them from a Hub (huggingface.co or `tunekit hub serve`),
always through ``huggingface_hub`` so the same code serves both.

The Hub is chosen the way huggingface_hub chooses it: ``HF_ENDPOINT`` (read when
huggingface_hub is first imported), the token from ``token=``, ``HF_TOKEN`` or ``hf auth login``.
Tokens are handed to huggingface_hub only; they are never logged or written into a file.

This module takes folders and run records, never a ``TuneResult``: the result sits above it and
calls in (``TuneResult.push``, ``tunekit.load``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import HubError, hub_error
from .hubid import is_hub_id
from .models import MODEL_PATTERNS
from .record import METRICS_FILE, RUN_FILE, Metrics, RunInfo, local_name

log = logging.getLogger(__name__)

# A run folder carries the model files (safetensors only: models.MODEL_PATTERNS) and its loss plot.
RUN_PATTERNS = (*MODEL_PATTERNS, "*.png")
# Local-only parts of a run folder: checkpoints are for resuming (and large).
NEVER_PUSH = ("checkpoints/*", ".cache/*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def push_run(folder: str | os.PathLike, repo_id: str, *, run: RunInfo, metrics: Metrics, private: bool = False,
             token: str | None = None, commit_message: str | None = None) -> str:
    """Upload a run folder to ``repo_id`` in one commit and return the repo URL.

    The model card is rendered for ``repo_id`` (its usage snippets name the repo) and uploaded
    from memory, so a folder that lives in the Hub cache is never written to.

    Args:
        folder: the run (or adapter, or model) folder to upload.
        repo_id: ``user/name`` or ``org/name``; created when missing.
        run: the folder's record (``record.describe_folder``).
        metrics: the folder's metrics, for the card.
        private: create the repo private (an existing repo keeps its visibility).
        token: Hub token with write access; default: ``HF_TOKEN`` or the saved login.
        commit_message: message of the commit.

    Returns:
        The repo's URL.

    Raises:
        HubError: the repo id is malformed, or the repo cannot be created or written (bad token,
            no access, server error).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    from . import card

    folder = Path(folder)
    if not is_hub_id(repo_id, owner_required=False):
        raise HubError(f"{repo_id!r} is not a valid repo id (expected user/name)", repo_id=repo_id)
    api = HfApi(token=token)
    files = files_to_push(folder)
    if not any(name.endswith(".safetensors") for name in files):
        raise HubError(f"{folder} holds no safetensors weights to push", repo_id=repo_id)
    if run.adapter and not card.hub_base_id(run):
        log.warning("%s was trained on the local folder %s; whoever loads %s needs that base too: "
                    "tunekit.load(%r, base=...)", folder, run.base, repo_id, repo_id)
    rewritten = published_files(folder, run, metrics)
    if run.trained_here:
        rewritten["README.md"] = str(card.render_card(run, metrics, repo_id=repo_id, endpoint=api.endpoint)).encode()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=rewritten.get(name, str(path)))
                  for name, path in files.items()]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data)
                   for name, data in rewritten.items() if name not in files]
    try:
        with lfs_only_for_tunekit_hub(api.endpoint):
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.create_commit(repo_id, operations=operations, repo_type="model",
                                     commit_message=commit_message or f"tunekit: {run.method} fine-tune of {run.published().base}")
    except (HFValidationError, HfHubHTTPError, ConnectionError) as e:
        raise hub_error(e, repo_id=repo_id, action="pushing to", token=token) from e
    log.info("pushed %d files to %s (commit %s)", len(operations), url, info.oid)
    return str(url)


_TUNEKIT_HUB: dict[str, bool] = {}
# The one Hub known to speak Xet; any other endpoint is asked whether it is a tunekit hub.
XET_HUBS = ("https://huggingface.co",)


def is_tunekit_hub(endpoint: str) -> bool:
    """Whether ``endpoint`` is a ``tunekit hub serve`` (its ``/api/health`` says so); asked once
    per endpoint and process, never for huggingface.co."""
    endpoint = endpoint.rstrip("/")
    if endpoint in XET_HUBS:
        return False
    if endpoint not in _TUNEKIT_HUB:
        from huggingface_hub import get_session

        try:
            answer = get_session().get(f"{endpoint}/api/health", timeout=10)
            _TUNEKIT_HUB[endpoint] = answer.status_code == 200 and answer.json().get("server") == "tunekit-hub"
        except Exception:  # unreachable or not JSON: the real request will report it
            return False
    return _TUNEKIT_HUB[endpoint]


@contextlib.contextmanager
def lfs_only_for_tunekit_hub(endpoint: str) -> Iterator[None]:
    """Upload through LFS, not Xet, while talking to a tunekit hub.

    huggingface_hub picks Xet on its own whenever ``hf_xet`` is installed (nothing the server
    answers makes it fall back), and a tunekit hub has no Xet storage. Its switch is the
    ``HF_HUB_DISABLE_XET`` constant read at import; it is set for the duration of the block only.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_DISABLE_XET or not is_tunekit_hub(endpoint):
        yield
        return
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = False


def published_files(folder: str | os.PathLike, run: RunInfo, metrics: Metrics) -> dict[str, bytes]:
    """The records a push uploads in place of the folder's own: ``tunekit.json`` and
    ``metrics.json`` as :meth:`RunInfo.published` (secrets redacted, local paths reduced to
    names) and ``adapter_config.json`` naming a local base by its folder's name. The folder's
    files stay as they are: a local run reloads its base from the path.

    Args:
        folder: the run folder.
        run: its record.
        metrics: its metrics.

    Returns:
        ``{path in repo: content}`` for the files the folder holds.
    """
    folder = Path(folder)
    out: dict[str, bytes] = {}
    if (folder / RUN_FILE).exists():
        out[RUN_FILE] = run.published().to_json().encode()
    if (folder / METRICS_FILE).exists():
        out[METRICS_FILE] = metrics.published().to_json().encode()
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.exists():
        cfg = json.loads(adapter_cfg.read_text())
        base = cfg.get("base_model_name_or_path")
        if isinstance(base, str) and local_name(base) != base:
            # PEFT's loaders take this as a Hub id or a folder; a path on this machine is
            # neither anywhere else, and it names the user's home.
            cfg["base_model_name_or_path"] = local_name(base)
            out["adapter_config.json"] = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
    return out


def files_to_push(folder: str | os.PathLike) -> dict[str, Path]:
    """``{path in repo: local path}`` of what a push uploads: :data:`RUN_PATTERNS`, never
    checkpoints or pickles."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(name, p) for p in NEVER_PUSH):
            continue
        if any(fnmatch.fnmatch(name, p) for p in RUN_PATTERNS):
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
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=list(RUN_PATTERNS))
    except (HFValidationError, LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise hub_error(e, repo_id=repo_id, action="downloading", revision=revision, token=token) from e
    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        raise HubError(
            f"{repo_id!r} has no safetensors weights; tunekit does not load pickled (.bin) weights. "
            "Convert them with safetensors (e.g. `save_pretrained(..., safe_serialization=True)`) and push again.",
            repo_id=repo_id)
    return folder


def local_folder(name_or_path: str | os.PathLike, *, revision: str | None = None,
                 token: str | None = None) -> tuple[Path, str | None]:
    """A fine-tune's folder on this machine: the folder itself, or a Hub repo downloaded.

    Args:
        name_or_path: a local folder, or a Hub repo id.
        revision: Hub branch, tag or commit id (ignored for folders).
        token: Hub token for private repos.

    Returns:
        ``(folder, repo_id)``; ``repo_id`` is None for a local folder.

    Raises:
        HubError: not a folder, and not a Hub repo that can be downloaded (see :func:`download`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, None
    repo_id = os.fspath(name_or_path)
    return download(repo_id, revision=revision, token=token), repo_id
