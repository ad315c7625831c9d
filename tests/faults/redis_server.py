"""A redis-server of a test's own, on a free port, that the test may kill and restart (never
the shared servers on 6379/6380)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` (or ``valkey-server``) in ``folder`` on a free port; ``start``,
    ``kill`` (-9) and ``start`` again on the same port and folder. With ``appendonly``
    every write is fsynced to the append-only file before Redis replies (``appendfsync
    always``), so a restart keeps every write a client saw succeed."""

    def __init__(self, folder: Path, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            message = "no redis-server or valkey-server on PATH"
            if IN_CI:
                pytest.fail(f"{message} (CI=true: tests needing a server must not skip)")
            pytest.skip(message)
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.folder), "--save", "", "--daemonize", "no", "--logfile", "server.log"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not answer within 20 s"
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: nothing is flushed beyond what appendfsync already wrote."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
