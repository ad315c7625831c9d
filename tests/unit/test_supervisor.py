"""``--processes``: how many, and the names and file names of each worker process."""

from __future__ import annotations

import pytest

from celery.bin import supervisor
from celery.bin.supervisor import ChildSlot, child_slot, expand_index, process_name
from celery.bin.supervisor import resolve_processes as processes


def test_counts_are_whole_numbers_from_one() -> None:
    assert [processes(v) for v in ("1", " 3 ", 8)] == [1, 3, 8]
    for bad in ("0", "-1", "abc", "2.5", "", 0):
        with pytest.raises(ValueError, match="'auto'"):
            processes(bad)


@pytest.mark.parametrize("free", [True, False])
def test_auto_is_the_cpu_count_on_gil_builds_and_one_on_free_threaded(free, monkeypatch) -> None:
    monkeypatch.setattr(supervisor.gil, "FREE_THREADED", free)
    monkeypatch.setattr(supervisor, "cpu_count", lambda: 6)
    assert processes("auto") == processes("AUTO") == (1 if free else 6)


def test_process_names_get_the_index_after_the_name() -> None:
    assert process_name("celery@%h", 2) == "celery-2@%h"
    assert process_name("w1@example.com", 1) == "w1-1@example.com"
    assert process_name("box", 3) == "celery-3@box"
    assert process_name("celery@%h", 0) == "celery@%h"  # a lone process keeps its name


def test_index_sequences_place_the_index_where_they_say() -> None:
    assert process_name("w%i@%h", 2) == "w2@%h"
    assert process_name("w%I@%h", 2) == "w-2@%h"
    assert process_name("w%I@%h", 0) == "w@%h"
    assert expand_index("/var/log/%n%I.log", 3) == "/var/log/%n-3.log"
    assert expand_index("100%%i-%i", 1) == "100%%i-1"  # %% is left for the next expansion


def test_child_slot_comes_from_the_environment() -> None:
    assert child_slot({}) is None
    assert child_slot({supervisor.CHILD_ENV: "2/4"}) == ChildSlot(2, 4)
    assert ChildSlot(2, 4).number == 2 and ChildSlot(1, 1).number == 0
