"""Topology.from_conf reads task_queues/task_routes/task_default_* as upstream Celery does."""

from __future__ import annotations

import logging

import kombu
import kombu.common
import pytest

from celery.app.config import Settings
from celery.exceptions import ImproperlyConfigured
from celery.kombu_compat import Exchange, Queue, binding
from celery.transport.amqp_topology import ExchangeDecl, Topology


def conf(**settings):
    s = Settings()
    for key, value in settings.items():
        s[key] = value
    return s


def test_default_topology_is_the_celery_direct_exchange_and_queue():
    topology = Topology.default()
    celery = topology.queue("celery")
    assert (celery.durable, celery.auto_delete, celery.exclusive) == (True, False, False)
    assert dict(celery.arguments) == {}
    assert celery.bindings == ((ExchangeDecl("celery", "direct"), "celery", {}),)
    assert [e.name for e in celery.exchanges] == ["celery"]
    assert topology.target("", "celery") == ("", "celery")
    assert not topology.quorum


@pytest.mark.parametrize("Q,X", [(kombu.Queue, kombu.Exchange), (Queue, Exchange)],
                         ids=["kombu", "kombu_compat"])
def test_queue_objects_of_real_kombu_and_ours_read_alike(Q, X):
    media = X("media", type="topic", durable=False)
    topology = Topology.from_conf(conf(task_queues=[
        Q("video", media, routing_key="media.video", message_ttl=1.5, max_length=10,
          queue_arguments={"x-dead-letter-exchange": "dlx"}),
        Q("bcast", X("bc", type="fanout"), exclusive=True),
        Q("plain"),
        Q("multi", [binding(media, "a.#"), binding(X("other", "direct"), "b")]),
    ], task_queue_max_priority=10))
    video = topology.queue("video")
    assert dict(video.arguments) == {"x-dead-letter-exchange": "dlx", "x-message-ttl": 1500,
                                     "x-max-length": 10, "x-max-priority": 10}
    assert video.bindings == ((ExchangeDecl("media", "topic", durable=False), "media.video", {}),)
    assert video.max_priority == 10
    bcast = topology.queue("bcast")
    assert (bcast.exclusive, bcast.auto_delete) == (True, True)
    # a queue with no exchange gets the default exchange and routing key (Queues._add)
    assert topology.queue("plain").bindings == ((ExchangeDecl("celery"), "celery", {}),)
    multi = topology.queue("multi")
    # routed by the default exchange, declared with its bindings only (as kombu does)
    assert multi.exchange == ExchangeDecl("celery")
    assert [(e.name, key) for e, key, _ in multi.bindings] == [("media", "a.#"), ("other", "b")]
    assert [e.name for e in multi.exchanges] == ["media", "other"]
    assert topology.target("", "multi") == ("", "multi")
    # publishing: direct queues through the default exchange, others to their exchange
    assert topology.target("", "plain") == ("", "plain")
    assert topology.target("", "video") == ("media", "media.video")
    # exchange named, no key: a direct queue is still sent to straight (upstream's rule)
    assert topology.target("media", "plain") == ("", "plain")
    assert topology.target("", "media.cats", queue="video") == ("media", "media.cats")
    assert topology.target("", "bcast") == ("bc", "celery")
    assert topology.target("media", "x.y") == ("media", "x.y")


def test_dict_form_of_task_queues():
    topology = Topology.from_conf(conf(task_queues={
        "feeds": {"exchange": "feeds", "exchange_type": "topic", "binding_key": "feed.#"},
        "images": {"exchange": "media", "routing_key": "image", "queue_durable": False,
                   "exchange_durable": False},
        "bare": {},
    }))
    feeds = topology.queue("feeds")
    assert feeds.bindings == ((ExchangeDecl("feeds", "topic"), "feed.#", {}),)
    images = topology.queue("images")
    assert not images.durable
    assert images.bindings == ((ExchangeDecl("media", durable=False), "image", {}),)
    # Celery's dict form: a queue with no key is bound with its own name
    assert topology.queue("bare").bindings == ((ExchangeDecl("celery"), "bare", {}),)


def test_missing_queues_are_made_as_celery_makes_them_or_refused():
    topology = Topology.from_conf(conf(task_queues=[Queue("a")], task_queue_max_priority=5,
                                       task_create_missing_queue_exchange_type="topic"))
    missing = topology.queue("nope")
    assert missing.bindings == ((ExchangeDecl("nope", "topic"), "nope", {}),)
    assert missing.max_priority == 5
    strict = Topology.from_conf(conf(task_queues=[Queue("a")], task_create_missing_queues=False))
    with pytest.raises(ImproperlyConfigured, match="'nope' missing from task_queues"):
        strict.queue("nope")
    # the default queue, when task_queues does not list it, is a missing queue too
    assert strict.queue("a").name == "a"


def test_quorum_rules(caplog):
    topology = Topology.from_conf(conf(task_default_queue_type="quorum", task_queue_max_priority=3))
    with caplog.at_level(logging.WARNING):
        celery = topology.queue("celery")
    assert celery.quorum and celery.max_priority is None
    assert topology.quorum
    classic = Topology.from_conf(conf(task_create_missing_queue_type="quorum"))
    assert not classic.quorum
    assert classic.uses_quorum(["other"]) and classic.queue("other").quorum
    with pytest.raises(ImproperlyConfigured, match="quorum queue and cannot have a max priority"):
        Topology.from_conf(conf(task_queues=[
            Queue("q", queue_arguments={"x-queue-type": "quorum"}, max_priority=4)]))
    with pytest.raises(ImproperlyConfigured, match="must be durable"):
        Topology.from_conf(conf(task_queues=[
            Queue("q", durable=False, queue_arguments={"x-queue-type": "quorum"})]))
    with pytest.raises(ImproperlyConfigured, match="task_default_queue_type must be"):
        Topology.from_conf(conf(task_default_queue_type="stream"))


@pytest.mark.parametrize("settings,message", [
    ({"task_queues": [Queue("q", Exchange("x", type="bogus"))]}, "unknown exchange type 'bogus'"),
    ({"task_default_exchange_type": "nope"}, "unknown exchange type 'nope'"),
    ({"task_queues": ["celery"]}, "is not a Queue"),
    ({"task_queues": {"q": 3}}, "must be a Queue or a mapping"),
    ({"task_queues": "celery"}, "task_queues must be a list"),
    ({"task_queue_max_priority": "high"}, "task_queue_max_priority must be an integer"),
])
def test_bad_configuration_is_one_clear_line(settings, message):
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        Topology.from_conf(conf(**settings))
    assert "\n" not in str(info.value)


def test_a_queue_object_named_by_a_route_is_declared():
    q = kombu.Queue("routed", kombu.Exchange("rx", type="topic"), routing_key="r.#")
    topology = Topology.from_conf(conf(task_routes={"proj.*": {"queue": q}}))
    assert topology.queue("routed").bindings[0][0] == ExchangeDecl("rx", "topic")
    assert topology.target("", "r.1", queue="routed") == ("rx", "r.1")


def test_delivery_mode_comes_from_the_queue_exchange_or_the_setting():
    topology = Topology.from_conf(conf(task_queues=[
        Queue("t", Exchange("t", delivery_mode="transient")), Queue("p")]))
    assert topology.delivery_mode("", "t") == 1
    assert topology.delivery_mode("", "p") == 2
    assert Topology.from_conf(conf(task_default_delivery_mode="transient")).delivery_mode(
        "", "celery") == 1


def test_kombu_compat_matches_kombu_attributes():
    ours = Queue("q", Exchange("x", "topic"), "k", exclusive=True, expires=2)
    theirs = kombu.Queue("q", kombu.Exchange("x", "topic"), "k", exclusive=True, expires=2)
    for attr in ("name", "routing_key", "durable", "exclusive", "auto_delete", "expires",
                 "queue_arguments", "binding_arguments", "max_priority"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert (ours.exchange.name, ours.exchange.type, ours.exchange.durable) == (
        theirs.exchange.name, theirs.exchange.type, theirs.exchange.durable)
    with pytest.raises(TypeError, match="settings only"):
        Queue("q", channel=object())


@pytest.mark.parametrize("Broadcast", [kombu.common.Broadcast, __import__("celery.kombu_compat").kombu_compat.Broadcast],
                         ids=["kombu", "kombu_compat"])
def test_broadcast_queues_are_per_process_and_found_by_their_alias(Broadcast):
    declared = Broadcast("everyone")
    topology = Topology.from_conf(conf(task_queues=[declared]))
    decl = topology.queue("everyone")
    assert decl.name == declared.name and decl.name.startswith("bcast.")
    assert decl.broadcast and decl.auto_delete
    assert decl.bindings == ((ExchangeDecl("everyone", "fanout"), "celery", {}),)
    assert topology.target("", "everyone") == ("everyone", "celery")
    assert not topology.queue("celery").broadcast


def test_a_passive_exchange_is_checked_not_declared():
    topology = Topology.from_conf(conf(task_queues=[Queue("q", Exchange("x", passive=True))]))
    assert topology.queue("q").bindings[0][0].passive
