"""Beat's leader lease on every broker that has one (transport/lease.py): one holder at a
time, a new fencing token per term, renewal only by the holder, and claims that a deposed
holder can no longer make, nor anyone make twice for the same run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery.transport.base import CAP_LEASE
from celery.transport.lease import Claim
from celery.transport.registry import transport_for_url

from ..conftest import flushed_redis_url

REDIS_DB = 14


@pytest.fixture(params=["memory", "sqlite", "filesystem", "redis"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    url = {
        "memory": f"memory://lease-{uuid.uuid4().hex}",
        "sqlite": f"sqlite:///{tmp_path}/broker.db",
        "filesystem": f"filesystem:///{tmp_path}/fs",
    }.get(request.param) or flushed_redis_url(REDIS_DB)
    transport = transport_for_url(url)
    assert CAP_LEASE in transport.capabilities
    yield transport
    transport.close()


def test_one_holder_at_a_time_and_a_new_token_per_term(transport):
    async def scenario() -> None:
        a, b = transport.leader_lease("t"), transport.leader_lease("t")
        assert await a.acquire("a", 1.0)
        assert not await b.acquire("b", 1.0)
        assert await a.holder() == "a"
        assert await a.renew(1.0) and not await b.renew(1.0)
        first = a.token
        await asyncio.sleep(1.1)  # a's term runs out without renewal
        assert not await a.renew(1.0)
        assert await b.acquire("b", 5.0)
        assert b.token > first
        assert await b.holder() == "b"
        # A lease of another name is another lease.
        other = transport.leader_lease("other")
        assert await other.acquire("c", 1.0)
        await b.release()
        assert await a.acquire("a", 1.0), "a released lease is free at once"

    asyncio.run(scenario())


def test_claims_are_fenced_and_never_twice_for_one_run(transport):
    async def scenario() -> None:
        a, b = transport.leader_lease("c"), transport.leader_lease("c")
        assert await a.acquire("a", 1.0)
        assert await a.claim("every", 100.0) == (Claim.CLAIMED, 100.0)
        assert (await a.claim("every", 100.0))[0] in (Claim.ALREADY, Claim.CLAIMED)
        assert await a.claim("every", 99.0) == (Claim.ALREADY, 100.0)
        assert await b.claim("every", 101.0) == (Claim.LOST, None)
        await asyncio.sleep(1.1)
        assert await b.acquire("b", 5.0)
        # a was deposed: whatever it believes, its claims fail now.
        assert await a.claim("every", 102.0) == (Claim.LOST, None)
        assert await b.runs() == {"every": 100.0}
        assert await b.claim("every", 101.0) == (Claim.CLAIMED, 101.0)
        assert await a.runs() == {"every": 101.0}

    asyncio.run(scenario())
