"""How the RabbitMQ mailbox reads Celery's control/event queue settings (no server)."""

from __future__ import annotations

import pytest

from celery import Celery
from celery.exceptions import ImproperlyConfigured
from celery.transport.amqp_mailbox import MailboxQueueSettings, exchange_kind


def test_settings_come_from_the_app_with_celerys_defaults():
    app = Celery("mbx", broker="memory://", set_as_current=False)
    assert MailboxQueueSettings.from_conf(app.conf) == MailboxQueueSettings(
        control_queue_ttl=300.0, control_queue_expires=10.0, event_queue_ttl=5.0,
        event_queue_expires=60.0)
    app.conf.update(control_queue_exclusive=True, event_queue_durable=True,
                    event_queue_expires=None)
    settings = MailboxQueueSettings.from_conf(app.conf)
    assert (settings.control_queue_exclusive, settings.event_queue_durable,
            settings.event_queue_expires) == (True, True, None)


@pytest.mark.parametrize("kind", ["control", "event"])
def test_a_queue_cannot_be_durable_and_exclusive(kind):
    with pytest.raises(ImproperlyConfigured, match=f"{kind}_queue_durable and {kind}_queue_exclusive"):
        MailboxQueueSettings(**{f"{kind}_queue_durable": True, f"{kind}_queue_exclusive": True})


def test_exchange_kinds_follow_kombu_and_celery():
    assert exchange_kind("celery.pidbox") == ("fanout", False)
    assert exchange_kind("myapp.pidbox") == ("fanout", False)
    assert exchange_kind("celeryev") == ("topic", True)


def test_float_headers_cross_as_doubles_so_an_expiry_epoch_stays_exact():
    from pamqp import decode, encode

    from celery.messaging import pidbox
    from celery.transport.amqp_envelope import to_amqp

    expires = 1796540000.123456  # an epoch: a 32-bit float would make it ...032.0
    message = to_amqp(pidbox.encode({"method": "ping"}, "celery.pidbox", "",
                                    {"clock": 3, "expires": expires}))
    table = decode.field_table(encode.field_table(message.headers))[1]
    assert table == {"clock": 3, "expires": expires}
