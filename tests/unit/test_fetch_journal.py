"""The Redis consumer's fetch journal tokens (redis_reserved.Waiters): which runs of the
fetch script a later run claims. The script's side is tested against Redis
(tests/faults/test_redis_waits.py, tests/integration/test_redis_transport.py)."""

from celery.transport.redis_reserved import JOURNAL, UNSURE_KEPT, Waiters


async def _reclaim(list_key: str, key: str) -> int:
    return 0


def waiters() -> Waiters:
    return Waiters(None, "app:", 1.0, _reclaim)


def test_tokens_are_new_for_each_run_and_the_journal_is_the_consumers_own():
    w, other = waiters(), waiters()
    assert not w.journaled
    assert [w.token(), w.token()] == ["1", "2"] and w.journaled
    assert w.journal_key == f"app:{JOURNAL}{w.consumer_id}" != other.journal_key


def test_lost_runs_are_claimed_until_a_reply_resolves_them():
    w = waiters()
    w.settle_claims([], ["1", "2"])  # a fetch whose two runs both lost their reply
    claims = w.claims()
    assert claims == ["1", "2"]
    claims.append("x")  # the caller's copy
    w.settle_claims([], ["3"])  # a fetch that started before: its claims were []
    w.settle_claims(["1", "2"], [])  # the run that claimed 1 and 2 was answered
    assert w.claims() == ["3"]


def test_only_the_newest_lost_runs_are_kept():
    w = waiters()
    w.settle_claims([], [str(n) for n in range(UNSURE_KEPT + 5)])
    assert w.claims() == [str(n) for n in range(5, UNSURE_KEPT + 5)]
