"""Remote control after bad broadcasts (issue 20, item 4): each bad command is logged and
dropped, or answered with an error, and the next command is answered; on every broker."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import valkey

from celery.messaging import pidbox
from tests.integration.worker_harness import running_worker

from .brokers import NAMES, REDIS_DB, make_broker
from .test_poison_messages import make_app

DEEP = "[" * 5000 + "]" * 5000


def broadcast(body: dict, headers: dict | None = None) -> str:
    return pidbox.encode(body, "celery.pidbox", "", headers or {"clock": 1, "expires": 0})


def bad_commands(reply_to: dict) -> list[str]:
    """Bad broadcasts, each for every worker; the last two ask for a reply."""
    ping = {"method": "ping", "arguments": {}}
    nested_headers = json.loads(broadcast(ping))
    nested_headers["headers"]["deep"] = "@@"
    nested_body = json.loads(broadcast(ping))
    nested_body["body"] = "@@"
    return [
        "not json", "[]", '{"body": 5}',
        json.dumps(nested_headers).replace('"@@"', DEEP),
        json.dumps(nested_body).replace('"@@"', json.dumps(DEEP)),
        broadcast({**ping, "destination": 5}),
        broadcast({**ping, "destination": {"a": 1}}),
        broadcast({**ping, "pattern": "(", "matcher": "pcre"}),
        broadcast({**ping, "pattern": 5, "matcher": "glob"}),
        broadcast(ping, {"clock": "Infinity-ish", "expires": [1]}),
        broadcast({**ping, "method": ["not", "a", "name"]}),
        broadcast({"method": "revoke", "arguments": {"task_id": {"sneaky": 1}},
                   "reply_to": reply_to, "ticket": "t-revoke"}),
        broadcast({"method": "ping", "arguments": ["a", "list"], "reply_to": reply_to,
                   "ticket": "t-list"}),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_remote_control_answers_after_bad_broadcasts(name: str, tmp_path: Path, caplog):
    broker = make_broker(name, tmp_path)
    app = make_app(broker)
    node = f"poison-{uuid.uuid4().hex[:6]}@test"
    transport = app.transport
    try:
        with running_worker(app, hostname=node, loop_workers=1, sync_workers=1):
            assert app.control.ping([node], timeout=2) == [{node: {"ok": "pong"}}]
            with caplog.at_level(logging.WARNING):
                reply_queue = f"{uuid.uuid4().hex}.reply.celery.pidbox"
                app.portal.call(transport.direct_bind("reply.celery.pidbox", reply_queue,
                                                      reply_queue))
                reply_to = {"exchange": "reply.celery.pidbox", "routing_key": reply_queue}
                if name == "redis":  # bytes that are not text, straight onto the channel
                    with valkey.Valkey.from_url(broker.url) as client:
                        client.publish(f"/{REDIS_DB}.celery.pidbox", b"\xff\xfe\x00garbage")
                for payload in bad_commands(reply_to):
                    app.portal.call(transport.fanout_publish("celery.pidbox", payload))
                # the next command is answered (and so were the bad ones asking for one)
                assert app.control.ping([node], timeout=5) == [{node: {"ok": "pong"}}]
                replies = []
                for _ in range(20):
                    replies += app.portal.call(transport.pop_raw(reply_queue, 0.25))
                    if len(replies) >= 2:
                        break
            answers = {pidbox.decode(r)[1]["ticket"]: pidbox.decode(r)[0][node] for r in replies}
            assert "error" in answers["t-list"] and "error" in answers["t-revoke"]
            assert app.control.inspect([node], timeout=2).revoked() == {node: []}
    finally:
        app.close()
    text = caplog.text
    assert "arguments are a list" in text  # refused and logged
    assert "revoke refused" in text
    assert "invalid pcre pattern" in text and "destination must be a list" in text
    assert "nested more than 800 levels" in text
    if name == "redis":
        assert "not UTF-8" in text
