"""RedisBackend against a real Redis: upstream's layout, exceptions, and the pub/sub waiter."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import threading
import time
import types
import uuid

import pytest
import valkey

from celery import states
from celery.app.config import Settings
from celery.backends.base import backend_for_url
from celery.backends.redis import RedisBackend, safe_url
from celery.exceptions import ConnectionLost, ImproperlyConfigured, TimeoutError

REDIS_DB = 3

RESULTS_JSON = pathlib.Path(__file__).parents[1] / "compat" / "data" / "results.json"


class CustomError(Exception):
    """Defined here so the round trip finds it by module and name."""


def Conf(**conf) -> Settings:  # noqa: N802 - stands for the settings class
    """Settings with these values (a backend gets an app's ``conf``)."""
    settings = Settings()
    for key, value in conf.items():
        settings[key] = value
    return settings


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def raw(redis_url):
    client = valkey.Valkey.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_backend(redis_url):
    made = []

    def make(**conf):
        backend = RedisBackend(Conf(**conf), redis_url)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()  # also stops the portal it started for sync calls


@pytest.fixture
async def backend(make_backend):
    backend = make_backend()
    yield backend
    await backend.aclose()


def store_from_thread(backend, task_id, result, state=states.SUCCESS, delay=0.1):
    """Store through the portal (another thread and loop) after ``delay`` seconds."""

    def run():
        time.sleep(delay)
        backend.store_result(task_id, result, state)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def numsub(raw, backend, task_id) -> int:
    return raw.pubsub_numsub(backend.get_key_for_task(task_id))[0][1]


async def wait_numsub(raw, backend, task_id, want, timeout=2.0) -> int:
    deadline = time.monotonic() + timeout
    while (got := numsub(raw, backend, task_id)) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return got


# -- configuration ------------------------------------------------------------------------


def test_registered_for_every_redis_scheme(redis_url):
    for scheme in ("redis", "rediss", "valkey", "valkeys"):
        url = redis_url.replace("redis", scheme, 1)
        assert isinstance(backend_for_url(url, Conf()), RedisBackend)


def test_bad_url_is_improperly_configured():
    with pytest.raises(ImproperlyConfigured):
        RedisBackend(Conf(), "redis://localhost:notaport/0")
    with pytest.raises(ImproperlyConfigured) as info:
        RedisBackend(Conf(), "redis://:s3cret@localhost:notaport/0")
    assert "s3cret" not in str(info.value)


def test_safe_url_hides_password():
    assert safe_url("redis://user:s3cret@host:6379/1") == "redis://user:**@host:6379/1"
    assert safe_url("redis://host/1") == "redis://host/1"


async def test_unreachable_server_raises_connection_lost_without_password():
    backend = RedisBackend(Conf(), "redis://:s3cret@127.0.0.1:1/0")
    with pytest.raises(ConnectionLost) as info:
        await backend.aget_task_meta("x")
    assert "s3cret" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    with pytest.raises(ConnectionLost):
        await backend.ping()
    await backend.aclose()


# -- storing and reading ------------------------------------------------------------------


@pytest.mark.parametrize("value", [42, {"a": [1, "b", None], "n": 1.5}])
async def test_store_and_get_round_trip(backend, value):
    task_id = new_id()
    await backend.astore_result(task_id, value, states.SUCCESS)
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == value
    assert meta["task_id"] == task_id


async def test_stored_bytes_are_upstream_json_with_ttl(backend, raw):
    task_id = new_id()
    await backend.astore_result(task_id, 4, states.SUCCESS)
    key = f"celery-task-meta-{task_id}"
    stored = raw.get(key)
    meta = json.loads(stored)
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert stored.startswith(b'{"status": "SUCCESS", "result": 4, "traceback": null, ')
    assert meta["date_done"].endswith("+00:00")
    assert 86390 <= raw.ttl(key) <= 86400


async def test_same_key_order_as_upstream_captures(make_backend, raw):
    if not RESULTS_JSON.exists():
        pytest.skip("no upstream captures")
    captured = {r["name"]: r for r in json.loads(RESULTS_JSON.read_text())["results"]}
    if "int_result_extended" not in captured:
        pytest.skip("no result_extended capture")
    upstream = base64.b64decode(captured["int_result_extended"]["values"][0]["raw_b64"])
    backend = make_backend(result_extended=True)
    task_id = json.loads(upstream)["task_id"]
    request = types.SimpleNamespace(
        task="proj.tasks.add", args=[2, 2], kwargs={}, hostname="compat@gen-host", retries=0,
        delivery_info={"routing_key": "celery"}, children=[],
    )
    await backend.astore_result(task_id, 4, states.SUCCESS, request=request)
    ours = raw.get(backend.get_key_for_task(task_id))
    date = json.loads(upstream)["date_done"]
    assert json.dumps(json.loads(ours) | {"date_done": date}).encode() == upstream


async def test_children_like_upstream(backend, raw):
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)  # no request: null
    assert json.loads(raw.get(backend.get_key_for_task(task_id)))["children"] is None
    child = types.SimpleNamespace(as_tuple=lambda: (("child-id", None), None))
    request = types.SimpleNamespace(children=[child])
    await backend.astore_result(task_id := new_id(), 1, states.SUCCESS, request=request)
    stored = json.loads(raw.get(backend.get_key_for_task(task_id)))
    assert stored["children"] == [[["child-id", None], None]]


async def test_no_expiry_when_result_expires_is_none(make_backend, raw):
    backend = make_backend(result_expires=None)
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)
    assert raw.ttl(backend.get_key_for_task(task_id)) == -1


async def test_global_keyprefix_applies_to_key_and_channel(make_backend, raw):
    backend = make_backend(result_backend_transport_options={"global_keyprefix": "tenant"})
    task_id = new_id()
    store_from_thread(backend, task_id, 7)
    meta = await backend.await_ready(task_id, timeout=5)
    assert meta["result"] == 7
    assert raw.exists(f"tenant_celery-task-meta-{task_id}")


async def test_result_extended_adds_request_fields(make_backend, raw):
    backend = make_backend(result_extended=True)
    task_id = new_id()
    request = types.SimpleNamespace(
        task="proj.add", args=[1, 2], kwargs={"k": 3}, hostname="w1@host", retries=2,
        delivery_info={"routing_key": "q1"}, children=[],
    )
    await backend.astore_result(task_id, 3, states.SUCCESS, request=request)
    meta = await backend.aget_task_meta(task_id)
    assert {k: meta[k] for k in ("name", "args", "kwargs", "worker", "retries", "queue")} == {
        "name": "proj.add", "args": [1, 2], "kwargs": {"k": 3}, "worker": "w1@host",
        "retries": 2, "queue": "q1",
    }
    assert list(json.loads(raw.get(backend.get_key_for_task(task_id))))[-1] == "task_id"


async def test_stored_success_is_never_overwritten(backend):
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)
    await backend.astore_result(task_id, None, states.STARTED)
    await backend.astore_result(task_id, ValueError("late"), states.FAILURE)
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == 1


async def test_failure_can_be_replaced_by_a_later_success(backend):
    task_id = new_id()
    await backend.astore_result(task_id, ValueError("lost"), states.FAILURE)
    await backend.astore_result(task_id, 5, states.SUCCESS)
    assert (await backend.aget_task_meta(task_id))["result"] == 5


async def test_store_many_runs_one_script_per_batch(backend, raw):
    ids = [new_id() for _ in range(600)]  # three script calls of at most 256
    await backend.astore_result(ids[7], "kept", states.SUCCESS)  # guarded inside a batch
    raw.script_flush()  # the script is not cached: loaded again by EVAL
    pubsub = raw.pubsub()
    pubsub.subscribe(backend.get_key_for_task(ids[-1]))
    await backend.astore_many([(tid, backend.prepare_meta(tid, states.SUCCESS, i))
                               for i, tid in enumerate(ids)])
    metas = [await backend.aget_task_meta(tid) for tid in ids]
    assert [m["result"] for m in metas] == [*range(7), "kept", *range(8, 600)]
    published = [pubsub.get_message(timeout=2) for _ in range(2)]  # confirmation, message
    assert json.loads(published[1]["data"])["result"] == 599
    pubsub.close()


async def test_pickle_serializer_keeps_the_success_guard(make_backend):
    backend = make_backend(result_serializer="pickle", result_accept_content=["pickle"])
    task_id = new_id()
    await backend.astore_result(task_id, {1, 2}, states.SUCCESS)
    await backend.astore_result(task_id, None, states.STARTED)
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == {1, 2}


async def test_unknown_task_is_pending(backend):
    meta = await backend.aget_task_meta(new_id())
    assert meta["status"] == states.PENDING and meta["result"] is None


async def test_forget_deletes(backend, raw):
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)
    await backend.aforget(task_id)
    assert not raw.exists(backend.get_key_for_task(task_id))
    assert (await backend.aget_task_meta(task_id))["status"] == states.PENDING


# -- exceptions ---------------------------------------------------------------------------


async def test_value_error_round_trips(backend, raw):
    task_id = new_id()
    await backend.astore_result(task_id, ValueError("boom", 2), states.FAILURE, traceback="tb")
    stored = json.loads(raw.get(backend.get_key_for_task(task_id)))
    assert stored["result"] == {"exc_type": "ValueError", "exc_message": ["boom", 2],
                                "exc_module": "builtins"}
    meta = await backend.aget_task_meta(task_id)
    assert type(meta["result"]) is ValueError and meta["result"].args == ("boom", 2)
    assert meta["traceback"] == "tb"


async def test_custom_exception_round_trips(backend):
    task_id = new_id()
    await backend.astore_result(task_id, CustomError("custom", 42), states.FAILURE)
    meta = await backend.aget_task_meta(task_id)
    assert type(meta["result"]) is CustomError and meta["result"].args == ("custom", 42)


async def test_unknown_exception_module_gives_a_stand_in(backend, raw):
    task_id = new_id()
    payload = {"status": "FAILURE", "traceback": None, "children": [], "date_done": None,
               "task_id": task_id, "result": {"exc_type": "Weird", "exc_message": ["x"],
                                              "exc_module": "no.such.module"}}
    raw.set(backend.get_key_for_task(task_id), json.dumps(payload))
    exc = (await backend.aget_task_meta(task_id))["result"]
    assert isinstance(exc, Exception) and type(exc).__name__ == "Weird" and exc.args == ("x",)


# -- waiting ------------------------------------------------------------------------------


async def test_await_ready_wakes_when_stored_from_another_thread(backend):
    task_id = new_id()
    thread = store_from_thread(backend, task_id, {"ok": True})
    meta = await backend.await_ready(task_id, timeout=5)
    thread.join()
    assert meta["status"] == states.SUCCESS and meta["result"] == {"ok": True}


async def test_await_ready_returns_at_once_when_already_stored(backend):
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)
    # Nothing is published after the subscription: only the read of the stored value can
    # answer (a waiter that missed it would time out), so no clock is needed here.
    assert (await backend.await_ready(task_id, timeout=30))["result"] == 1


async def test_await_ready_raises_timeout(backend, raw):
    task_id = new_id()
    with pytest.raises(TimeoutError, match="The operation timed out."):
        await backend.await_ready(task_id, timeout=0.2)
    with pytest.raises(TimeoutError):
        await backend.await_ready(task_id, timeout=0)
    assert await wait_numsub(raw, backend, task_id, 0) == 0


async def test_failure_wakes_the_waiter_with_the_exception(backend):
    task_id = new_id()
    store_from_thread(backend, task_id, KeyError("k"), states.FAILURE)
    meta = await backend.await_ready(task_id, timeout=5)
    assert type(meta["result"]) is KeyError


async def test_many_concurrent_waiters_on_distinct_ids(backend, raw):
    ids = [new_id() for _ in range(200)]
    waiters = [asyncio.create_task(backend.await_ready(tid, timeout=30)) for tid in ids]
    keys = [backend.get_key_for_task(tid) for tid in ids]
    deadline = time.monotonic() + 30
    while any(n != 1 for _, n in raw.pubsub_numsub(*keys)):  # every waiter subscribed
        assert time.monotonic() < deadline, "the waiters did not subscribe within 30 s"
        await asyncio.sleep(0.01)
    other = RedisBackend(Conf(), backend.url)
    await other.astore_many([(tid, other.prepare_meta(tid, states.SUCCESS, i))
                             for i, tid in enumerate(ids)])
    metas = await asyncio.gather(*waiters)
    assert [m["result"] for m in metas] == list(range(200))
    await other.aclose()


async def test_many_waiters_on_the_same_id(backend, raw):
    task_id = new_id()
    waiters = [asyncio.create_task(backend.await_ready(task_id, timeout=5)) for _ in range(20)]
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    store_from_thread(backend, task_id, "x", delay=0)
    assert [m["result"] for m in await asyncio.gather(*waiters)] == ["x"] * 20
    assert await wait_numsub(raw, backend, task_id, 0) == 0


async def test_intermediate_states_do_not_wake_the_waiter(backend, raw):
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    for state, result in ((states.STARTED, None), ("PROGRESS", {"i": 1}),
                          (states.RETRY, ValueError("again"))):
        await backend.astore_result(task_id, result, state)
        await asyncio.sleep(0.05)
        assert not waiter.done(), state
    await backend.astore_result(task_id, "done", states.SUCCESS)
    assert (await waiter)["result"] == "done"


async def test_cancelled_waiter_unsubscribes_and_reraises(backend, raw):
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=None))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await wait_numsub(raw, backend, task_id, 0) == 0
    consumer = backend._clients().consumer
    assert not consumer._channels


async def test_new_waiter_right_after_a_cancelled_one_still_wakes(backend, raw):
    task_id = new_id()
    for _ in range(3):  # cancel before and after the subscription is confirmed
        first = asyncio.create_task(backend.await_ready(task_id, timeout=5))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    first = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    first.cancel()
    second = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    await asyncio.sleep(0.05)  # room for the first one's unsubscribe to land
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    await backend.astore_result(task_id, "again", states.SUCCESS)
    assert (await second)["result"] == "again"


async def test_cancelling_one_of_two_waiters_keeps_the_other(backend, raw):
    task_id = new_id()
    first = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    second = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    first.cancel()
    await asyncio.sleep(0.05)  # room for a wrong unsubscribe to land
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    await backend.astore_result(task_id, 9, states.SUCCESS)
    assert (await second)["result"] == 9


def pubsub_ids(raw, name: str) -> list[int]:
    return [int(c["id"]) for c in raw.client_list(_type="pubsub") if c["name"] == name]


async def test_resubscribes_and_rereads_after_pubsub_connection_is_killed(make_backend, raw):
    name = f"test-{uuid.uuid4().hex[:8]}"  # kill only our consumer, not parallel tests'
    backend = make_backend(result_backend_transport_options={"client_name": name})
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=10))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    (old_id,) = pubsub_ids(raw, name)
    # No await between the kill and the store: our reader cannot have reconnected, so
    # the PUBLISH reaches nobody and only the re-read after resubscribing can find it.
    assert raw.client_kill_filter(_type="pubsub", _id=old_id) == 1
    key = backend.get_key_for_task(task_id)
    payload = backend.encode(backend.prepare_meta(task_id, states.SUCCESS, "late"))
    assert raw.publish(key, payload) == 0
    raw.set(key, payload)
    assert (await waiter)["result"] == "late"
    # and the new connection keeps delivering
    other = new_id()
    second = asyncio.create_task(backend.await_ready(other, timeout=10))
    assert await wait_numsub(raw, backend, other, 1) == 1
    assert pubsub_ids(raw, name) not in ([], [old_id])
    store_from_thread(backend, other, "next")
    assert (await second)["result"] == "next"
    await backend.aclose()


async def test_idle_pubsub_connection_is_pinged_not_dropped(make_backend, raw):
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(
        result_backend_transport_options={"client_name": name, "health_check_interval": 0.1}
    )
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=5))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    before = pubsub_ids(raw, name)
    await asyncio.sleep(0.5)  # several intervals: each silence is answered by a PING
    assert pubsub_ids(raw, name) == before
    await backend.astore_result(task_id, "idle", states.SUCCESS)
    assert (await waiter)["result"] == "idle"
    await backend.aclose()


async def test_waiter_wakes_on_a_store_by_another_client(backend, raw):
    """Woken by the PUBLISH (how fast is bench/'s question, not a test's)."""
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=30))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    other = RedisBackend(Conf(), backend.url)
    await other.astore_result(task_id, 1, states.SUCCESS)
    assert (await waiter)["result"] == 1
    await other.aclose()


async def test_closed_backend_fails_waiters(make_backend, raw):
    backend = make_backend()
    task_id = new_id()
    waiter = asyncio.create_task(backend.await_ready(task_id, timeout=30))
    assert await wait_numsub(raw, backend, task_id, 1) == 1
    await backend.aclose()
    with pytest.raises(ConnectionLost):
        await waiter


# -- sync front (portal) ------------------------------------------------------------------


def test_sync_front_from_plain_thread(make_backend):
    backend = make_backend()
    task_id = new_id()
    store_from_thread(backend, task_id, 11)
    assert backend.wait_for(task_id, timeout=5)["result"] == 11
    backend.store_result(task_id, 12, states.SUCCESS)  # SUCCESS is kept
    assert backend.get_task_meta(task_id)["result"] == 11
    backend.forget(task_id)
    assert backend.get_task_meta(task_id)["status"] == states.PENDING
    with pytest.raises(TimeoutError):
        backend.wait_for(new_id(), timeout=0.1)


async def test_sync_front_from_inside_a_running_loop(backend):
    task_id = new_id()
    backend.store_result(task_id, [1, 2], states.SUCCESS)
    assert backend.get_task_meta(task_id)["result"] == [1, 2]
    other = new_id()
    store_from_thread(backend, other, "sync")
    assert backend.wait_for(other, timeout=5)["result"] == "sync"


def test_close_is_idempotent_and_reaches_other_loops(make_backend, raw):
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(result_backend_transport_options={"client_name": name})
    task_id = new_id()
    backend.store_result(task_id, 1, states.SUCCESS)  # portal-loop clients...
    backend.wait_for(task_id, timeout=5)  # ...and its result consumer
    assert [c for c in raw.client_list() if c["name"] == name]
    backend.close()
    backend.close()
    # the server drops a closed client from CLIENT LIST once it has read the close
    deadline = time.monotonic() + 3
    while [c for c in raw.client_list() if c["name"] == name] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [c for c in raw.client_list() if c["name"] == name]
    assert backend.get_task_meta(new_id())["status"] == states.PENDING  # usable again


async def test_commands_survive_their_pooled_connection_being_killed(make_backend, raw):
    name = f"test-{uuid.uuid4().hex[:8]}"  # kill only this backend's connections
    backend = make_backend(result_backend_transport_options={"client_name": name})
    task_id = new_id()
    await backend.astore_result(task_id, 1, states.SUCCESS)
    assert (await backend.aget_task_meta(task_id))["result"] == 1  # the pool has a connection
    killed = [int(c["id"]) for c in raw.client_list(_type="normal") if c["name"] == name]
    assert killed and all(raw.client_kill_filter(_id=i) == 1 for i in killed)
    # The next commands meet the dead connection, and go through on a new one.
    assert (await backend.aget_task_meta(task_id))["result"] == 1
    other = new_id()
    await backend.astore_result(other, 2, states.SUCCESS)
    assert (await backend.await_ready(other, timeout=5))["result"] == 2
    await backend.aclose()


def script_connections(raw, name: str) -> list[int]:
    return [int(c["id"]) for c in raw.client_list(_type="normal")
            if c["name"] == name and c["cmd"] in ("evalsha", "eval")]


def test_results_stored_now_share_one_kept_connection(make_backend, raw):
    """``store_now`` (a worker thread writing its task's result itself) runs its script on
    one connection kept between writes, not on a pooled one."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(result_backend_transport_options={"client_name": name})
    ids = [new_id() for _ in range(3)]
    for n, task_id in enumerate(ids):
        assert backend.store_now(task_id, backend.encode(
            backend.prepare_meta(task_id, states.SUCCESS, n, None, None)), states.SUCCESS)
    kept = script_connections(raw, name)
    assert len(kept) == 1
    assert backend.get_task_meta(ids[0])["result"] == 0  # a read, on a pooled connection
    assert script_connections(raw, name) == kept  # its last command is still the script
    assert [backend.get_task_meta(t)["result"] for t in ids] == [0, 1, 2]


def test_store_now_reconnects_once_when_its_idle_connection_was_closed(make_backend, raw):
    """A kept connection the server closed meanwhile is replaced, and the write goes
    through: the caller sees no failure (which would pause direct writes for 5 s)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = make_backend(result_backend_transport_options={"client_name": name})

    def store(task_id, value):
        meta = backend.prepare_meta(task_id, states.SUCCESS, value, None, None)
        return backend.store_now(task_id, backend.encode(meta), states.SUCCESS)

    first, second = new_id(), new_id()
    assert store(first, 1)
    killed = script_connections(raw, name)
    assert len(killed) == 1 and raw.client_kill_filter(_id=killed[0]) == 1
    assert store(second, 2)
    assert backend.get_task_meta(second)["result"] == 2
    assert script_connections(raw, name) not in ([], killed)


def test_store_now_on_an_unreachable_server_fails_without_retrying(redis_url, monkeypatch):
    """A connection that never worked is not retried: the caller falls back at once. The
    connection attempts are counted (the client's default policy would make 3), not timed."""
    import valkey.connection

    attempts: list[int] = []
    real = valkey.connection.Connection._connect

    def counted(self):
        attempts.append(1)
        return real(self)

    monkeypatch.setattr(valkey.connection.Connection, "_connect", counted)
    backend = RedisBackend(Conf(), "redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionLost):
        backend.store_now(new_id(), b'{"status": "SUCCESS"}', states.SUCCESS)
    assert len(attempts) == 1
    backend.close()


async def test_chord_reports_made_together_on_a_loop_claim_once_with_every_part(backend, raw):
    """Members reporting in the same loop turn (sent as one pipeline) are each counted
    once, a redelivered one too, and exactly one claims the chord with all parts in order."""
    group_id, size = new_id(), 40
    await backend.aprepare_chords([(group_id, size)], [])
    ids = [new_id() for _ in range(size)]

    def report(i):
        part = backend.encode_chord_part(ids[i], states.SUCCESS, i)
        return backend.achord_part(group_id, ids[i], i, part)

    first = await asyncio.gather(*(report(i) for i in range(size - 1)), report(0))
    assert not any(p.claimed or p.late for p in first)
    last = await asyncio.gather(report(size - 1), report(size - 2))
    claimed = [p for p in last if p.claimed]
    assert len(claimed) == 1 and claimed[0].token
    values = [backend.decode_chord_part(raw_part)[2] for raw_part in claimed[0].parts]
    assert values == list(range(size))
    await backend.achord_done(group_id, claimed[0].token)
    late = await report(3)
    assert late.late and not late.claimed


async def test_chord_reports_from_sync_threads_claim_once(backend):
    """The blocking chord report of sync worker threads: one member claims, with every part."""
    group_id, size = new_id(), 24
    await backend.aprepare_chords([(group_id, size)], [])

    def report(i):
        task_id = f"{group_id}-{i}"
        return backend.chord_part(group_id, task_id, i,
                                  backend.encode_chord_part(task_id, states.SUCCESS, i))

    parts = await asyncio.gather(*(asyncio.to_thread(report, i) for i in range(size)))
    claimed = [p for p in parts if p.claimed]
    assert len(claimed) == 1
    assert [backend.decode_chord_part(p)[2] for p in claimed[0].parts] == list(range(size))


async def test_chord_reports_fall_back_to_eval_when_redis_lacks_the_scripts(backend, monkeypatch):
    """A server that has not loaded the report script (restarted, flushed) gets it sent
    whole: a batch of one chord and a lone report of another both go through."""
    from celery.backends import redis_chords

    monkeypatch.setattr(redis_chords, "_PART_SHA", "0" * 40)
    batch, lone = new_id(), new_id()
    await backend.aprepare_chords([(batch, 3), (lone, 1)], [])

    def report(group_id, i):
        task_id = f"{group_id}-{i}"
        return backend.achord_part(group_id, task_id, i,
                                   backend.encode_chord_part(task_id, states.SUCCESS, i))

    parts = await asyncio.gather(*(report(batch, i) for i in range(3)), report(lone, 0))
    assert [p.claimed for p in parts] == [False, False, True, True]
    assert [backend.decode_chord_part(p)[2] for p in parts[2].parts] == [0, 1, 2]


async def test_a_chord_report_retried_after_it_claimed_still_gets_the_claim(backend, raw):
    """The client retries a script whose reply it lost (a broken connection): the member
    that claimed the chord the first time is told so again, or no one would send the body."""
    from celery.backends import redis_chords

    group_id = new_id()
    await backend.aprepare_chords([(group_id, 1)], [])
    keys, args, token = backend._part_call(
        group_id, "t1", 0, backend.encode_chord_part("t1", states.SUCCESS, 1))
    for _ in range(2):  # the call, then its retry with the same arguments
        reply = raw.eval(redis_chords._PART_SCRIPT, len(keys), *keys, *args)
        assert backend._part_reply(reply, token).claimed
    other = backend._part_call(group_id, "t2", 0,
                               backend.encode_chord_part("t2", states.SUCCESS, 1))[1]
    assert raw.eval(redis_chords._PART_SCRIPT, len(keys), *keys, *other) == [0]
