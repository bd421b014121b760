"""One job's training, in its own process: ``python -m tunekit.jobs.worker SPEC``.

``SPEC`` is a JSON file ``{"data": path, "options": {...}, "params": {file name: request field}}``; the worker runs
``tunekit.finetune(data, **options)``, pushes the result with its model card when the spec names a
Hub repo (``"push": "namespace/name"``; endpoint and token from ``HF_ENDPOINT`` / ``HF_TOKEN``), and
writes ``outcome.json`` next to it: ``{"ok": true, "output_dir": …}`` (with ``"pushed": url`` or
``"push_error": why``) or ``{"ok": false, "code", "message", "param"}``. A process that
dies without writing it (killed, out of memory) is reported by the runner from its exit status
and log. The worker stops by itself when the server that started it goes away, so a restarted
server never finds two workers on one job.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

OUTCOME = "outcome.json"


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(3)  # the server is gone; its next start resumes this job from a checkpoint
        time.sleep(1)


def _outcome(e: BaseException, params: dict[str, str]) -> dict:
    from ..errors import ConfigError, DataError, ModelError, TunekitError

    if isinstance(e, DataError):
        # Which request field named the file at fault (files are linked as <file id>.jsonl).
        param = next((p for name, p in params.items() if name in str(e.path or "")), "training_file")
        return {"ok": False, "code": "invalid_file_format", "message": str(e), "param": param}
    if isinstance(e, ConfigError):
        return {"ok": False, "code": "invalid_hyperparameters", "message": str(e), "param": "hyperparameters"}
    if isinstance(e, ModelError):
        return {"ok": False, "code": "model_not_available", "message": str(e), "param": "model"}
    if isinstance(e, TunekitError):
        return {"ok": False, "code": "training_failed", "message": str(e), "param": None}
    return {"ok": False, "code": "server_error", "message": f"training failed: {type(e).__name__}: {e}", "param": None}


def _push(result, repo_id: str) -> dict:
    """Push the trained model to ``repo_id``; a failure is reported, not raised: the job has
    succeeded and its model is served either way."""
    try:
        return {"pushed": result.push(repo_id, private=True, commit_message="tunekit serve: fine-tuning job result")}
    except Exception as e:  # noqa: BLE001 - every reason (no token, Hub down) goes to the job's events
        import traceback

        traceback.print_exc()
        return {"push_error": f"{type(e).__name__}: {e}"}


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    parent = int(argv[1]) if len(argv) > 1 else os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    spec = json.loads(spec_path.read_text())
    # tunekit's own lines (which checkpoint a resumed job starts from, rows skipped) in log.txt.
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("tunekit").setLevel(logging.INFO)
    try:
        from ..train import finetune

        result = finetune(spec["data"], **spec["options"])
        outcome = {"ok": True, "output_dir": str(result.output_dir)}
        if spec.get("push"):
            outcome.update(_push(result, spec["push"]))
    except Exception as e:  # every failure becomes the job's error, with its reason
        import traceback

        traceback.print_exc()
        outcome = _outcome(e, spec.get("params", {}))
    tmp = spec_path.with_name(f".{OUTCOME}.tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, spec_path.with_name(OUTCOME))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
