"""RabbitMQ connections: broker URLs read as kombu reads them, one aio-pika connection per loop.

URLs (kombu's py-amqp forms): ``amqp://user:password@host:port/vhost``, ``amqps://...`` (TLS,
default port 5671) and ``pyamqp://...`` (the same as ``amqp://``). The path is the virtual
host, percent-decoded; an empty path means ``/`` (``amqp://host//`` and ``amqp://host/%2F``
say it explicitly). Missing parts default as kombu's: ``guest``/``guest`` on
``localhost:5672``. Query options: ``heartbeat`` (seconds; the ``broker_heartbeat`` setting
otherwise), ``connect_timeout`` (the ``broker_connection_timeout`` setting otherwise) and
``ssl`` (``ssl=1`` turns TLS on for an ``amqp://`` URL, as kombu's ``Connection(ssl=True)``).
Any other query option is refused: a setting we accepted but did not apply would be a lie.

TLS options (``broker_use_ssl``, py-amqp's keys): ``ca_certs``, ``certfile``, ``keyfile``,
``cert_reqs`` (``ssl.CERT_*`` or its name), ``server_hostname``, ``check_hostname``;
``True`` means the default context (verify the server against the system CAs).

Connections: ``Connections`` keeps one aio-pika *robust* connection per event loop (asyncio
clients are bound to their loop), made on first use. A robust connection reconnects by
itself after a broker restart, every ``reconnect_interval`` seconds (transport option,
default 1.0), and re-opens its channels, re-declares the queues and exchanges declared
through them and restarts their consumers. Until it is back, operations on it raise
``ConnectionLost``; code above the transport never sees an aio-pika exception.

Thread-safety: the per-loop table is guarded by ``_lock`` (a ``threading.Lock``); each
loop's entry is only used from its own loop, and ``close()`` from another thread reaches a
loop's connection through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import ConnectionLost, ImproperlyConfigured
from ..utils.loops import LoopShutdown
from ..utils.text import mask_url

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

__all__ = ["AMQP_SCHEMES", "AMQPParams", "Connections", "driver_errors", "parse_amqp_url"]

logger = logging.getLogger(__name__)

#: scheme -> (TLS, default port)
AMQP_SCHEMES: dict[str, tuple[bool, int]] = {
    "amqp": (False, 5672), "pyamqp": (False, 5672), "amqps": (True, 5671),
}
_QUERY_OPTIONS = ("heartbeat", "connect_timeout", "ssl")
_SSL_KEYS = frozenset({"ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname",
                       "check_hostname"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class AMQPParams:
    """What a broker URL and the settings say about reaching RabbitMQ."""

    #: The URL as given (password kept; log ``safe_url``).
    url: str
    host: str
    port: int
    login: str
    password: str
    #: ``/`` when the URL names none; percent-decoded.
    virtualhost: str
    #: amqps://, ``?ssl=1`` or ``broker_use_ssl``.
    ssl: bool
    ssl_options: dict[str, Any] = field(default_factory=dict)
    #: Seconds; ``None``: the server's proposal; 0: no heartbeats.
    heartbeat: float | None = None
    connect_timeout: float | None = None
    #: Wait for the broker's ack of every publish (kombu's ``confirm_publish``).
    confirm_publish: bool = True
    #: Seconds between reconnection attempts of a robust connection.
    reconnect_interval: float = 1.0

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs and errors."""
        return mask_url(self.url)

    def ssl_context(self) -> ssl_module.SSLContext | None:
        """An SSLContext built from ``ssl_options`` (py-amqp's keys), or None without TLS."""
        if not self.ssl:
            return None
        opts = self.ssl_options
        context = ssl_module.create_default_context(cafile=opts.get("ca_certs"))
        if opts.get("certfile"):
            context.load_cert_chain(opts["certfile"], opts.get("keyfile"))
        if "check_hostname" in opts:
            context.check_hostname = bool(opts["check_hostname"])
        if "cert_reqs" in opts:
            reqs = _cert_reqs(opts["cert_reqs"])
            if reqs == ssl_module.CERT_NONE:
                context.check_hostname = False
            context.verify_mode = reqs
        return context


def _cert_reqs(value: Any) -> ssl_module.VerifyMode:
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("CERT_") else f"CERT_{name}"
        if name not in ("CERT_NONE", "CERT_OPTIONAL", "CERT_REQUIRED"):
            raise ImproperlyConfigured(f"broker_use_ssl: unknown cert_reqs {value!r}")
        return ssl_module.VerifyMode[name]
    return ssl_module.VerifyMode(value)


def _number(name: str, value: Any, url: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"Invalid {name}={value!r} in broker URL {mask_url(url)}: expected a number") from None
    if number < 0:
        raise ImproperlyConfigured(f"Invalid {name}={value!r} in broker URL {mask_url(url)}: negative")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ImproperlyConfigured(f"Invalid {name}={value!r}: expected true or false")


def _ssl_options(use_ssl: Any) -> dict[str, Any]:
    if use_ssl is None or use_ssl is False or use_ssl is True:
        return {}
    if not isinstance(use_ssl, Mapping):
        raise ImproperlyConfigured(
            f"broker_use_ssl must be True or a dict of TLS options, got {type(use_ssl).__name__}")
    unknown = set(use_ssl) - _SSL_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"broker_use_ssl: unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_SSL_KEYS))}")
    return dict(use_ssl)


def parse_amqp_url(url: str, *, transport_options: Mapping[str, Any] | None = None,
                   connection_timeout: float | None = None, heartbeat: float | None = None,
                   use_ssl: Any = None) -> AMQPParams:
    """Read an ``amqp://``, ``amqps://`` or ``pyamqp://`` URL as kombu reads it.

    ``use_ssl`` is the ``broker_use_ssl`` setting (True or a dict of TLS options).
    Raises ImproperlyConfigured with a one-line message on a bad URL.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ImproperlyConfigured(f"Invalid AMQP broker URL {url!r}: expected amqp://host/vhost")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"Invalid AMQP broker URL {mask_url(url)}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in AMQP_SCHEMES:
        raise ImproperlyConfigured(
            f"Not an AMQP URL {mask_url(url)}: scheme must be one of {', '.join(sorted(AMQP_SCHEMES))}")
    tls, default_port = AMQP_SCHEMES[scheme]
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - set(_QUERY_OPTIONS)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown option(s) {', '.join(sorted(unknown))} in broker URL {mask_url(url)}; "
            f"known: {', '.join(_QUERY_OPTIONS)} (others go in broker_transport_options)")
    if "ssl" in query:
        tls = _flag("ssl", query["ssl"])
    if use_ssl:
        tls = True
        if port is None and scheme != "amqps":
            default_port = 5671
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    options = dict(transport_options or {})
    beat = _number("heartbeat", query["heartbeat"], url) if "heartbeat" in query else heartbeat
    timeout = (_number("connect_timeout", query["connect_timeout"], url)
               if "connect_timeout" in query else connection_timeout)
    return AMQPParams(
        url=url,
        host=unquote(parts.hostname or "") or "localhost",
        port=port or default_port,
        login=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        virtualhost=unquote(path) or "/",
        ssl=tls,
        ssl_options=_ssl_options(use_ssl),
        heartbeat=beat,
        connect_timeout=timeout,
        confirm_publish=_flag("confirm_publish", options.get("confirm_publish", True)),
        reconnect_interval=float(options.get("reconnect_interval", 1.0)),
    )


def driver_errors() -> tuple[type[BaseException], ...]:
    """The exceptions aio-pika and aiormq raise when the broker is gone or refuses us.

    ``ChannelClosed`` is not among them: that is a channel-level refusal (a missing queue, a
    declaration that does not match), which callers handle where they know what it means.
    ``ProtocolSyntaxError`` (``InvalidFrameError``: a frame that cannot be decoded, see
    amqp_frames.py) is: aiormq closes the connection it came on, and the robust connection
    reconnects.
    """
    from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError
    from aiormq.exceptions import ConnectionClosed, ProtocolSyntaxError

    return (AMQPConnectionError, ConnectionClosed, ChannelInvalidStateError, ConnectionError,
            OSError, asyncio.TimeoutError, ProtocolSyntaxError)


class _LoopState:
    """One event loop's connection and channels. Used only from that loop."""

    __slots__ = ("channels", "connection", "lock", "loop", "shutdown")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connection: AbstractRobustConnection | None = None
        self.channels: dict[str, AbstractRobustChannel] = {}
        self.lock = asyncio.Lock()
        #: Closes the connection when a loop we do not run (a user's ``asyncio.run``) ends
        #: without closing it: left open, its reconnect and close callbacks are tasks that
        #: the closed loop collects unfinished ("Task was destroyed but it is pending!").
        self.shutdown = LoopShutdown(self._close_at_shutdown)

    async def _close_at_shutdown(self) -> None:
        conn, self.connection = self.connection, None
        self.channels.clear()
        if conn is not None and not conn.is_closed:
            await _close_quietly(conn)


class Connections:
    """One aio-pika robust connection per event loop (asyncio clients are bound to their loop).

    Thread-safety: ``_states`` (loop -> _LoopState) is read and changed under ``_lock``; a
    ``_LoopState`` is then used only from its own loop (its ``asyncio.Lock`` serializes
    connecting and opening channels on that loop). ``close()`` may be called from any thread.
    """

    def __init__(self, params: AMQPParams) -> None:
        from .amqp_envelope import encode_floats_as_doubles

        # Every AMQP user (the transport, the rpc:// backend, a mailbox) sends float headers
        # as py-amqp does (doubles), whoever makes connections first.
        encode_floats_as_doubles()
        self.params = params
        self._lock = threading.Lock()
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            for dead in [lp for lp in self._states if lp.is_closed()]:
                del self._states[dead]
            state = self._states.get(loop)
            if state is None:
                state = self._states[loop] = _LoopState(loop)
            return state

    def _connect_kwargs(self) -> dict[str, Any]:
        p = self.params
        kwargs: dict[str, Any] = dict(
            host=p.host, port=p.port, login=p.login, password=p.password,
            virtualhost=p.virtualhost, ssl=p.ssl, timeout=p.connect_timeout,
            reconnect_interval=p.reconnect_interval,
            client_properties={"connection_name": "celery-asyncio"},
        )
        if p.ssl:
            kwargs["ssl_context"] = p.ssl_context()
        if p.heartbeat is not None:
            kwargs["heartbeat"] = int(p.heartbeat)
        return kwargs

    async def connection(self) -> AbstractRobustConnection:
        """The running loop's connection; connects on first use.

        Raises ConnectionLost (one line, password masked) when the broker cannot be reached.
        """
        state = self._state()
        conn = state.connection
        if conn is not None and not conn.is_closed:
            return conn
        async with state.lock:
            conn = state.connection
            if conn is not None and not conn.is_closed:
                return conn
            import aio_pika

            from .amqp_frames import connection_class

            try:
                server_hostname = self.params.ssl_options.get("server_hostname")
                conn = await aio_pika.connect_robust(
                    connection_class=connection_class(server_hostname), **self._connect_kwargs())
            except asyncio.CancelledError:
                raise
            except driver_errors() as exc:
                raise ConnectionLost(
                    f"Cannot connect to {self.params.safe_url}: {_describe(exc)}") from exc
            state.connection = conn
            state.channels.clear()
            await state.shutdown.arm()
            return conn

    async def channel(self, purpose: str, *, confirms: bool = True) -> AbstractRobustChannel:
        """The running loop's channel for ``purpose`` (``publish``, ``consume``, ``mailbox``,
        ``rpc``, ``events``...), opened on first use and re-opened if it was closed."""
        state = self._state()
        channel = state.channels.get(purpose)
        if channel is not None and not channel.is_closed:
            return channel
        conn = await self.connection()
        if not conn.connected.is_set():
            # Reconnecting: the robust connection re-opens its channels itself once back.
            raise ConnectionLost(f"Connection to {self.params.safe_url} lost; reconnecting")
        # RuntimeError: aio-pika's "connection was not opened" (it just broke)
        opening_errors: tuple[type[BaseException], ...] = (*driver_errors(), RuntimeError)
        async with state.lock:
            channel = state.channels.get(purpose)
            if channel is not None and not channel.is_closed:
                return channel
            try:
                channel = await conn.channel(publisher_confirms=confirms)
            except asyncio.CancelledError:
                raise
            except opening_errors as exc:
                raise ConnectionLost(
                    f"Cannot open a channel on {self.params.safe_url}: {_describe(exc)}") from exc
            state.channels[purpose] = channel  # type: ignore[assignment]
            return channel  # type: ignore[return-value]

    def forget_channel(self, purpose: str) -> None:
        """Drop the running loop's cached ``purpose`` channel (the next ``channel()`` opens a
        fresh one); used after the server closed it with a channel error."""
        self._state().channels.pop(purpose, None)

    async def aclose(self) -> None:
        """Close the running loop's connection and its channels. Idempotent."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.pop(loop, None)
        if state is not None and state.connection is not None:
            await _close_quietly(state.connection)

    def close(self) -> None:
        """Close what can be closed, from any thread: each other loop's connection on its own
        loop (``call_soon_threadsafe``) while that loop runs. Idempotent."""
        with self._lock:
            states = list(self._states.values())
            self._states.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for state in states:
            conn = state.connection
            if conn is None or state.loop.is_closed():
                continue
            if state.loop is current:
                state.loop.create_task(_close_quietly(conn))
            elif state.loop.is_running():
                state.loop.call_soon_threadsafe(_schedule_close, state.loop, conn)


def _schedule_close(loop: asyncio.AbstractEventLoop, conn: Any) -> None:
    loop.create_task(_close_quietly(conn))


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # closing a connection that already broke
        logger.debug("closing AMQP connection: %r", exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__
