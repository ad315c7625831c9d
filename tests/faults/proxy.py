"""A TCP proxy that injects faults between clients and a server (as asyncpg's test base
does): it forwards bytes both ways, and while chaos is on, picks live connections at random
and drops them, resets them (RST) in the middle of a command, or stalls them for a while.

Besides the random chaos, a test may take the server away on purpose: ``down()`` resets
every live connection (or, with ``reset=False``, leaves them) and closes each new one as
soon as it is accepted, until ``up()``;
``mute()`` drops what the server sends (its replies are lost on the way, the commands were
run), until ``unmute()``; ``reset()`` resets every live connection and serves new ones.

Threads only (one accept thread, two pump threads per connection, one chaos thread), so it
runs beside any event loop of the test. Counters say what it did.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from .redis_server import free_port

#: What the chaos does, with its weight.
FAULTS = (("reset_mid_command", 3), ("drop", 2), ("stall", 2))


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    #: Set by the chaos: the next chunk either way is cut in the middle and the link reset.
    cut: threading.Event = field(default_factory=threading.Event)
    #: Until this monotonic time, nothing is forwarded (bytes wait in the kernel buffers).
    stalled_until: float = 0.0
    closed: bool = False


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``target``; ``chaos(True)`` starts the
    faults, one every ``every`` seconds on average, stalls up to ``max_stall`` seconds."""

    def __init__(self, target_port: int, every: float = 0.2, max_stall: float = 1.5,
                 seed: int | None = None) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.every, self.max_stall = every, max_stall
        self.rng = random.Random(seed)
        self.counts = {name: 0 for name, _ in FAULTS}
        self._links: list[_Link] = []
        self._lock = threading.Lock()  # guards _links and counts
        self._chaos = threading.Event()
        self._stop = threading.Event()
        self._down = threading.Event()  # set: no connection is served
        self._mute = threading.Event()  # set: the server's bytes are dropped
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._chaos_loop, daemon=True)]
        for thread in self._threads:
            thread.start()

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def chaos(self, on: bool) -> None:
        (self._chaos.set if on else self._chaos.clear)()

    def down(self, reset: bool = True) -> None:
        """Take the server away: every live connection is reset (unless not ``reset``: then
        they go on), and new ones are closed as soon as they are accepted, until ``up``."""
        self._down.set()
        if reset:
            self.reset()

    def reset(self) -> None:
        """Reset every live connection (RST); new ones are served as before."""
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close(link, reset=True)

    def up(self) -> None:
        """Serve connections again (after ``down``)."""
        self._down.clear()

    def mute(self) -> None:
        """Drop what the server sends from now on (its replies are lost), until ``unmute``."""
        self._mute.set()

    def unmute(self) -> None:
        self._mute.clear()

    def close(self) -> None:
        self._stop.set()
        self._chaos.clear()
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close(link, reset=False)

    # -- forwarding ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            if self._down.is_set():  # went down meanwhile (``down`` sets, then closes links)
                self._close(link, reset=True)
                continue
            for src, dst, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(link, src, dst, replies),
                                 daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket,
              replies: bool) -> None:
        try:
            while not link.closed:
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready:
                    continue
                while time.monotonic() < link.stalled_until and not link.closed:
                    time.sleep(0.01)
                data = src.recv(65536)
                if not data:
                    break
                if replies and self._mute.is_set():
                    continue
                if link.cut.is_set() and len(data) > 1:  # half a command, then RST
                    dst.sendall(data[: len(data) // 2])
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(link, reset=link.cut.is_set())

    def _close(self, link: _Link, reset: bool) -> None:
        with self._lock:
            if link.closed:
                return
            link.closed = True
            if link in self._links:
                self._links.remove(link)
        for sock in (link.client, link.server):
            try:
                if reset:  # SO_LINGER 0: close sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    # -- chaos --------------------------------------------------------------------------------

    def _chaos_loop(self) -> None:
        names = [name for name, _ in FAULTS]
        weights = [weight for _, weight in FAULTS]
        while not self._stop.is_set():
            time.sleep(self.rng.expovariate(1 / self.every))
            if not self._chaos.is_set():
                continue
            with self._lock:
                links = [link for link in self._links if not link.closed]
            if not links:
                continue
            link = self.rng.choice(links)
            fault = self.rng.choices(names, weights)[0]
            with self._lock:
                self.counts[fault] += 1
            if fault == "reset_mid_command":
                link.cut.set()  # the next chunk either way is cut and the link reset
            elif fault == "drop":
                self._close(link, reset=False)
            else:
                link.stalled_until = time.monotonic() + self.rng.uniform(0.1, self.max_stall)
