"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a fresh cluster in a temporary
directory, listening on 127.0.0.1 on a free port with trust authentication, stopped and removed afterwards.
initdb refuses to run as root, so as root the cluster runs as the `postgres` system user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers_servers import free_port

USER = "lossviz"


def find_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (initdb, postgres), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    def __init__(self, port: int):
        self.port = port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its name."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        # autocommit: CREATE DATABASE cannot run in a transaction
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    binaries = find_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: `bash scripts/system-deps.sh postgres` "
                           "(Debian's postgresql package) installs it")
    as_root = os.geteuid() == 0
    owner = pwd.getpwnam("postgres") if as_root else None
    base = Path(tempfile.mkdtemp(prefix="lossviz-pg-"))
    data = base / "data"
    data.mkdir()
    if owner is not None:
        for path in (base, data):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def command(*args: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--", *args] if as_root else list(args))

    server = None
    try:
        subprocess.run(command(str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                               "--no-sync", "-E", "UTF8"),
                       check=True, capture_output=True, text=True)
        port = free_port()
        server = subprocess.Popen(
            command(str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                    "-k", str(base), "-c", "fsync=off", "-c", "max_connections=200"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start on port {port}") from None
                time.sleep(0.2)
        postgres = PostgresServer(port)
        deadline = time.time() + 30
        while True:  # the port opens before the server accepts logins
            try:
                postgres.new_database()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield postgres
    finally:
        if server is not None:
            # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for the clients still connected);
            # to the whole group, as runuser stands between us and the server.
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        shutil.rmtree(base, ignore_errors=True)
