"""The app without a broker: settings, task creation and naming, messages it would send."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import uuid
from decimal import Decimal

import pytest

import celery
from celery import Celery, shared_task, signature
from celery.exceptions import ContentDisallowed, ImproperlyConfigured, NotRegistered
from celery.messaging import serialization
from celery.messaging.protocol import decode_body, uuid4_str


@pytest.fixture
def app():
    app = Celery("proj", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    yield app
    app.close()


def body_of(message):
    return decode_body(message.body, message.content_type, message.content_encoding,
                       serialization.accept_set(["json", "msgpack", "pickle"]))


def test_public_names_are_exported():
    for name in celery.__all__:
        assert hasattr(celery, name), name
    assert not celery.current_task  # no task is running here: the proxy stands for None
    assert celery.current_task._get_current_object() is None
    assert celery.__all__ == sorted(celery.__all__)


def test_defaults_use_celery_names(app):
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_default_queue == "celery" and conf.worker_prefetch_multiplier == 4
    assert conf.result_expires == dt.timedelta(days=1) and conf["result_serializer"] == "json"
    conf.update(task_default_queue="q2")
    assert conf.task_default_queue == "q2"


def test_config_from_object_module_object_and_namespace(app):
    # Without a namespace its upper-case names are Celery 3's (CELERY_RESULT_BACKEND),
    # mixed with new ones: refused with the renames, as Celery 5 does.
    with pytest.raises(ImproperlyConfigured, match="CELERY_RESULT_BACKEND -> result_backend"):
        app.config_from_object("tests.apps.settings_module")
    app.config_from_object({"broker_url": "redis://127.0.0.1:6379/3",
                            "task_default_queue": "from-module", "SECRET_KEY": "not a setting"})
    assert app.conf.broker_url == "redis://127.0.0.1:6379/3"
    assert app.conf.task_default_queue == "from-module"
    assert "SECRET_KEY" not in app.conf and app.conf.result_backend is None

    other = Celery("ns", set_as_current=False)
    other.config_from_object("tests.apps.settings_module", namespace="CELERY")
    assert other.conf.result_backend == "redis://127.0.0.1:6379/4"
    assert other.conf.task_serializer == "msgpack"
    assert other.conf.task_default_queue == "celery"  # lowercase ignored with a namespace

    class Config:
        task_acks_late = True

    other.config_from_object(Config)
    assert other.conf.task_acks_late is True
    with pytest.raises(ImproperlyConfigured, match="no.such.module"):
        other.config_from_object("no.such.module")
    other.config_from_object("no.such.module", silent=True)
    other.close()


def test_env_broker_url_is_read(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "valkey://127.0.0.1:6379/2")
    app = Celery("env", set_as_current=False)
    assert app.broker_url == "valkey://127.0.0.1:6379/2"
    app.close()


def test_env_urls_win_over_the_apps_own_as_in_celery(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "valkey://127.0.0.1:6379/2")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/5")
    app = Celery("env", broker="redis://127.0.0.1:6379/0", backend="file:///tmp/x",
                 set_as_current=False)
    app.conf.broker_url = "memory://later"
    assert app.broker_url == "valkey://127.0.0.1:6379/2"
    assert app.backend.url == "redis://127.0.0.1:6379/5"
    app.close()


def test_old_upper_case_names_map_to_new_ones_with_a_deprecation_warning(caplog):
    from celery.app import config
    from celery.exceptions import CDeprecationWarning

    config._warned_old.discard("CELERYD_PREFETCH_MULTIPLIER")
    config._warned_old.discard("BROKER_URL")

    class Old:
        BROKER_URL = "redis://127.0.0.1:6379/1"
        CELERY_ACKS_LATE = True
        CELERYD_PREFETCH_MULTIPLIER = 1
        CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/4"
        CELERY_TASK_RESULT_EXPIRES = 60
        OTHER_CONSTANT = 5  # not a setting: left alone

    app = Celery("old", set_as_current=False)
    with pytest.warns(CDeprecationWarning) as record:
        app.config_from_object(Old)
    assert ("The 'CELERYD_PREFETCH_MULTIPLIER' setting is deprecated (Celery 6 drops it): use "
            "'worker_prefetch_multiplier' instead") in [str(w.message) for w in record]
    conf = app.conf
    assert conf.broker_url == "redis://127.0.0.1:6379/1" and conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1 and conf.result_expires == 60
    assert conf.result_backend == "redis://127.0.0.1:6379/4" and "OTHER_CONSTANT" not in conf
    assert "'BROKER_URL' setting is deprecated" in caplog.text  # logged too, once
    logged = caplog.text.count("BROKER_URL")
    app.config_from_object(Old)
    assert caplog.text.count("BROKER_URL") == logged
    # As keyword arguments too; an old name beside its own new name: the new one wins.
    other = Celery("old2", set_as_current=False, CELERY_ACKS_LATE=True, task_acks_late=False)
    assert other.conf.task_acks_late is False
    with pytest.raises(ImproperlyConfigured, match="rename: CELERY_ACKS_LATE -> task_acks_late"):
        Celery("mixed", set_as_current=False, CELERY_ACKS_LATE=True, task_track_started=True)
    app.close()
    other.close()


def test_config_from_envvar(monkeypatch):
    app = Celery("envvar", set_as_current=False)
    monkeypatch.delenv("PROJ_CONFIG", raising=False)
    with pytest.raises(ImproperlyConfigured, match="'PROJ_CONFIG' is not set"):
        app.config_from_envvar("PROJ_CONFIG")
    assert app.config_from_envvar("PROJ_CONFIG", silent=True) is False
    monkeypatch.setenv("PROJ_CONFIG", "no.such.module")
    with pytest.raises(ImproperlyConfigured, match="no.such.module"):
        app.config_from_envvar("PROJ_CONFIG")
    monkeypatch.setenv("PROJ_CONFIG", "tests.apps.settings_module")
    app.close()
    app = Celery("envvar2", set_as_current=False, namespace="CELERY")
    assert app.config_from_envvar("PROJ_CONFIG") is True
    assert app.conf.result_backend == "redis://127.0.0.1:6379/4"
    assert app.conf.task_serializer == "msgpack"
    app.close()


def test_unknown_and_unimplemented_settings_are_named_once_at_finalize(caplog):
    app = Celery("typos", set_as_current=False, task_acks_lates=True, task_protocol=2,
                 result_compression="gzip", worker_prefetch_multiplier=2,
                 task_annotations={"tasks.add": {"rate_limit": "10/s"}})
    assert app.conf.problems() == [
        "The setting 'task_annotations' = {'tasks.add': {'rate_limit': '10/s'}} is not "
        "implemented by celery-asyncio (task attributes are set on the task (its decorator "
        "options) instead)",
        "The setting 'result_compression' is not implemented by celery-asyncio: it has no "
        "effect (docs/configuration.md lists what is read)",
        "Unknown setting 'task_acks_lates': neither Celery nor celery-asyncio reads it; "
        "did you mean 'task_acks_late'?",
    ]
    app.finalize()
    app.finalize()
    assert caplog.text.count("result_compression") == 1
    assert caplog.text.count("did you mean 'task_acks_late'") == 1
    app.close()


def test_task_names_options_and_kinds(app):
    @app.task
    def plain(x):
        return x

    @app.task(name="custom.name", bind=True, ignore_result=True, serializer="msgpack", queue="q")
    async def bound(self, x):
        return self.name, x

    assert plain.name == f"{__name__}.plain"
    assert app.tasks[plain.name] is plain and plain(3) == 3
    assert bound.name == "custom.name" and bound.is_async and not plain.is_async
    assert bound.ignore_result is True and bound.queue == "q" and bound.serializer == "msgpack"
    with pytest.raises(NotRegistered):
        app.tasks["nope"]
    with pytest.raises(ImproperlyConfigured, match="Unknown task option"):
        app.task(bogus_option=1)(lambda: None)


def test_main_module_tasks_are_named_after_the_app(app):
    def fun():
        return None

    fun.__module__ = "__main__"
    assert app.task(fun).name == "proj.fun"


def test_shared_task_reaches_every_app():
    @shared_task
    def shared_add(x, y):
        return x + y

    one, two = Celery("one", set_as_current=False), Celery("two", set_as_current=False)
    name = f"{__name__}.shared_add"
    assert one.tasks[name] is not two.tasks[name]
    assert one.tasks[name](1, 2) == 3 and shared_add(2, 2) == 4
    one.close()
    two.close()


def test_autodiscover_tasks_imports_package_tasks_modules(app):
    app.autodiscover_tasks(["tests.apps.discover_pkg", "tests.apps.missing_pkg"])
    assert "tests.apps.discover_pkg.tasks.discovered" in app.tasks


def test_message_for_delay_and_apply_async_options(app):
    @app.task
    def add(x, y):
        return x + y

    msg, task_id = app._prepare(add.name, (2, 3), {}, add, {})
    assert msg.headers["task"] == add.name and msg.headers["id"] == task_id
    assert msg.headers["root_id"] == task_id and msg.headers["parent_id"] is None
    assert msg.routing_key == "celery" and msg.properties["priority"] == 0
    assert body_of(msg).args == [2, 3]
    fixed = str(uuid.uuid4())
    before = dt.datetime.now(dt.UTC)
    msg, task_id = app._prepare(add.name, (1,), {"y": 2}, add, {
        "task_id": fixed, "countdown": 30, "expires": 60, "queue": "other", "priority": 7,
        "serializer": "msgpack", "time_limit": 10, "soft_time_limit": 5})
    h = msg.headers
    assert task_id == fixed and msg.routing_key == "other" and msg.properties["priority"] == 7
    assert msg.content_type == "application/x-msgpack"
    assert h["timelimit"] == [10, 5]
    eta = dt.datetime.fromisoformat(h["eta"])
    assert before + dt.timedelta(seconds=29) < eta < before + dt.timedelta(seconds=32)
    assert dt.datetime.fromisoformat(h["expires"]) > eta
    assert body_of(msg).kwargs == {"y": 2}


def test_routes_choose_queues(app):
    app.conf.task_routes = {"proj.images.*": {"queue": "images"}, "proj.exact": "exactq",
                            re.compile(r"proj\.re\d"): {"queue": "regex"}}
    assert app._prepare("proj.images.resize", (), {}, None, {})[0].routing_key == "images"
    assert app._prepare("proj.exact", (), {}, None, {})[0].routing_key == "exactq"
    assert app._prepare("proj.re5", (), {}, None, {})[0].routing_key == "regex"
    assert app._prepare("proj.other", (), {}, None, {})[0].routing_key == "celery"
    assert app._prepare("proj.exact", (), {}, None, {"queue": "given"})[0].routing_key == "given"


def test_send_options_come_from_options_then_route_then_task_then_settings(app):
    app.conf.task_routes = {"prec.routed": {"queue": "routeq", "priority": 4}}
    app.conf.task_default_queue, app.conf.task_time_limit = "defaultq", 30

    @app.task(name="prec.routed", queue="taskq", priority=2, time_limit=20)
    def routed():
        pass

    @app.task(name="prec.plain", soft_time_limit=7)
    def plain():
        pass

    def sent(task, **options):
        msg = app._prepare(task.name, (), {}, task, options)[0]
        return msg.routing_key, msg.properties["priority"], msg.headers["timelimit"]

    assert sent(routed) == ("routeq", 4, [20, None])  # the route beats the task
    assert sent(routed, queue="optq", priority=9, time_limit=5) == ("optq", 9, [5, None])
    assert sent(plain) == ("defaultq", 0, [30, 7])  # no route: task, then settings
    routed.queue = None  # a task attribute changed after definition is read at send time
    app.conf.task_routes = None
    assert sent(routed) == ("defaultq", 2, [20, None])


def test_uuid4_str_is_a_random_version_4_uuid():
    ids = {uuid4_str() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:100]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_signatures(app):
    @app.task
    def add(x, y):
        return x + y

    sig = add.s(2)
    assert sig.task == add.name and sig.args == (2,)
    assert sig(3) == 5 and sig.clone(args=(4,)).args == (4, 2)
    frozen = add.si(1, 1)
    assert frozen.immutable and frozen.clone(args=(9,)).args == (1, 1)
    as_json = json.loads(json.dumps(sig))
    assert as_json["task"] == add.name and as_json["args"] == [2]
    assert signature(as_json, app=app).task == add.name
    assert app.signature("by.name", args=(1,)).task == "by.name"


def test_bad_urls_fail_clearly(app):
    bad = Celery("bad", broker="nosuch://x", backend="bogus://y", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="Unknown broker URL scheme 'nosuch'"):
        bad.transport  # noqa: B018
    with pytest.raises(ImproperlyConfigured, match="bogus"):
        bad.backend  # noqa: B018
    bad.close()


def test_json_rich_types_round_trip():
    value = [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), dt.date(2024, 1, 2),
             dt.time(1, 2, 3), uuid.UUID(int=5), Decimal("1.50"), b"\x00\xff", b"text", "ünï"]
    payload, ctype, enc = serialization.dumps(value, "json")
    assert payload.isascii()
    assert serialization.loads(payload, ctype, enc, serialization.accept_set(["json"])) == value


def test_refused_and_undecodable_content():
    payload, ctype, enc = serialization.dumps([1], "pickle")
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        serialization.loads(payload, ctype, enc, serialization.accept_set(["json"]))
    with pytest.raises(serialization.DecodeError):
        serialization.loads(b"{not json", "application/json", "utf-8", None)
    with pytest.raises(ImproperlyConfigured, match="Unknown serializer 'yaml2'"):
        serialization.dumps([1], "yaml2")


def test_exceptions_module_keeps_celery_names():
    exc = importlib.import_module("celery.exceptions")
    for name in ("TimeoutError", "NotRegistered", "Retry", "Reject", "Ignore",
                 "SoftTimeLimitExceeded", "TimeLimitExceeded", "MaxRetriesExceededError"):
        assert issubclass(getattr(exc, name), exc.CeleryError)


def test_every_setting_read_is_in_docs_configuration():
    from pathlib import Path

    from celery.app.config import DEFAULTS, UNIMPLEMENTED

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}
    assert set(rows) == set(DEFAULTS)
    assert all("not implemented" in rows[key] for key in UNIMPLEMENTED)


def test_custom_bootsteps_fail_naming_what_to_use_instead(app):
    from celery import bootsteps

    class Probe(bootsteps.StartStopStep):  # defining one works, as modules do at import
        requires = ("celery.worker.components:Pool",)

    with pytest.raises(ImproperlyConfigured, match=r"app.steps\['worker'\].add\(Probe\): "
                       "custom bootsteps are not supported .* worker_init"):
        app.steps["worker"].add(Probe)
    with pytest.raises(ImproperlyConfigured, match="Probe: custom bootsteps"):
        Probe(None)
