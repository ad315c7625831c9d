"""ResultGate: a lone result is written on the executor's thread, only when no other result
is on its way to the flusher or being written there; everything else is counted until the
flusher wrote it."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from celery.exceptions import ConnectionLost
from celery.worker.request import Outcome
from celery.worker.results import ResultGate


class Backend:
    """``store_now`` as a backend offers it: records the write, or fails, or blocks."""

    def __init__(self, supported: bool = True) -> None:
        self.supported = supported
        self.stored: list[tuple[str, bytes, str]] = []
        self.fail: Exception | None = None
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def store_now(self, task_id: str, payload: bytes, state: str) -> bool:
        self.entered.set()
        if self.release is not None:
            self.release.wait(5)
        if self.fail is not None:
            raise self.fail
        if not self.supported:
            return False
        self.stored.append((task_id, payload, state))
        return True


def outcome(n: int, payload: bytes | None = b"meta", interim: bool = False) -> Outcome:
    req = SimpleNamespace(id=f"t{n}", name="task")
    return Outcome(req, "STARTED" if interim else "SUCCESS", payload, 0.0,  # type: ignore[arg-type]
                   interim=interim)


def test_a_lone_result_is_written_at_once_and_posted_without_its_payload():
    backend = Backend()
    gate = ResultGate(backend)  # type: ignore[arg-type]
    posted = gate.hand_over(outcome(1), alone=True)
    assert backend.stored == [("t1", b"meta", "SUCCESS")]
    assert posted.payload is None and posted.state == "SUCCESS" and gate.queued == 0


def test_results_of_a_busy_executor_go_to_the_flusher_and_are_counted():
    backend = Backend()
    gate = ResultGate(backend)  # type: ignore[arg-type]
    posted = gate.hand_over(outcome(1), alone=False)
    assert posted.payload == b"meta" and backend.stored == [] and gate.queued == 1
    # Alone now, but a result is still on its way to the flusher: it goes there too.
    assert gate.hand_over(outcome(2), alone=True).payload == b"meta"
    assert backend.stored == [] and gate.queued == 2
    gate.done(2)  # the flusher wrote both
    assert gate.hand_over(outcome(3), alone=True).payload is None
    assert [s[0] for s in backend.stored] == ["t3"]


def test_a_started_state_on_its_way_keeps_the_final_result_behind_it():
    backend = Backend()
    gate = ResultGate(backend)  # type: ignore[arg-type]
    assert gate.hand_over(outcome(1, interim=True), alone=True).payload == b"meta"
    assert gate.hand_over(outcome(1), alone=True).payload == b"meta"  # after STARTED
    assert backend.stored == [] and gate.queued == 2


def test_nothing_to_store_is_not_counted():
    gate = ResultGate(Backend())  # type: ignore[arg-type]
    assert gate.hand_over(outcome(1, payload=None), alone=False).payload is None
    assert gate.queued == 0


def test_a_failed_or_unsupported_write_goes_to_the_flusher():
    backend = Backend()
    backend.fail = ConnectionLost("Redis went away")
    gate = ResultGate(backend)  # type: ignore[arg-type]
    assert gate.hand_over(outcome(1), alone=True).payload == b"meta"
    assert gate.queued == 1
    gate.done(1)
    other = ResultGate(Backend(supported=False))  # type: ignore[arg-type]
    assert other.hand_over(outcome(2), alone=True).payload == b"meta"
    assert other.queued == 1


def test_one_direct_write_at_a_time_the_others_go_to_the_flusher():
    backend = Backend()
    backend.release = threading.Event()
    gate = ResultGate(backend)  # type: ignore[arg-type]
    first: list[Outcome] = []
    writer = threading.Thread(target=lambda: first.append(gate.hand_over(outcome(1), True)))
    writer.start()
    assert backend.entered.wait(5)  # t1 is being written on the other thread
    second = gate.hand_over(outcome(2), alone=True)
    assert second.payload == b"meta" and gate.queued == 1
    backend.release.set()
    writer.join(5)
    assert first[0].payload is None and [s[0] for s in backend.stored] == ["t1"]
    assert gate.queued == 1  # t2, until the flusher writes it


def test_results_the_consumer_queues_itself_close_the_gate_until_written():
    backend = Backend()
    gate = ResultGate(backend)  # type: ignore[arg-type]
    gate.add(1)  # e.g. a REVOKED state for a discarded message
    assert gate.hand_over(outcome(1), alone=True).payload == b"meta"
    gate.done(2)
    assert gate.queued == 0
    assert gate.hand_over(outcome(2), alone=True).payload is None


def test_after_a_failed_write_results_go_to_the_flusher_for_a_while(monkeypatch):
    from celery.worker import results

    backend = Backend()
    backend.fail = ConnectionLost("Redis went away")
    gate = ResultGate(backend)  # type: ignore[arg-type]
    assert gate.hand_over(outcome(1), alone=True).payload == b"meta"
    gate.done(1)
    backend.fail = None
    assert gate.hand_over(outcome(2), alone=True).payload == b"meta"  # paused
    gate.done(1)
    assert backend.stored == []
    monkeypatch.setattr(results.time, "monotonic", lambda: float("inf"))  # the pause is over
    assert gate.hand_over(outcome(3), alone=True).payload is None
    assert [s[0] for s in backend.stored] == ["t3"]
