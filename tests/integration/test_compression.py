"""Compressed task messages through a real worker (SQLite broker): every method this Python
has, the task_compression setting, and bad compressed input rejected with one line while the
worker goes on. The upstream side: tests/compat/test_upstream_interop.py (both ways)."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

from celery import Celery
from celery.messaging import compression, limits
from celery.messaging.protocol import build_task_message

from .worker_harness import running_worker

METHODS = ["gzip", "zlib", "bzip2", "bzip", "lzma", "xz"]


@pytest.fixture
def app(tmp_path):
    app = Celery("compress", broker=f"sqlite:///{tmp_path}/broker.db",
                 backend=f"db+sqlite:///{tmp_path}/results.db", set_as_current=False)

    @app.task(name="c.echo")
    def echo(value):
        return value

    @app.task(name="c.aecho")
    async def aecho(value):
        return value

    yield app
    app.close()


def test_the_header_and_bodies_are_kombus():
    kombu_compression = pytest.importorskip("kombu.compression")  # (GIL pass: with Flower)
    for method in METHODS:
        ours, header = compression.compress(b"payload " * 50, method)
        theirs, their_header = kombu_compression.compress(b"payload " * 50, method)
        assert header == their_header
        assert compression.decompress(theirs, their_header) == b"payload " * 50
        assert kombu_compression.decompress(ours, header) == b"payload " * 50


def test_compressed_messages_run_and_bad_ones_are_rejected_with_one_line(app, caplog,
                                                                        monkeypatch):
    value = {"text": "x" * 5000, "list": list(range(100))}
    with running_worker(app, loop_workers=1, sync_workers=2):
        for method in METHODS:
            result = app.send_task("c.echo", (value,), compression=method)
            assert result.get(timeout=20) == value, method
        app.conf.task_compression = "bzip2"  # the setting, for every send (and delay())
        assert app.tasks["c.aecho"].delay(value).get(timeout=20) == value
        app.conf.task_compression = None

        monkeypatch.setattr(limits, "MAX_BYTES", 1_000_000)
        bomb = build_task_message("c.echo", ["0" * 10], compression="gzip")
        bomb = dataclasses.replace(bomb, body=zlib.compress(b"0" * 2_000_000))  # 2 kB: 2 MB
        unknown = build_task_message("c.echo", [1], compression="gzip")
        unknown.headers["compression"] = "application/x-rar"
        corrupt = build_task_message("c.echo", [2], compression="bzip2")
        corrupt = dataclasses.replace(corrupt, body=corrupt.body[:-8])
        for message in (bomb, unknown, corrupt):
            app.transport.publish(message)
        after = app.send_task("c.echo", ("still running",), compression="xz")
        assert after.get(timeout=20) == "still running"
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    bad = {m.headers["id"] for m in (bomb, unknown, corrupt)}
    assert sum(any(i in line for i in bad) for line in lines) >= 3, lines
    assert "larger than 1000000 bytes once decompressed" in caplog.text
    assert "compressed with 'application/x-rar', which this worker cannot decompress" \
        in caplog.text
    assert "(application/x-bz2) is corrupt" in caplog.text
    for message in (bomb, unknown, corrupt):
        assert app.AsyncResult(message.headers["id"]).state == "FAILURE"


def test_an_unknown_method_is_refused_when_sending(app):
    from celery.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="Unknown compression 'snappy'"):
        app.send_task("c.echo", (1,), compression="snappy")
