"""``celery bench``'s interrupt path: a send or result wait that does not end when cancelled
must not keep the clean-up (stopping the worker, purging the queue) from running."""

from __future__ import annotations

import asyncio
import types

import pytest

from celery.bin import bench


def a_run() -> bench._Run:
    run = bench._Run.__new__(bench._Run)  # only what _supervise reads
    run.worker, run.done = bench._Workers(), 0
    run.plan = types.SimpleNamespace(timeout=60.0)
    return run


def test_a_job_that_ignores_its_cancellation_is_left_after_the_grace(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "CANCEL_GRACE", 0.2)

    async def main() -> None:
        release = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await release.wait()  # swallows the cancellation, as a buggy await might

        supervising = asyncio.create_task(a_run()._supervise(stubborn(), running=False))
        await asyncio.sleep(0.05)
        supervising.cancel()
        started = asyncio.get_running_loop().time()
        try:
            done, _ = await asyncio.wait({supervising}, timeout=5)
            assert done, "_supervise still waits for the job that ignored its cancellation"
            assert asyncio.get_running_loop().time() - started >= 0.2
            assert supervising.cancelled()
        finally:
            release.set()  # let the stubborn job end, so the loop closes clean

    asyncio.run(main())
    err = capsys.readouterr().err
    assert "the sends did not end within 0.2 s of being cancelled" in err
    assert "stubborn:" in err and "wait:" in err  # where it hangs: the job, down to its await


def test_a_job_that_ends_on_cancel_is_awaited_without_a_word(
        capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        supervising = asyncio.create_task(a_run()._supervise(asyncio.sleep(60), running=False))
        await asyncio.sleep(0.05)
        supervising.cancel()
        with pytest.raises(asyncio.CancelledError):
            await supervising

    asyncio.run(main())
    assert capsys.readouterr().err == ""
