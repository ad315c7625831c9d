#!/usr/bin/env python
"""Regenerate the upstream-compat fixtures in tests/compat/data/.

Must run with the *upstream* celery venv (see /work/notes/upstream_venv.md):

    cd tests/compat && ../../.cache/upstream-celery/bin/python gen_fixtures.py \
        [all|messages|results|layout|canvas]

Talks to the real Redis at 127.0.0.1:6379, database 15 ONLY (FLUSHDB'd before
every capture).  Outputs messages.json, results.json, layout.json; ``canvas``
(not part of ``all``, so the older files stay as they are) writes
canvas_messages.json.
"""
import base64
import datetime
import decimal
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE))

import redis
from kombu import Connection  # noqa: E402
from proj import tasks  # noqa: E402
from proj.celery import URL, app  # noqa: E402

from celery import chain, chord, group  # noqa: E402

R = redis.Redis(host="127.0.0.1", port=6379, db=15)
CELERY_BIN = str(Path(sys.executable).parent / "celery")
WORKER_NAME = "compat@gen-host"


# ----------------------------------------------------------------- helpers
def jsonable(v):
    """Make msgpack/pickle-decoded values JSON friendly (bytes -> marker)."""
    if isinstance(v, bytes):
        return {"__py_bytes_b64__": base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return v


def text_or_b64(b):
    try:
        return {"text": b.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode()}


def decode_envelope(raw):
    """Parse the kombu envelope; also decode the base64 body per content-type.

    json bodies are parsed WITHOUT kombu's object_hook so the
    {"__type__", "__value__"} markers stay visible."""
    env = json.loads(raw)
    body = base64.b64decode(env["body"])
    ctype = env.get("content-type")
    if ctype == "application/json":
        env["_body_decoded"] = json.loads(body)
    elif ctype == "application/x-msgpack":
        import msgpack  # only the messages capture needs it (not in every upstream venv)

        env["_body_decoded"] = jsonable(msgpack.unpackb(body, raw=False))
    elif ctype == "application/x-python-serialize":
        env["_body_decoded"] = {"pickle_repr": repr(pickle.loads(body))}
    env["_body_raw_b64"] = env["body"]
    return env


def dump_keys():
    """Snapshot every key in db 15: type, ttl and content."""
    out = {}
    for key in sorted(R.keys("*")):
        t = R.type(key).decode()
        item = {"type": t, "pttl": R.pttl(key)}
        item["value"] = {
            "list": lambda: [text_or_b64(x) for x in R.lrange(key, 0, -1)],
            "set": lambda: sorted(x.decode() for x in R.smembers(key)),
            "hash": lambda: {k.decode(): text_or_b64(v) for k, v in R.hgetall(key).items()},
            "zset": lambda: [[m.decode(), sc] for m, sc in R.zrange(key, 0, -1, withscores=True)],
            "string": lambda: text_or_b64(R.get(key)),
        }[t]()
        out[key.decode("utf-8", "backslashreplace")] = item
    return out


def start_worker(*extra, env=None):
    # C_FORCE_ROOT: sandbox runs as root and the app accepts pickle
    e = dict(os.environ, C_FORCE_ROOT="1", **(env or {}))
    cmd = [CELERY_BIN, "-A", "proj", "worker", "-P", "threads", "-l", "warning",
           "-n", WORKER_NAME, *extra]
    proc = subprocess.Popen(cmd, cwd=HERE, env=e)
    for _ in range(200):  # worker ready == its pidbox binding exists
        if proc.poll() is not None:
            break
        if R.exists("_kombu.binding.celery.pidbox"):
            time.sleep(0.5)
            return proc
        time.sleep(0.1)
    raise RuntimeError("worker did not start")


def stop_worker(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    proc.wait(timeout=60)


def write(name, obj):
    DATA.mkdir(exist_ok=True)
    (DATA / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    print("wrote", DATA / name)


# ---------------------------------------------------------------- messages
AWARE = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
NAIVE = datetime.datetime(2024, 1, 2, 3, 4, 5)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")

MESSAGE_CASES = [
    ("basic", "add.apply_async((2, 2))", lambda: tasks.add.apply_async((2, 2))),
    ("delay_kwargs", "add.delay(x=1, y=2)", lambda: tasks.add.delay(x=1, y=2)),
    ("countdown_expires", "add.apply_async((1, 2), countdown=10, expires=60)",
     lambda: tasks.add.apply_async((1, 2), countdown=10, expires=60)),
    ("json_types",
     "echo.apply_async((aware_dt, naive_dt, date, time, UUID, Decimal('3.14'), "
     "b'hello', b'\\x00\\xffbin', {'nested': [1, {'a': [2.5, None, True]}]}), "
     "kwargs={'when': aware_dt, 'd': date})",
     lambda: tasks.echo.apply_async(
         (AWARE, NAIVE, AWARE.date(), datetime.time(13, 14, 15, 16), UID,
          decimal.Decimal("3.14"), b"hello", b"\x00\xffbin",
          {"nested": [1, {"a": [2.5, None, True]}]}),
         kwargs={"when": AWARE, "d": AWARE.date()})),
    ("msgpack", "echo.apply_async((1, 'x', b'\\x00\\x01bin'), {'k': b'v'}, serializer='msgpack')",
     lambda: tasks.echo.apply_async((1, "x", b"\x00\x01bin"), {"k": b"v"},
                                    serializer="msgpack")),
    ("pickle", "echo.apply_async((1, {2, 3}, UUID), serializer='pickle')",
     lambda: tasks.echo.apply_async((1, {2, 3}, UID), serializer="pickle")),
    ("priority_5", "add.apply_async((1, 1), priority=5)",
     lambda: tasks.add.apply_async((1, 1), priority=5)),
    ("priority_0", "add.apply_async((1, 1), priority=0)",
     lambda: tasks.add.apply_async((1, 1), priority=0)),
    ("priority_9", "add.apply_async((1, 1), priority=9)",
     lambda: tasks.add.apply_async((1, 1), priority=9)),
    ("queue_other", "add.apply_async((1, 1), queue='other')",
     lambda: tasks.add.apply_async((1, 1), queue="other")),
    ("bound_custom_name", "custom_bound.delay(7)  # @app.task(bind=True, name='proj.tasks.custom')",
     lambda: tasks.custom_bound.delay(7)),
    ("send_task", "app.send_task('remote.name', args=[1])",
     lambda: app.send_task("remote.name", args=[1])),
    ("time_limits", "add.apply_async((1, 1), time_limit=30, soft_time_limit=20)",
     lambda: tasks.add.apply_async((1, 1), time_limit=30, soft_time_limit=20)),
    ("chain", "chain(add.s(1, 1), add.s(2), add.s(3)).apply_async()",
     lambda: chain(tasks.add.s(1, 1), tasks.add.s(2), tasks.add.s(3)).apply_async()),
    ("ignore_result", "no_result.delay(1)  # @app.task(ignore_result=True)",
     lambda: tasks.no_result.delay(1)),
    ("ignore_result_option", "add.apply_async((1, 1), ignore_result=True)",
     lambda: tasks.add.apply_async((1, 1), ignore_result=True)),
]


def list_entries(name, call):
    out = []
    for key in sorted(R.keys("*")):
        if R.type(key) != b"list":
            continue
        for raw in R.lrange(key, 0, -1):
            out.append({"name": name, "call": call,
                        "queue": key.decode(),
                        "raw_b64": base64.b64encode(raw).decode(),
                        "decoded": decode_envelope(raw)})
    return out


def capture_messages():
    out, other_keys = [], {}
    for name, call, fn in MESSAGE_CASES:
        R.flushdb()
        fn()
        out.extend(list_entries(name, call))
        other_keys[name] = {k: v for k, v in dump_keys().items()
                            if v["type"] != "list"}
    return out, other_keys


# ----------------------------------------------------------------- results
class Subscriber(threading.Thread):
    """PSUBSCRIBE * on db 15 and record everything published."""

    def __init__(self):
        super().__init__(daemon=True)
        self.ps = redis.Redis(db=15).pubsub()
        self.ps.psubscribe("*")
        self.events, self.stop = [], False

    def run(self):
        t0 = time.time()
        while not self.stop:
            m = self.ps.get_message(timeout=0.2)
            if m and m["type"] == "pmessage":
                self.events.append({"t": round(time.time() - t0, 3),
                                    "channel": m["channel"].decode(),
                                    "data": text_or_b64(m["data"])})


def wait_meta(task_id, until=("SUCCESS", "FAILURE"), timeout=20):
    """Poll the result key; return every distinct value seen."""
    key, seen = f"celery-task-meta-{task_id}", []
    deadline = time.time() + timeout
    while time.time() < deadline:
        raw = R.get(key)
        if raw is not None and (not seen or seen[-1][0] != raw):
            seen.append((raw, R.ttl(key)))
            if json.loads(raw)["status"] in until:
                return key, seen
        time.sleep(0.02)
    return key, seen


RESULT_CASES = [
    ("int", "add.delay(2, 2)", lambda: tasks.add.delay(2, 2)),
    ("dict_datetime", "make_dict.delay()", lambda: tasks.make_dict.delay()),
    ("value_error", "fail.delay()  # raises ValueError('boom')",
     lambda: tasks.fail.delay()),
    ("custom_exception", "fail_custom.delay()  # raises proj.tasks.CustomError('custom', 42)",
     lambda: tasks.fail_custom.delay()),
    ("bound_custom_name", "custom_bound.delay(7)", lambda: tasks.custom_bound.delay(7)),
    ("progress", "progress.delay()  # update_state('PROGRESS', meta={'i': 1}) then returns 'done'",
     lambda: tasks.progress.delay()),
    ("ignore_result", "no_result.delay(1)  # ignore_result=True",
     lambda: tasks.no_result.delay(1)),
]


def run_result_cases(cases, tag):
    out = []
    for name, call, fn in cases:
        res = fn()
        key, seen = wait_meta(res.id, timeout=5 if name == "ignore_result" else 20)
        out.append({"name": name + tag, "call": call, "task_id": res.id, "key": key,
                    "exists": bool(seen),
                    "values": [{"raw_b64": base64.b64encode(raw).decode(),
                                "decoded": json.loads(raw), "ttl": ttl}
                               for raw, ttl in seen]})
    return out


def capture_results():
    R.flushdb()
    sub = Subscriber()
    sub.start()
    worker = start_worker("-c", "2")
    out = run_result_cases(RESULT_CASES, "")
    # chain: the worker publishes the 2nd task (with parent_id/root_id) to a
    # queue nobody consumes, so we can capture the worker-published message.
    res = chain(tasks.add.s(1, 1), tasks.add.s(2).set(queue="hold")).apply_async()
    first_id = res.parent.id
    wait_meta(first_id)
    for _ in range(100):
        if R.llen("hold"):
            break
        time.sleep(0.05)
    chained = list_entries("chain_child_from_worker",
                           "chain(add.s(1, 1), add.s(2).set(queue='hold')).apply_async(); "
                           "2nd message as published by the upstream worker")
    chained = [c for c in chained if c["queue"] == "hold"]
    out.extend(run_result_cases([("chain_parent", "first task of the chain above",
                                  lambda: app.AsyncResult(first_id))], ""))
    stop_worker(worker)
    # second worker run with result_extended=True
    worker = start_worker("-c", "2", env={"COMPAT_RESULT_EXTENDED": "1"})
    out.extend(run_result_cases([
        ("int", "add.delay(2, 2)  # worker has result_extended=True",
         lambda: tasks.add.delay(2, 2)),
        ("value_error", "fail.delay()  # worker has result_extended=True",
         lambda: tasks.fail.delay())], "_result_extended"))
    stop_worker(worker)
    time.sleep(0.5)
    sub.stop = True
    sub.join()
    return out, sub.events, chained


# ------------------------------------------------------------------ layout
def capture_layout():
    """5 sleeping tasks, -c 1, prefetch 4: observe unacked bookkeeping."""
    R.flushdb()
    snaps = {}
    for _ in range(5):
        tasks.sleeper.delay(3)
    snaps["after_publish"] = dump_keys()
    worker = start_worker("-c", "1", env={"COMPAT_PREFETCH": "4"})
    time.sleep(1.0)
    snaps["worker_running_with_prefetch"] = dump_keys()
    stop_worker(worker, signal.SIGTERM)  # warm shutdown
    snaps["after_warm_shutdown"] = dump_keys()

    # crash scenario: SIGKILL leaves unacked entries behind; restore_visible
    # (normally run periodically by a live consumer) pushes them back.
    R.flushdb()
    for i in range(5):
        tasks.sleeper.delay(3 + i / 10)
    worker = start_worker("-c", "1", env={"COMPAT_PREFETCH": "4"})
    time.sleep(1.0)
    stop_worker(worker, signal.SIGKILL)
    snaps["after_sigkill"] = dump_keys()
    time.sleep(1.5)
    with Connection(URL, transport_options={"visibility_timeout": 1}) as conn:
        conn.default_channel.qos.restore_visible()
    snaps["after_restore_visible_vt1"] = dump_keys()
    return snaps


# ------------------------------------------------------------------ canvas
T = tasks
CANVAS_CASES = [
    ("chain", "chain(add.s(1, 1), add.s(2), add.s(3))",
     lambda: chain(T.add.s(1, 1), T.add.s(2), T.add.s(3))),
    ("chain_group_middle", "chain(add.s(1, 1), group(add.s(10), add.s(20)), tsum.s())",
     lambda: chain(T.add.s(1, 1), group(T.add.s(10), T.add.s(20)), T.tsum.s())),
    ("chain_group_last", "chain(add.s(1, 1), group(add.s(10), add.s(20)))",
     lambda: chain(T.add.s(1, 1), group(T.add.s(10), T.add.s(20)))),
    ("group", "group(add.s(1, 1), add.s(2, 2), add.s(3, 3))",
     lambda: group(T.add.s(1, 1), T.add.s(2, 2), T.add.s(3, 3))),
    ("chord", "chord([add.s(1, 1), add.s(2, 2)], tsum.s())",
     lambda: chord([T.add.s(1, 1), T.add.s(2, 2)], T.tsum.s())),
    ("chord_in_chain", "chain(add.s(1, 1), chord([add.s(10), add.s(20)], tsum.s()), add.s(5))",
     lambda: chain(T.add.s(1, 1), chord([T.add.s(10), T.add.s(20)], T.tsum.s()), T.add.s(5))),
    ("chain_led_by_chord", "chain(chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(5))",
     lambda: chain(chord([T.add.s(1, 1), T.add.s(2, 2)], T.tsum.s()), T.add.s(5))),
    ("chord_nested_group", "chord([add.s(1, 1), group(add.s(2, 2), add.s(3, 3))], tsum.s())",
     lambda: chord([T.add.s(1, 1), group(T.add.s(2, 2), T.add.s(3, 3))], T.tsum.s())),
    ("chord_header_chain_to_group",
     "chord([add.s(1, 1), chain(add.s(2, 2), group(add.s(1), add.s(2)))], echo.s())",
     lambda: chord([T.add.s(1, 1), chain(T.add.s(2, 2), group(T.add.s(1), T.add.s(2)))],
                   T.echo.s())),
    ("link", "add.s(1, 1).set(link=add.s(10), link_error=[errback_old.s(), errback_new.s()])",
     lambda: T.add.s(1, 1).set(link=T.add.s(10),
                               link_error=[T.errback_old.s(), T.errback_new.s()])),
    ("link_two_callbacks", "add.s(1, 1) with link=[add.s(10), tsum.s()] (apply_async option)",
     lambda: _Applied(T.add.s(1, 1), link=[T.add.s(10), T.tsum.s()])),
    ("chain_on_error", "chain(add.s(1, 1), add.s(2)).on_error(errback_new.s())",
     lambda: chain(T.add.s(1, 1), T.add.s(2)).on_error(T.errback_new.s())),
    ("link_error_on_failure", "fail.s().set(link_error=[errback_old.s(), errback_new.s()])",
     lambda: T.fail.s().set(link_error=[T.errback_old.s(), T.errback_new.s()])),
    ("chain_failing_step", "chain(fail.s(), add.s(1), add.s(2))",
     lambda: chain(T.fail.s(), T.add.s(1), T.add.s(2))),
    ("chord_failing_member", "chord([add.s(1, 1), fail.s()], tsum.s().on_error(errback_old.s()))",
     lambda: chord([T.add.s(1, 1), T.fail.s()], T.tsum.s().on_error(T.errback_old.s()))),
    ("replace_in_chain", "chain(replace_with_chain.s(1), add.s(100))",
     lambda: chain(T.replace_with_chain.s(1), T.add.s(100))),
    ("replace_in_chord", "chord([replace_with_group.s(1), add.s(2, 2)], echo.s())",
     lambda: chord([T.replace_with_group.s(1), T.add.s(2, 2)], T.echo.s())),
    ("chord_sent_by_task", "spawn_chord.s()  # chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()",
     lambda: T.spawn_chord.s()),
    ("chunks", "add.chunks([(1, 1), (2, 2), (3, 3)], 2)",
     lambda: T.add.chunks([(1, 1), (2, 2), (3, 3)], 2)),
    ("map", "tsum.map([[1, 2], [3, 4]])", lambda: T.tsum.map([[1, 2], [3, 4]])),
    ("starmap", "add.starmap([(1, 2), (3, 4)])", lambda: T.add.starmap([(1, 2), (3, 4)])),
]


class _Applied:
    """A signature and the options its apply_async is called with."""

    def __init__(self, sig, **options):
        self.sig, self.options = sig, options

    def apply_async(self):
        return self.sig.apply_async(**self.options)


def result_tuple(res):
    """A result's as_tuple() (GroupResult or AsyncResult), JSON-ready."""
    return json.loads(json.dumps(res.as_tuple()))


class Monitor(threading.Thread):
    """MONITOR the server: ``[command, first argument]`` of each command on db 15, until
    ``stop()`` (an ECHO this thread waits for)."""

    MARK = "gen-fixtures-monitor-done"

    def __init__(self):
        super().__init__(daemon=True)
        self.commands, self.started = [], threading.Event()

    def run(self):
        with redis.Redis(db=15).monitor() as monitor:
            self.started.set()
            for cmd in monitor.listen():
                if cmd.get("db") != 15:
                    continue
                words = cmd["command"].split(" ", 2)
                if words[0] == "ECHO" and words[1:] == [self.MARK]:
                    return
                if words[0] != "SELECT":
                    self.commands.append(words[:2])

    def stop(self):
        R.echo(self.MARK)
        self.join(10)
        return self.commands


def capture_canvas():
    """What upstream puts in Redis for each canvas: the messages in each queue (LRANGE
    order), every other key (chord sizes, saved groups) and the order of the commands
    that wrote them; plus the signature as a dict and the result's as_tuple()."""
    out = []
    for name, call, make in CANVAS_CASES:
        R.flushdb()
        sig = make()
        as_dict = json.loads(json.dumps(sig.sig if isinstance(sig, _Applied) else sig))
        monitor = Monitor()
        monitor.start()
        monitor.started.wait(5)
        time.sleep(0.2)
        res = sig.apply_async()
        commands = monitor.stop()
        out.append({"name": name, "call": call, "signature": as_dict,
                    "result": result_tuple(res),
                    "messages": list_entries(name, call),
                    "keys": {k: v for k, v in dump_keys().items() if v["type"] != "list"},
                    "commands": commands})
    return out


HOLD = "hold"
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Cases whose messages a worker runs in capture_worker_canvas (the others publish nothing).
WORKER_CASES = ["chain", "chain_group_middle", "chain_group_last", "chord", "chord_in_chain",
                "chain_led_by_chord", "chord_nested_group", "chord_header_chain_to_group",
                "link", "link_two_callbacks", "chain_on_error", "link_error_on_failure",
                "chain_failing_step", "chord_failing_member", "replace_in_chain",
                "replace_in_chord", "chord_sent_by_task"]


def restore_client_capture(case):
    """Put a client capture back in Redis: its keys (chord sizes, saved groups), then its
    messages, so that the queue reads as it did (LRANGE order)."""
    for key, item in case["keys"].items():
        if item["type"] == "string":
            R.set(key, item["value"]["text"], px=item["pttl"] if item["pttl"] > 0 else None)
    for entry in reversed(case["messages"]):
        R.lpush(entry["queue"], base64.b64decode(entry["raw_b64"]))


def worker_snapshot(ids):
    """What the worker left: the messages it published (all routed to HOLD), and the result
    and group keys of ``ids`` and of the ids in those messages."""
    published = R.lrange(HOLD, 0, -1)
    ids = set(ids) | {m.decode() for raw in published for m in UUID_RE.findall(raw)}
    keys = {k: v for k, v in dump_keys().items()
            if any(i in k for i in ids) and not k.startswith("_kombu")}
    return {"published": [{"raw_b64": base64.b64encode(raw).decode(),
                           "decoded": decode_envelope(raw)} for raw in published],
            "keys": keys}


def capture_worker_canvas(client_cases):
    """What an upstream worker does with each client capture: its ``celery`` messages are
    replayed to a worker that routes whatever it sends to HOLD (so the canvas stops one
    step later); the snapshot is taken once nothing has changed for a second."""
    R.flushdb()
    worker = start_worker("-c", "2", env={"COMPAT_ROUTE_ALL_TO": HOLD})
    out = []
    try:
        for name in WORKER_CASES:
            case = client_cases[name]
            # (not from "commands": MONITOR also saw the previous case's unsubscriptions)
            own = [case["result"], case["messages"], case["keys"]]
            ids = sorted({m.decode() for m in UUID_RE.findall(json.dumps(own).encode())})
            R.delete(HOLD)
            restore_client_capture(case)
            last, still_since, deadline = None, time.time(), time.time() + 20
            while time.time() < deadline and time.time() - still_since < 1.0:
                time.sleep(0.1)
                now = worker_snapshot(ids)
                for item in now["keys"].values():
                    item["pttl"] = item["pttl"] > 0 or item["pttl"]  # it counts down
                if now != last:
                    last, still_since = now, time.time()
            snapshot = worker_snapshot(ids)
            assert {k: v["value"] for k, v in snapshot["keys"].items()} == \
                {k: v["value"] for k, v in last["keys"].items()}
            out.append({"name": name, "call": case["call"], **snapshot})
    finally:
        stop_worker(worker)
    return out


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "messages"):
        msgs, other = capture_messages()
        write("messages.json", msgs)
        write("producer_nonlist_keys.json", other)
    if what in ("all", "results"):
        results, published, chained = capture_results()
        write("results.json", {"results": results, "published": published,
                               "worker_published_messages": chained})
    if what in ("all", "layout"):
        write("layout.json", capture_layout())
    if what == "canvas":
        client = capture_canvas()
        write("canvas_messages.json", client)
        write("canvas_worker.json",
              capture_worker_canvas({case["name"]: case for case in client}))
    R.flushdb()


if __name__ == "__main__":
    main()
