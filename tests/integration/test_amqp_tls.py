"""``amqps://`` end to end, on the real RabbitMQ behind a TLS-terminating relay (the broker
here listens on plain TCP): the relay's certificate names ``rabbit.test`` only, so a
connection to 127.0.0.1 verifies only when ``broker_use_ssl``'s ``server_hostname`` is
applied, and the relay records the name each client sent (SNI)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from celery import Celery
from celery.exceptions import ConnectionLost

from .test_amqp_direct import queued_args

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-amqp-tls"
NAME = "rabbit.test"


class TLSRelay:
    """Listens with TLS on 127.0.0.1 (certificate for ``NAME``) and relays the plain bytes
    to ``target``; ``names`` is the server name each handshake sent. Runs its own event loop
    in a thread; ``names`` is only appended to there and read by the test after a connection
    has been made (the handshake happened before)."""

    def __init__(self, cert: Path, key: Path, target: tuple[str, int]) -> None:
        self.target = target
        self.names: list[str | None] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda _sock, name, _ctx: self.names.append(name)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            links = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in links:
                task.cancel()
            await asyncio.gather(*links, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for ``NAME`` only."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    # The openssl command, not the cryptography package: that one has no free-threaded
    # build, and this test runs in the free-threaded pass too (ci/setup.sh installs openssl).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def relay(amqp_url: str, certificate: tuple[Path, Path]) -> Iterator[tuple[TLSRelay, str]]:
    """The relay to this test's vhost, and the ``amqps://`` URL through it."""
    parts = urlsplit(amqp_url)
    relay = TLSRelay(*certificate, (parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        yield relay, f"amqps://guest:guest@127.0.0.1:{relay.port}{parts.path}"
    finally:
        relay.close()


def tls_app(url: str, **use_ssl: object) -> Celery:
    app = Celery("amqp-tls", broker=url, set_as_current=False)
    app.conf.broker_use_ssl = use_ssl
    app.conf.broker_connection_retry = False
    return app


@pytest.mark.parametrize("confirms", [True, False])
def test_server_hostname_is_sent_and_checked_and_tasks_go_through(
        relay: tuple[TLSRelay, str], certificate: tuple[Path, Path], confirms: bool) -> None:
    tls_relay, url = relay
    app = tls_app(url, ca_certs=str(certificate[0]), server_hostname=NAME)
    app.conf.broker_transport_options = {"confirm_publish": confirms}
    try:
        for i in range(5):
            app.send_task("tls.t", (i,))
        assert sorted(queued_args(app, 5)) == list(range(5))
    finally:
        app.close()
    assert tls_relay.names and set(tls_relay.names) == {NAME}


def test_without_server_hostname_the_certificate_does_not_match_the_url_host(
        relay: tuple[TLSRelay, str], certificate: tuple[Path, Path]) -> None:
    tls_relay, url = relay
    app = tls_app(url, ca_certs=str(certificate[0]))
    try:
        with pytest.raises(ConnectionLost, match="(?i)certificate verify failed"):
            app.send_task("tls.t", (1,))
    finally:
        app.close()
    assert tls_relay.names and set(tls_relay.names) == {None}  # no SNI for an IP address
