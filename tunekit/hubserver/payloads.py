"""JSON shapes the client parses: repo info (``ModelInfo``/``DatasetInfo``/``SpaceInfo``), tree
entries (``RepoFile``/``RepoFolder``) and commits (``GitCommitInfo``)."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache

from .blobs import BlobStore
from .cards import MAX_CARD_BYTES, CardError, parse_card_data, tags_from_card
from .records import Commit, Entry, Repo

logger = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def _card_from_blob(blobs: BlobStore, sha256: str) -> dict | None:
    # Keyed by content hash, so the cache can never serve a stale card.
    try:
        return parse_card_data(blobs.read(sha256, MAX_CARD_BYTES).decode("utf-8", errors="replace"))
    except CardError as e:
        # A bad card must not break the repo's info, nor a listing that includes it: the repo is
        # shown with empty card data.
        logger.info("ignoring README.md metadata of blob %s: %s", sha256, e)
        return {}


def card_data(blobs: BlobStore, tree: dict[str, Entry]) -> dict | None:
    """Parsed YAML header of the README.md in ``tree``, if any."""
    readme = tree.get("README.md")
    return _card_from_blob(blobs, readme.sha256) if readme else None


# What huggingface.co infers from config.json when the card names no pipeline_tag: the task of
# the architecture's head, by the class name's suffix (longest first).
_TASK_BY_HEAD = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForImageClassification", "image-classification"),
    ("ForAudioClassification", "audio-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForMaskedLM", "fill-mask"),
)
# PEFT's task_type in adapter_config.json → the same tasks.
_TASK_BY_PEFT_TYPE = {
    "CAUSAL_LM": "text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
MAX_CONFIG_BYTES = 1024 * 1024


@lru_cache(maxsize=256)
def _json_from_blob(blobs: BlobStore, sha256: str) -> dict:
    try:
        data = json.loads(blobs.read(sha256, MAX_CONFIG_BYTES))
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _config(blobs: BlobStore, tree: dict[str, Entry], name: str) -> dict | None:
    entry = tree.get(name)
    if entry is None or entry.size > MAX_CONFIG_BYTES:
        return None
    return _json_from_blob(blobs, entry.sha256)


def model_meta(blobs: BlobStore, tree: dict[str, Entry], card: dict | None) -> dict:
    """``library_name`` and ``pipeline_tag`` of a model: the card's, else inferred from its
    files as huggingface.co does (``adapter_config.json`` → peft, ``config.json`` → transformers
    and the task of its architecture), so ``transformers.pipeline(model=…)`` finds the task of a
    model pushed with ``push_to_hub``."""
    card = card or {}
    library, task = card.get("library_name"), card.get("pipeline_tag")
    adapter = _config(blobs, tree, "adapter_config.json")
    config = _config(blobs, tree, "config.json")
    if adapter is not None:
        library = library or "peft"
        task = task or _TASK_BY_PEFT_TYPE.get(str(adapter.get("task_type")))
    if config is not None:
        library = library or "transformers"
        architectures = config.get("architectures")
        arch = architectures[0] if isinstance(architectures, list) and architectures else None
        if not task and isinstance(arch, str):
            task = next((t for suffix, t in _TASK_BY_HEAD if arch.endswith(suffix)), None)
            if task is None and arch.endswith("Model"):
                task = "feature-extraction"  # a bare encoder (BertModel …)
    return {
        "library_name": library if isinstance(library, str) else None,
        "pipeline_tag": task if isinstance(task, str) else None,
    }


def file_json(path: str, entry: Entry) -> dict:
    """A file as the tree and paths-info endpoints describe it."""
    data: dict = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return data


def folder_json(path: str, tree: dict[str, Entry]) -> dict:
    """A folder; its oid is derived from what it contains (stable for unchanged content)."""
    prefix = path + "/"
    digest = hashlib.sha1()
    for p in sorted(p for p in tree if p.startswith(prefix)):
        digest.update(f"{p}\0{tree[p].oid}\n".encode())
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}


def list_tree(tree: dict[str, Entry], folder: str, recursive: bool) -> list[dict] | None:
    """Entries under ``folder`` ("" for the root), folders first as the Hub does.

    Returns:
        The entries, or ``None`` when ``folder`` is not a folder of the tree.
    """
    prefix = folder + "/" if folder else ""
    folders: set[str] = set()
    files: list[str] = []
    for path in tree:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        if recursive:
            files.append(path)
            for i in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:i]))
        elif len(rest) == 1:
            files.append(path)
        else:
            folders.add(prefix + rest[0])
    if folder and not files and not folders:
        return None
    return [folder_json(f, tree) for f in sorted(folders)] + [
        file_json(p, tree[p]) for p in sorted(files)
    ]


def repo_tags(repo: Repo, card: dict | None, meta: dict | None) -> list[str]:
    """The tags listings filter on: the card's (:func:`.cards.tags_from_card`) plus the
    inferred library and task."""
    tags = tags_from_card(card, dataset=repo.type == "dataset")
    for value in (meta or {}).values():
        if value and value not in tags:
            tags.append(value)
    return tags


def commit_json(commit: Commit) -> dict:
    """One commit of ``list_repo_commits``."""
    return {
        "id": commit.id,
        "title": commit.title,
        "message": commit.message,
        "authors": [{"user": commit.author, "avatar": None}],
        "date": commit.date,
    }


def repo_json(
    repo: Repo,
    commit: Commit,
    tree: dict[str, Entry],
    card: dict | None,
    *,
    meta: dict | None = None,
    siblings: bool = True,
) -> dict:
    """Repo info as ``/api/{type}s/{id}`` returns it.

    Args:
        meta: a model's ``library_name`` and ``pipeline_tag`` (:func:`model_meta`).
    """
    data: dict = {
        "_id": hashlib.sha1(f"{repo.type}:{repo.uid}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "likes": 0,
        "tags": repo_tags(repo, card, meta),
        "usedStorage": sum(e.size for e in tree.values()),
    }
    if card is not None:
        data["cardData"] = card
    if repo.type == "model":
        data["modelId"] = repo.repo_id
        data["downloads"] = 0
        data.update(meta or {})
    elif repo.type == "dataset":
        data["downloads"] = 0
    else:
        data["sdk"] = (card or {}).get("sdk") or repo.sdk
    if siblings:
        data["siblings"] = [
            {
                "rfilename": path,
                "size": e.size,
                "blobId": e.oid,
                **(
                    {"lfs": {"size": e.size, "sha256": e.sha256, "pointerSize": e.pointer_size}}
                    if e.lfs
                    else {}
                ),
            }
            for path, e in sorted(tree.items())
        ]
    return data
