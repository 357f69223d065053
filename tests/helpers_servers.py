"""Local servers for the tests: a free port, an `mlflow server` process waited on until healthy, and its
REST API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(command: list[str], ready_path: str, port: int, name: str, timeout: float = 120,
            **popen: object) -> Iterator[str]:
    """Run a server `command` (listening on 127.0.0.1:`port`) until the block ends; yields its URL once
    `ready_path` answers 200, and fails with its stderr if it exits or does not answer within `timeout`."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError(f"{name} did not start: {server.communicate()[1][-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def mlflow_server(backend_store_uri: str, cwd: Path, env: dict[str, str], *extra: str,
                  timeout: float = 120) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port until the block ends; yields its URL once /health answers."""
    port = free_port()
    with serving([str(MLFLOW), "server", "--backend-store-uri", backend_store_uri, "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1", *extra], "/health", port, "mlflow server", timeout,
                 cwd=cwd, env=env) as url:
        yield url


@contextmanager
def optuna_dashboard(storage: str, timeout: float = 120) -> Iterator[str]:
    """`optuna-dashboard` on 127.0.0.1 and a free port over `storage` (a journal file or a database URL) until
    the block ends; yields its URL once /api/studies answers."""
    port = free_port()
    with serving([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1",
                  "--port", str(port)], "/api/studies", port, "optuna-dashboard", timeout) as url:
        yield url


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
