"""Units of remote control: the pidbox message codec and destination matching, the revoked
ids' bounds, expiry and state file, and the CLI's argument checks."""

from __future__ import annotations

import base64
import json
import time

import pytest

from celery.exceptions import ContentDisallowed, DecodeError
from celery.messaging import pidbox
from celery.worker.state import RevokedIds


def test_encode_makes_kombus_envelope_and_decode_reads_it_back():
    body = {"method": "ping", "arguments": {}, "destination": None, "pattern": None,
            "matcher": None, "ticket": "t-1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}}
    payload = pidbox.encode(body, "celery.pidbox", "", {"clock": 3, "expires": 0})
    envelope = json.loads(payload)
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["delivery_info"] == {"exchange": "celery.pidbox", "routing_key": ""}
    assert envelope["properties"]["delivery_mode"] == 1
    assert json.loads(base64.b64decode(envelope["body"])) == body
    assert pidbox.decode(payload) == (body, {"clock": 3, "expires": 0})


def test_decode_refuses_what_is_not_a_json_command():
    with pytest.raises(DecodeError):
        pidbox.decode("not json")
    pickled = json.loads(pidbox.encode({}, "celery.pidbox", "", {}))
    pickled["content-type"] = "application/x-python-serialize"
    with pytest.raises(ContentDisallowed):
        pidbox.decode(json.dumps(pickled))
    listed = json.loads(pidbox.encode({}, "celery.pidbox", "", {}))
    listed["body"] = base64.b64encode(b"[1, 2]").decode()
    with pytest.raises(DecodeError, match="not a JSON object"):
        pidbox.decode(json.dumps(listed))


def test_destination_pattern_and_expiry():
    assert pidbox.match_destination({}, "a@h")
    assert pidbox.match_destination({"destination": ["a@h"]}, "a@h")
    assert not pidbox.match_destination({"destination": ["b@h"]}, "a@h")
    assert pidbox.match_destination({"pattern": "a@*", "matcher": "glob"}, "a@h")
    assert not pidbox.match_destination({"pattern": "^b", "matcher": "pcre"}, "a@h")
    assert pidbox.expired({"expires": time.time() - 1})
    assert not pidbox.expired({"expires": 0}) and not pidbox.expired({})


def test_revoked_ids_are_bounded_and_expire():
    revoked = RevokedIds(maxlen=3, expires=0.3)
    revoked.add(["a", "b", "c", "d"])
    assert revoked.ids() == ["b", "c", "d"] and "a" not in revoked and "d" in revoked
    time.sleep(0.4)
    revoked.add(["new"])
    assert "b" not in revoked and revoked.ids() == ["new"] and len(revoked) == 1


def test_state_file_round_trip_and_a_corrupt_file(tmp_path, caplog):
    path = tmp_path / "worker.state"
    RevokedIds(path).add(["x", "y"])
    assert sorted(RevokedIds(path).ids()) == ["x", "y"]
    path.write_text("{broken")
    assert RevokedIds(path).ids() == []
    assert "Cannot read the worker state file" in caplog.text
