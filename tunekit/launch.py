"""Data-parallel training in several processes, through accelerate's launcher.

``tunekit train --nproc N`` starts N copies of ``tunekit train`` under ``accelerate launch``
(torchrun underneath): each process trains on its share of every batch, gradients are averaged
(NCCL on GPUs, gloo on CPUs), and only the main process writes the output folder and pushes.
A script that calls ``tunekit.finetune`` can be launched the same way
(``accelerate launch --num_processes 2 train.py``); with an accelerate config file
(``examples/accelerate/*.yaml``) the same run uses FSDP or DeepSpeed ZeRO-3 instead of plain
data parallelism.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)


def in_distributed_run() -> bool:
    """True inside a process started by accelerate/torchrun (so it must not launch again)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def launch_train(data: Any, options: dict[str, Any], *, nproc: int, config_file: str | None = None,
                 verbose: bool = False, port: int | None = None) -> int:
    """Run ``tunekit train`` in ``nproc`` data-parallel processes and wait for them.

    Args:
        data: the training data, as ``tunekit train`` takes it (a path or Hub dataset id).
        options: ``finetune`` options (as the CLI parsed them).
        nproc: number of processes (GPUs, or CPU processes when there is no GPU).
        config_file: an accelerate config (FSDP, DeepSpeed…); default: plain data parallelism.
        verbose: pass ``-v`` to the workers.
        port: the rendezvous port on 127.0.0.1; default: a free one.

    Returns:
        The launcher's exit code (non-zero when any process failed).

    Raises:
        ConfigError: ``nproc`` is not a positive integer, data is not a path/id, or the config
            file does not exist.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {nproc!r}")
    if not isinstance(data, (str, os.PathLike)):
        raise ConfigError("multi-process training reads its data from a file, folder or Hub dataset id")
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"accelerate config {config_file} does not exist (see examples/accelerate/)")
    import yaml

    options = dict(options)
    # Every process must write to the same folder: name it here, once, rather than let each rank
    # pick its own timestamp.
    if not options.get("output_dir"):
        from .folders import fresh_dir, run_name
        from .models import EMBEDDED_ID

        options["output_dir"] = str(fresh_dir(run_name(options.get("base") or EMBEDDED_ID,
                                                       options.get("method") or "auto")))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="tunekit-launch-", delete=False) as f:
        yaml.safe_dump({"data": os.fspath(data), **options}, f)
        run_config = f.name
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port or _free_port())]
    if config_file:
        cmd += ["--config_file", str(config_file)]
    else:
        # accelerate's MULTI_CPU mode needs mpirun; its torchrun launcher ("multi_gpu") starts the
        # processes on one machine with or without GPUs, and they pick gloo when there is none.
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "tunekit.cli", *(["-v"] if verbose else []), "train", "--config", run_config]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        # torchrun would pin every process to one thread; share the cores between them instead.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    try:
        return subprocess.run(cmd, env=env).returncode
    finally:
        Path(run_config).unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
