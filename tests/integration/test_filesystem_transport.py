"""FilesystemTransport on a real folder: kombu's file format, priorities, acks, races, crashes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from celery.exceptions import ConnectionLost, ImproperlyConfigured
from celery.messaging.protocol import Message, build_task_message
from celery.transport import base, filesystem
from celery.transport.filesystem import (
    DEAD_LETTER_DIR,
    RESERVED_DIR,
    FilesystemTransport,
    write_atomic,
)
from celery.transport.registry import transport_for_url

ROOT = Path(__file__).resolve().parents[2]
OUR_NAME = re.compile(r"[0-9]_[0-9]{19}_[0-9a-f]{32}\.celery\.msg\Z")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "q"


@pytest.fixture
async def transport(folder: Path):
    t = FilesystemTransport(f"filesystem://{folder}")
    yield t
    await t.aclose()
    t.close()


def task(arg: object = None, **options) -> Message:
    return build_task_message("proj.tasks.echo", (arg,), **options)


def arg_of(delivery: base.Delivery) -> object:
    return json.loads(delivery.message.body)[0][0]


def messages(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


async def drain(t: FilesystemTransport, queues=("celery",), ack: bool = True) -> list:
    got = []
    while batch := await t.fetch(list(queues), 100, 0):
        got += batch
        if ack:
            await t.ack(batch)
    return got


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, **kwargs)


# -- basics ----------------------------------------------------------------------------------


async def test_round_trip_through_the_registry(folder):
    t = transport_for_url(f"filesystem://{folder}")
    try:
        assert isinstance(t, FilesystemTransport) and isinstance(t, base.Transport)
        assert {base.CAP_PRIORITY, base.CAP_VISIBILITY_TIMEOUT} <= t.capabilities
        sent = task("hello", reply_to="reply-here")
        t.publish(sent)
        await t.apublish(task("second"))
        await t.apublish_many([task("third"), task("fourth")])
        assert await t.queue_length("celery") == 4
        first, *rest = await t.fetch(["celery"], 10, 1)
        assert first.message.body == sent.body and first.message.headers == sent.headers
        assert first.message.properties["reply_to"] == "reply-here"
        assert first.queue == "celery" and first.redelivered is False
        assert first.delivery_info == {
            "exchange": "",
            "routing_key": "celery",
            "priority": 0,
            "redelivered": False,
        }
        assert [arg_of(d) for d in rest] == ["second", "third", "fourth"]
        assert await t.queue_length("celery") == 0
        assert len(messages(folder / RESERVED_DIR)) == 4
        await t.ack([first, *rest])
        await t.ack([first])  # a second ack of the same delivery is harmless
        assert messages(folder / RESERVED_DIR) == [] and messages(folder) == []
        assert await t.fetch(["celery"], 10, 0) == []
    finally:
        t.close()


async def test_files_are_kombu_envelopes_named_for_kombus_reader(transport, folder):
    transport.publish(task("x", priority=3))
    [name] = messages(folder)
    assert OUR_NAME.match(name) and name.startswith("3_")
    assert name.partition(".")[2] == "celery.msg"  # what kombu's reader matches on
    env = json.loads((folder / name).read_text())
    assert list(env) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert env["properties"]["priority"] == 3 and env["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(env["body"]))[0] == ["x"]


def test_folders_come_from_the_url_or_kombus_options(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="data_folder_in and data_folder_out"):
        FilesystemTransport("filesystem://")
    with pytest.raises(ImproperlyConfigured, match="data_folder_in and data_folder_out"):
        FilesystemTransport("filesystem://", transport_options={"data_folder_in": str(tmp_path)})
    t = FilesystemTransport(
        "filesystem://",
        transport_options={
            "data_folder_in": str(tmp_path / "in"),
            "data_folder_out": str(tmp_path / "out"),
        },
    )
    assert (tmp_path / "in" / RESERVED_DIR).is_dir() and (tmp_path / "out").is_dir()
    t.publish(task())
    assert len(messages(tmp_path / "out")) == 1 and messages(tmp_path / "in") == []
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        FilesystemTransport(
            f"filesystem://{tmp_path}", transport_options={"visibility_timeout": "x"}
        )


async def test_producer_and_consumer_with_kombus_in_and_out_folders(tmp_path):
    producer = FilesystemTransport(
        "filesystem://",
        transport_options={
            "data_folder_in": str(tmp_path / "replies"),
            "data_folder_out": str(tmp_path / "work"),
        },
    )
    consumer = FilesystemTransport(
        "filesystem://",
        transport_options={
            "data_folder_in": str(tmp_path / "work"),
            "data_folder_out": str(tmp_path / "replies"),
        },
    )
    producer.publish(task(1))
    [got] = await consumer.fetch(["celery"], 5, 1)
    assert arg_of(got) == 1
    await consumer.ack([got])


# -- ordering --------------------------------------------------------------------------------


async def test_lower_priority_number_first_then_fifo(transport, folder):
    sent = [(5, "a"), (0, "b"), (9, "c"), (0, "d"), (5, "e"), (3, "f"), (None, "g"), (42, "h")]
    for priority, arg in sent:
        transport.publish(task(arg, priority=priority))
    expected = ["b", "d", "g", "f", "a", "e", "c", "h"]
    # kombu's reader takes sorted(listdir()): it sees the same order.
    in_kombu_order = [
        json.loads(base64.b64decode(json.loads((folder / n).read_text())["body"]))[0][0]
        for n in messages(folder)
    ]
    assert in_kombu_order == expected
    got = []
    while batch := await transport.fetch(["celery"], 3, 0):
        got += batch
    assert [arg_of(d) for d in got] == expected


async def test_priority_first_then_the_queue_order_given(transport):
    transport.publish(task("b-low", queue="b", priority=5))
    transport.publish(task("a-low", queue="a", priority=5))
    transport.publish(task("b-high", queue="b", priority=0))
    transport.publish(task("c", queue="c"))
    got = await drain(transport, ["a", "b"])
    assert [arg_of(d) for d in got] == ["b-high", "a-low", "b-low"]
    assert [d.queue for d in got] == ["b", "a", "b"]
    assert await transport.queue_length("c") == 1


async def test_requeue_keeps_its_place_and_reject_requeue_goes_to_the_back(transport):
    for arg in "abc":
        transport.publish(task(arg))
    [a] = await transport.fetch(["celery"], 1, 0)
    await transport.requeue([a])
    [first] = await transport.fetch(["celery"], 1, 0)
    assert arg_of(first) == "a"
    assert first.redelivered and first.delivery_info["redelivered"]
    assert first.message.headers["redelivered"] is True
    await transport.reject([first], requeue=True)
    got = await drain(transport)
    assert [arg_of(d) for d in got] == ["b", "c", "a"]
    assert [d.redelivered for d in got] == [False, False, True]


async def test_reject_without_requeue_moves_the_file_to_the_dead_letter_folder(transport, folder):
    transport.publish(task("doomed"))
    [d] = await transport.fetch(["celery"], 1, 0)
    await transport.reject([d], requeue=False)
    [dead] = messages(folder / DEAD_LETTER_DIR)
    assert dead == d.delivery_tag and dead.partition("-")[2].endswith(".celery.msg")
    assert json.loads((folder / DEAD_LETTER_DIR / dead).read_bytes()) == json.loads(d.raw)
    assert messages(folder) == [] and messages(folder / RESERVED_DIR) == []
    assert await transport.fetch(["celery"], 1, 0) == []


async def test_store_processed_keeps_acked_messages_in_processed_folder(tmp_path):
    t = FilesystemTransport(
        f"filesystem://{tmp_path / 'q'}",
        transport_options={"store_processed": True, "processed_folder": str(tmp_path / "done")},
    )
    t.publish(task("keep me"))
    [d] = await t.fetch(["celery"], 1, 0)
    original = d.delivery_tag.partition("-")[2]
    await t.ack([d])
    assert messages(tmp_path / "done") == [original]
    assert (tmp_path / "done" / original).read_bytes() == d.raw
    assert messages(tmp_path / "q" / RESERVED_DIR) == []
    t.close()


async def test_purge_and_queue_length_count_waiting_messages_only(transport):
    for i in range(5):
        transport.publish(task(i))
    transport.publish(task("other", queue="other"))
    [held] = await transport.fetch(["celery"], 1, 0)
    assert await transport.queue_length("celery") == 4
    assert await transport.purge("celery") == 4
    assert await transport.queue_length("celery") == 0
    assert await transport.queue_length("other") == 1
    await transport.requeue([held])  # a reservation survives a purge
    assert await transport.queue_length("celery") == 1


# -- recovery and bad input ------------------------------------------------------------------


async def test_reservations_return_after_the_visibility_timeout(folder):
    t = FilesystemTransport(f"filesystem://{folder}", transport_options={"visibility_timeout": 0.3})
    for arg in "ab":
        t.publish(task(arg))
    held = await t.fetch(["celery"], 2, 0)
    assert await t.restore_visible() == 0
    assert await t.fetch(["celery"], 2, 0) == []
    await asyncio.sleep(0.35)
    assert await t.restore_visible() == 2
    again = await t.fetch(["celery"], 2, 0)
    assert [arg_of(d) for d in again] == ["a", "b"] and all(d.redelivered for d in again)
    await t.ack(held)  # the late ack of the old delivery must not touch the new one
    assert len(messages(folder / RESERVED_DIR)) == 2
    await t.ack(again)
    assert messages(folder / RESERVED_DIR) == []
    t.close()


async def test_malformed_files_are_dead_lettered_and_good_ones_delivered(transport, folder, caplog):
    transport.publish(task("good-1"))
    (folder / "0_0000000000000000001_bad.celery.msg").write_bytes(b"this is not json")
    (folder / "0_0000000000000000002_list.celery.msg").write_text("[1, 2, 3]")
    bad_b64 = {"body": "***", "properties": {"body_encoding": "base64"}}
    (folder / "0_0000000000000000003_b64.celery.msg").write_text(json.dumps(bad_b64))
    transport.publish(task("good-2"))
    got = await drain(transport)
    assert [arg_of(d) for d in got] == ["good-1", "good-2"]
    dead = messages(folder / DEAD_LETTER_DIR)
    assert [name.partition("-")[2] for name in dead] == [
        "0_0000000000000000001_bad.celery.msg",
        "0_0000000000000000002_list.celery.msg",
        "0_0000000000000000003_b64.celery.msg",
    ]
    assert (folder / DEAD_LETTER_DIR / dead[0]).read_bytes() == b"this is not json"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "0_0000000000000000001_bad.celery.msg" in w and "this is not json" in w for w in warnings
    )
    assert messages(folder) == [] and messages(folder / RESERVED_DIR) == []


async def test_half_written_temporary_files_are_never_read(transport, folder):
    partial = b'{"body": "eyJ'
    (folder / ".celery-tmp-0123456789abcdef.tmp").write_bytes(partial)
    assert await transport.fetch(["celery"], 10, 0) == []
    assert await transport.queue_length("celery") == 0
    # A writer thread racing a consumer: the consumer only ever sees whole files.
    big = "x" * 300_000
    count = 60

    def produce():
        for i in range(count):
            transport.publish(task([i, big]))

    writer = threading.Thread(target=produce)
    writer.start()
    got = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        batch = await transport.fetch(["celery"], 10, 0.5)
        got += batch
        await transport.ack(batch)
    writer.join()
    assert sorted(arg_of(d)[0] for d in got) == list(range(count))
    assert all(arg_of(d)[1] == big for d in got)
    assert messages(folder / DEAD_LETTER_DIR) == []
    assert messages(folder) == [".celery-tmp-0123456789abcdef.tmp"]


async def test_stale_temporary_files_are_swept_by_restore_visible(transport, folder):
    old, new = folder / ".celery-tmp-old.tmp", folder / ".celery-tmp-new.tmp"
    old.write_bytes(b"{")
    new.write_bytes(b"{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    await transport.restore_visible()
    assert not old.exists() and new.exists()


async def test_a_message_kombu_wrote_is_consumed(transport, folder):
    """A file as kombu's filesystem transport writes it: ``<monotonic ms>_<uuid4>.<queue>.msg``,
    its JSON envelope written in place (not renamed)."""
    body = json.dumps(
        [[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    ).encode()
    task_id = str(uuid.uuid4())
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "proj.tasks.add",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "r",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.celery.msg"
    with open(folder / name, "wb", buffering=0) as f:
        f.write(json.dumps(envelope).encode())
    # kombu creates the file before it writes it: a fresh empty file is not read yet.
    (folder / f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.celery.msg").touch()
    [got] = await transport.fetch(["celery"], 10, 0)
    assert got.message.headers["task"] == "proj.tasks.add" and got.message.headers["id"] == task_id
    assert got.message.body == body and got.delivery_tag.endswith(name)
    await transport.requeue([got])
    assert name in messages(folder)  # back under kombu's own name
    [again] = await transport.fetch(["celery"], 10, 0)
    assert again.redelivered
    await transport.ack([again])
    assert messages(folder / DEAD_LETTER_DIR) == []


def test_a_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ImproperlyConfigured, match=re.escape(str(blocker))) as info:
        FilesystemTransport(f"filesystem://{blocker}")
    assert "not a writable directory" in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="sub"):
        FilesystemTransport(f"filesystem://{blocker}/sub")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_folder_is_one_clear_error():
    # Root writes anywhere, so the check runs as an unprivileged user when we are root.
    base = tempfile.mkdtemp(prefix="celery-ro-")
    try:
        os.chmod(base, 0o755)
        locked = os.path.join(base, "locked")
        os.mkdir(locked, 0o555)
        code = ("from celery.transport.filesystem import FilesystemTransport\n"
                f"FilesystemTransport('filesystem://{locked}')")
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        out = subprocess.run([*(drop if os.geteuid() == 0 else []), sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("celery.exceptions.ImproperlyConfigured:"), out.stderr
        assert locked in last and "not a writable directory" in last
    finally:
        shutil.rmtree(base)


async def test_a_folder_gone_at_runtime_is_connection_lost_naming_it(tmp_path):
    folder = tmp_path / "q"
    t = FilesystemTransport(f"filesystem://{folder}")
    await t.ping()
    shutil.rmtree(folder)
    for call in (t.ping(), t.fetch(["celery"], 1, 0), t.apublish(task())):
        with pytest.raises(ConnectionLost, match=re.escape(str(folder))):
            await call
    t.close()


# -- waiting ---------------------------------------------------------------------------------


async def test_a_waiting_fetch_is_woken_by_a_publish_in_this_process(folder, monkeypatch):
    monkeypatch.setattr(filesystem, "FIRST_POLL", 30.0)  # no poll can find it: only a wake-up
    consumer = FilesystemTransport(
        f"filesystem://{folder}", transport_options={"polling_interval": 30}
    )
    producer = FilesystemTransport(f"filesystem://{folder}")
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, lambda: threading.Thread(target=producer.publish, args=(task(1),)).start())
    started = time.monotonic()
    [got] = await consumer.fetch(["celery"], 1, 20)
    assert time.monotonic() - started < 10  # woken, not polled (the first poll is at 30 s)
    assert arg_of(got) == 1
    monkeypatch.setattr(filesystem, "FIRST_POLL", 0.005)
    assert await consumer.fetch(["celery"], 1, 0.05) == []  # an empty wait times out
    consumer.close()
    producer.close()


async def test_a_cancelled_fetch_gives_its_claims_back(transport):
    transport.publish(task("claimed"))
    real_claim = transport._claim

    def slow_claim(*args):
        claimed = real_claim(*args)
        time.sleep(0.3)  # the caller is cancelled while the claim is still running
        return claimed

    transport._claim = slow_claim  # type: ignore[method-assign]
    fetching = asyncio.ensure_future(transport.fetch(["celery"], 1, 1))
    await asyncio.sleep(0.1)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    transport._claim = real_claim  # type: ignore[method-assign]
    [got] = await transport.fetch(["celery"], 1, 2)
    assert arg_of(got) == "claimed" and not got.redelivered


# -- several processes -----------------------------------------------------------------------

PUBLISHER = """
import sys
from celery.messaging.protocol import build_task_message
from celery.transport.registry import transport_for_url
t = transport_for_url(sys.argv[1])
for i in range(int(sys.argv[3])):
    t.publish(build_task_message("proj.tasks.echo", (f"{sys.argv[2]}-{i}",)))
"""

CONSUMER = """
import asyncio, json, sys
from celery.transport.registry import transport_for_url

async def main():
    t = transport_for_url(sys.argv[1], transport_options={"polling_interval": 0.02})
    seen, idle = [], -20
    print("READY", flush=True)
    while idle < 5:
        batch = await t.fetch(["celery"], int(sys.argv[2]), 0.2)
        idle = 0 if batch else idle + 1
        seen += [json.loads(d.message.body)[0][0] for d in batch]
        await t.ack(batch)
    print(json.dumps(seen))

asyncio.run(main())
"""

HOLDER = """
import asyncio, sys
from celery.transport.registry import transport_for_url

async def main():
    t = transport_for_url(sys.argv[1])
    got = await t.fetch(["celery"], int(sys.argv[2]), 5)
    print("READY", len(got), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_two_processes_publishing_at_once_each_message_consumed_once(transport, folder):
    url = f"filesystem://{folder}"
    procs = [run_python(PUBLISHER, url, prefix, "150") for prefix in ("p1", "p2")]
    got: list = []
    deadline = time.monotonic() + 20
    while len(got) < 300 and time.monotonic() < deadline:
        batch = await transport.fetch(["celery"], 50, 0.5)
        got += batch
        await transport.ack(batch)
    assert [p.wait(10) for p in procs] == [0, 0]
    got += await drain(transport)
    args = [arg_of(d) for d in got]
    assert sorted(args) == sorted(f"{p}-{i}" for p in ("p1", "p2") for i in range(150))
    for prefix in ("p1", "p2"):  # each producer's messages arrive in the order it sent them
        mine = [int(a.split("-")[1]) for a in args if a.startswith(prefix)]
        assert mine == sorted(mine)


async def test_two_consumer_processes_racing_never_share_a_message(transport, folder):
    url = f"filesystem://{folder}"
    procs = [run_python(CONSUMER, url, n, stdout=subprocess.PIPE, text=True) for n in ("7", "13")]
    for proc in procs:  # both are polling before the first message is there
        assert proc.stdout is not None and proc.stdout.readline() == "READY\n"
    for i in range(400):
        transport.publish(task(i))
    outputs = [p.communicate(timeout=20)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    seen = [json.loads(out) for out in outputs]
    assert sorted(seen[0] + seen[1]) == list(range(400))  # all consumed, none twice
    assert seen[0] and seen[1]  # there really was a race
    assert messages(folder) == [] and messages(folder / RESERVED_DIR) == []


async def test_two_consumers_in_threads_racing_never_share_a_message(folder):
    producer = FilesystemTransport(f"filesystem://{folder}")
    for i in range(600):
        producer.publish(task(i))
    start = threading.Barrier(2)
    seen: list[list] = [[], []]

    def consume(n: int) -> None:
        async def main() -> None:
            t = FilesystemTransport(f"filesystem://{folder}")
            start.wait()
            while batch := await t.fetch(["celery"], 5, 0):
                seen[n] += [arg_of(d) for d in batch]
                await t.ack(batch)
            t.close()

        asyncio.run(main())

    threads = [threading.Thread(target=consume, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(seen[0] + seen[1]) == list(range(600))
    assert seen[0] and seen[1]
    producer.close()


async def test_messages_of_a_killed_consumer_return_after_the_visibility_timeout(folder):
    t = FilesystemTransport(f"filesystem://{folder}", transport_options={"visibility_timeout": 1})
    for i in range(5):
        t.publish(task(i))
    proc = run_python(HOLDER, f"filesystem://{folder}", "5", stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["READY", "5"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert await t.fetch(["celery"], 10, 0) == []
    assert len(messages(folder / RESERVED_DIR)) == 5
    await asyncio.sleep(1.1)
    assert await t.restore_visible() == 5
    got = await drain(t)
    assert sorted(arg_of(d) for d in got) == list(range(5)) and all(d.redelivered for d in got)
    assert messages(folder / RESERVED_DIR) == []
    t.close()


def test_shared_atomic_write_replaces_whole_files(tmp_path):
    write_atomic(str(tmp_path), "f", b"one")
    write_atomic(str(tmp_path), "f", b"two", fsync=True)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == b"two"


# -- upstream kombu ----------------------------------------------------------------------------

KOMBU_READER = """
import json, sys, kombu
opts = {"data_folder_in": sys.argv[1], "data_folder_out": sys.argv[1],
        "control_folder": sys.argv[2], "processed_folder": sys.argv[2]}
with kombu.Connection("filesystem://", transport_options=opts) as conn:
    queue = conn.SimpleQueue("celery")
    out = []
    for _ in range(int(sys.argv[3])):
        message = queue.get(timeout=5)
        out.append([message.headers.get("task"), message.payload[0], message.properties.get("priority")])
        message.ack()
    print(json.dumps(out))
"""

UPSTREAM_SENDER = """
import sys
from celery import Celery
app = Celery("up", broker="filesystem://", broker_transport_options={
    "data_folder_in": sys.argv[1], "data_folder_out": sys.argv[1], "control_folder": sys.argv[2]})
print(app.send_task("proj.tasks.add", (2, 3)).id)
"""


@pytest.fixture
def upstream_python() -> Path:
    from tests.compat.test_upstream_interop import _upstream_python

    return _upstream_python()  # made here if tests/compat has not made it yet


@pytest.mark.upstream
async def test_upstream_kombu_reads_our_files_in_priority_order(
    transport, folder, tmp_path, upstream_python
):
    for arg, priority in (("late", 6), ("first", 0), ("second", 0)):
        transport.publish(task(arg, priority=priority))
    out = subprocess.run(
        [str(upstream_python), "-c", KOMBU_READER, str(folder), str(tmp_path / "control"), "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        ["proj.tasks.echo", ["first"], 0],
        ["proj.tasks.echo", ["second"], 0],
        ["proj.tasks.echo", ["late"], 6],
    ]
    assert messages(folder) == []


@pytest.mark.upstream
async def test_we_consume_what_upstream_celery_sends_over_kombus_filesystem(
    transport, folder, tmp_path, upstream_python
):
    out = subprocess.run(
        [str(upstream_python), "-c", UPSTREAM_SENDER, str(folder), str(tmp_path / "control")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [got] = await transport.fetch(["celery"], 10, 1)
    assert got.message.headers["task"] == "proj.tasks.add"
    assert got.message.headers["id"] == out.stdout.strip()
    assert json.loads(got.message.body)[:2] == [[2, 3], {}]
    await transport.ack([got])
