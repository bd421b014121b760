"""An app of ``tunekit serve`` (or any ASGI app) on 127.0.0.1 in a thread, for tests that talk
to it with the official ``openai`` client or raw sockets."""

from __future__ import annotations

import socket
import threading
import time

from hub_fixtures import free_port


class RunningApp:
    """A uvicorn server for ``app`` on a free loopback port, started by ``with``."""

    def __init__(self, app, pool=None):
        import uvicorn

        self.app, self.pool = app, pool
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._uvicorn.should_exit = True
        self._thread.join(timeout=30)

    def client(self, api_key: str = "unused", **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def raw(self, head: bytes, timeout: float = 5) -> bytes:
        """Send raw bytes; the reply's status line and headers (whatever came within ``timeout``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(head)
            got = b""
            try:
                while b"\r\n\r\n" not in got:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except TimeoutError:
                pass
        return got
