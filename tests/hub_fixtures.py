"""Run tunekit's hub server as a real subprocess, for tests that drive it with huggingface_hub.

Import the fixtures into a conftest (``from hub_fixtures import *``) or a test module. The
``hub`` fixture is module-scoped: one server per test module, one user with a token, and an
``HfApi`` bound to both. huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once at
import, so in-process calls pass ``endpoint=`` (``hub.api`` does), use ``hub.client()`` for code
that cannot take one (``ModelCard.load``), or run in a subprocess with ``env=hub.env()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["HubServer", "TestHub", "add_hub_user", "free_port", "hub", "hub_cli", "hub_online", "start_hub",
           "tiny_base"]

_CLI = [sys.executable, "-m", "tunekit.cli", "hub"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_cli(data_dir: str | Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``tunekit hub ARGS --data DATA_DIR`` (not checked: tests look at the exit status)."""
    return subprocess.run([*_CLI, *args, "--data", str(data_dir)], capture_output=True, text=True,
                          timeout=60, input=input)


def add_hub_user(data_dir: str | Path, name: str) -> str:
    """Create a hub user through the CLI (``tunekit hub user add``) and return its token."""
    out = subprocess.run(
        [*_CLI, "user", "add", name, "--data", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


class HubServer:
    """A ``tunekit hub serve`` subprocess on a loopback port."""

    def __init__(self, data_dir: str | Path, port: int | None = None, args: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.args = list(args or [])  # more `hub serve` flags (--verbose, --public-url …)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> HubServer:
        """Start the server and wait until it answers ``/api/health``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [
                *_CLI,
                "serve",
                "--data",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"hub server exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub server did not answer within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc else None

    def kill(self) -> None:
        """``kill -9`` the server: no shutdown code runs (for crash-recovery tests)."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and data dir."""
        self.stop()
        self.start()

    def log(self, tail: int = 5000) -> str:
        """The last ``tail`` characters the server wrote (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""


def start_hub(data_dir: str | Path, port: int | None = None, args: list[str] | None = None) -> HubServer:
    """Start ``tunekit hub serve --data DATA_DIR [ARGS]`` on a free (or the given) loopback port."""
    return HubServer(data_dir, port, args).start()


@dataclass
class TestHub:
    """What the ``hub`` fixture gives a test: a running server, a user and a client for it."""

    __test__ = False  # not a test class, despite the name

    server: HubServer
    user: str
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def api(self):
        """``HfApi(endpoint=url, token=token)``."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=self.token)

    def restart(self) -> None:
        """Restart the server process (same port, same data)."""
        self.server.restart()

    def add_user(self, name: str) -> str:
        """Create another user and return its token."""
        return add_hub_user(self.data_dir, name)

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment for a client subprocess (``hf`` CLI, a script) talking to this hub."""
        env = dict(os.environ)
        env.update(
            HF_ENDPOINT=self.url,
            HF_TOKEN=token or self.token,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        return env

    @contextlib.contextmanager
    def client(self, token: str | None = None) -> Iterator[None]:
        """Point in-process huggingface_hub calls that take no ``endpoint=`` at this hub.

        Patches what huggingface_hub fixed at import time: the constants read from the
        environment (the download cache goes next to the hub's data, not to ``~/.cache``) and
        the endpoint of its module-level ``HfApi`` (behind ``upload_file``…).
        """
        from huggingface_hub import constants, hf_api

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(constants, "ENDPOINT", self.url)
            mp.setattr(
                constants,
                "HUGGINGFACE_CO_URL_TEMPLATE",
                self.url + "/{repo_id}/resolve/{revision}/{filename}",
            )
            mp.setattr(constants, "HF_HUB_OFFLINE", False)
            mp.setattr(constants, "HF_HUB_CACHE", str(self.data_dir.parent / "client-cache"))
            mp.setattr(hf_api.api, "endpoint", self.url)
            mp.setenv("HF_TOKEN", token or self.token)
            yield


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[TestHub]:
    """A hub server for this test module, with user ``alice`` and her token."""
    from huggingface_hub import constants

    data_dir = tmp_path_factory.mktemp("hub") / "data"
    data_dir.mkdir()
    token = add_hub_user(data_dir, "alice")
    server = start_hub(data_dir)
    # conftest switches huggingface_hub offline for the whole session; this module talks to a
    # local server only, so allow requests (to it) while the fixture lives.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        try:
            yield TestHub(server=server, user="alice", token=token)
        finally:
            server.stop()
    # A request the server answered with a 500 shows up here even if the client retried it away.
    log = server.log(tail=10**7)
    assert "Traceback" not in log, f"the hub server logged an error:\n{log[-5000:]}"


@pytest.fixture(scope="module")
def hub_online(hub):
    """Point in-process huggingface_hub (and tunekit's reachability check) at this module's hub.
    conftest removes HF_TOKEN again for each test, so tests pass token= unless they set it."""
    with hub.client(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "0")
        yield


@pytest.fixture(scope="module")
def tiny_base(hub, tiny_model_dir) -> str:
    """The tiny model as a full-model Hub repo, so adapters trained on it name a Hub id."""
    repo = f"{hub.user}/tiny-base"
    hub.api.create_repo(repo)
    hub.api.upload_folder(folder_path=str(tiny_model_dir), repo_id=repo)
    return repo
