"""Message signing (app.setup_security, the auth serializer) through a real worker: signed
messages run; unsigned, unknown-signer and tampered ones are refused with one line each and
the worker goes on. Upstream Celery both ways: tests/compat/test_upstream_signing.py."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from celery import Celery
from celery.exceptions import ImproperlyConfigured
from celery.messaging import serialization
from celery.messaging.protocol import build_task_message
from celery.security.serializer import Certificate, PrivateKey, SecureSerializer, load_store

from ..signing_keys import make_signer
from .worker_harness import running_worker


@pytest.fixture
def keys(tmp_path):
    make_signer(tmp_path, "signer", trusted=True)
    make_signer(tmp_path, "stranger", trusted=False)
    yield tmp_path
    serialization.registry.pop("auth", None)  # setup_security registers it process-wide
    serialization._by_content_type.pop("application/data", None)


def test_signed_messages_run_and_untrusted_ones_are_refused(keys, caplog):
    app = Celery("signing", broker=f"sqlite:///{keys}/broker.db",
                 backend=f"db+sqlite:///{keys}/results.db", set_as_current=False,
                 task_serializer="auth", accept_content=["auth"],
                 result_accept_content=["json"],
                 security_key=str(keys / "signer.key"),
                 security_certificate=str(keys / "signer.pem"),
                 security_cert_store=str(keys / "store"))

    @app.task(name="s.add")
    def add(x, y):
        return x + y

    @app.task(name="s.aadd")
    async def aadd(x, y):
        return x + y

    app.setup_security()
    try:
        message = app._prepare("s.add", (1, 2), None, add, {})[0]
        assert message.content_type == "application/data"
        fields = base64.b64decode(message.body).split(b"\x00\x01", 4)
        assert base64.b64decode(fields[0]).decode().startswith("celery-asyncio tests signer ")
        assert fields[2:4] == [b"application/json", b"utf-8"]
        with running_worker(app, loop_workers=1, sync_workers=1):
            assert add.delay(2, 3).get(timeout=20) == 5
            assert aadd.delay(4, 5).get(timeout=20) == 9
            unsigned = build_task_message("s.add", [1, 1])  # plain JSON
            forged = SecureSerializer(PrivateKey((keys / "stranger.key").read_text()),
                                      Certificate((keys / "stranger.pem").read_text()),
                                      load_store(str(keys / "store")))
            by_stranger = dataclasses.replace(
                build_task_message("s.add", [2, 2]), content_type="application/data",
                body=forged.serialize(([2, 2], {}, {})))
            tampered_fields = base64.b64decode(app._prepare("s.add", (3, 3), None, add,
                                                            {})[0].body).split(b"\x00\x01")
            tampered_fields[4] = tampered_fields[4].replace(b"3", b"9")
            tampered = dataclasses.replace(
                build_task_message("s.add", [3, 3]), content_type="application/data",
                body=base64.b64encode(b"\x00\x01".join(tampered_fields)))
            for bad in (unsigned, by_stranger, tampered):
                app.transport.publish(bad)
            assert add.delay(10, 1).get(timeout=20) == 11  # still running
        errors = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
        assert "content type 'application/json' is not in accept_content" in errors
        assert "Unknown certificate: 'celery-asyncio tests stranger " in errors
        assert "Bad signature: the message does not match its signature" in errors
        # refused on receipt (content type), or when decoded (signature): then FAILURE
        assert app.AsyncResult(unsigned.headers["id"]).state == "PENDING"
        assert [app.AsyncResult(m.headers["id"]).state for m in (by_stranger, tampered)] \
            == ["FAILURE", "FAILURE"]
    finally:
        app.close()


def test_setup_security_refuses_a_half_configured_app(keys):
    app = Celery("half", set_as_current=False, task_serializer="auth",
                 accept_content=["auth", "json"])
    with pytest.raises(ImproperlyConfigured, match="accept_content = \\['auth'\\]"):
        app.setup_security()
    app.conf.accept_content = ["auth"]
    with pytest.raises(ImproperlyConfigured, match="needs security_key, security_certificate"):
        app.setup_security()
    app.close()
