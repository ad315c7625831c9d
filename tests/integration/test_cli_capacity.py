"""``celery capacity``: --dry-run, and each bad input answered with one line, a non-zero exit,
no worker left running and the sweep queue purged. The measured sweeps are in
test_capacity_measured.py."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celery._state import swap_default_app
from celery.bin.celery import celery as celery_group
from tests.integration.capacity_helpers import (
    APP,
    RESIZE,
    STRICT,
    processes_mentioning,
    queue_length,
    run_cli,
)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run from ``tmp_path`` (relative --args-from paths; a dry run writes nothing there).
    The CLI makes the app it loads the default one and puts the working directory on
    ``sys.path``: both are put back, so later tests in this process see neither."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("APP", "BROKER_URL", "RESULT_BACKEND", "CONFIG_MODULE"):
        monkeypatch.delenv(name, raising=False)
    default = swap_default_app(None)
    swap_default_app(default)
    try:
        yield tmp_path
    finally:
        swap_default_app(default)


def invoke(*args: str) -> Result:
    """The command in this process: the checks that start no worker, without an
    interpreter's start-up each."""
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(celery_group, ["-A", APP, "capacity", *args])


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def test_dry_run_says_what_it_would_measure_and_sends_nothing(in_tmp: Path) -> None:
    (in_tmp / "calls.jsonl").write_text('[640, 480]\n\n{"args": [1], "kwargs": {"height": 2}}\n')
    proc = invoke("--task", RESIZE, "--args-from", "calls.jsonl", "--target-rate", "50",
                  "--budget", "60", "--max-slots", "8", "--dry-run", "--json")
    assert proc.exit_code == 0, proc.output
    planned = json.loads(proc.stdout)
    assert planned["dry_run"] is True
    assert planned["workload"] == {"kind": "async", "task": RESIZE,
                                   "args_from": "calls.jsonl", "samples": 2}
    assert planned["axis"] == "loop concurrency" and planned["slots"] == [1, 2, 4, 8]
    assert planned["budget_s"] == 60 and planned["point_s"] == 6
    assert planned["target"] == {"rate": 50, "max_utilisation": 0.8}
    assert list(in_tmp.iterdir()) == [in_tmp / "calls.jsonl"]  # no broker file: nothing sent
    text = invoke("--cpu-ms", "2", "--mix", "0", "--dry-run")
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("celery capacity --dry-run: would measure synthetic sync "
                                  "tasks (io 0 ms, cpu 2 ms")
    assert "sync workers in 1, 2, 4, 8, 16, 32, 64, 128, 256" in text.stdout
    assert "nothing is sent" in text.stdout


def test_an_unknown_task_is_named_with_the_apps_tasks(in_tmp: Path) -> None:
    proc = invoke("--task", "proj.nope", "--dry-run")
    assert proc.exit_code == 1 and proc.stdout == ""
    line = one_error_line(proc.stderr)
    prefix = "Error: unknown task 'proj.nope'; the app's tasks: "
    assert line.startswith(prefix), line
    # the app's own tasks, named in order; @shared_task tasks that earlier tests of this
    # process defined join every app (as in Celery) and may be named beside them
    named = line[len(prefix):].split(", ")
    assert named == sorted(named) and {RESIZE, STRICT} <= set(named), line


def test_argument_files_that_cannot_be_used_are_refused(in_tmp: Path) -> None:
    (in_tmp / "bad.jsonl").write_text('[1]\n{"args": [1], "oops": 2}\n')
    (in_tmp / "broken.jsonl").write_text("[1,\n")
    (in_tmp / "empty.jsonl").write_text("\n")
    cases = {
        "bad.jsonl": "Error: --args-from bad.jsonl:2: give a JSON array of arguments or an "
                     'object {"args": [...], "kwargs": {...}}',
        "broken.jsonl": "Error: --args-from broken.jsonl:1: not JSON (Expecting value)",
        "empty.jsonl": "Error: --args-from empty.jsonl: no arguments in it (one JSON array a "
                       "line)",
        "missing.jsonl": "Error: --args-from missing.jsonl: cannot read it (",
    }
    for name, error in cases.items():
        proc = invoke("--task", STRICT, "--args-from", name, "--dry-run")
        assert proc.exit_code == 1 and proc.stdout == "", name
        assert one_error_line(proc.stderr).startswith(error), proc.stderr


def test_options_that_do_not_go_together_are_refused(in_tmp: Path) -> None:
    cases = {
        ("--task", STRICT, "--io-ms", "3"):
            "Error: --io-ms: options of the synthetic workload, not with --task",
        ("--args-from", "x.jsonl"): "Error: --args-from gives the arguments of --task: give "
                                    "--task too",
        ("--target-p99", "50"): "Error: --target-p99 is the latency at --target-rate: give "
                                "that too",
    }
    for args, error in cases.items():
        proc = invoke(*args, "--dry-run")
        assert proc.exit_code == 1 and one_error_line(proc.stderr) == error, proc.stderr


def test_an_unreachable_broker_is_one_error_line(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "capacity", "--io-ms", "1", "--json", "--queue",
                   "capacity-unreachable", global_args=("-b", "redis://127.0.0.1:1/0"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert one_error_line(proc.stderr).startswith(
        "Error: broker redis://127.0.0.1:1/0: unreachable (")
    assert processes_mentioning("capacity-unreachable") == []  # no worker was started


def test_arguments_that_fail_stop_the_sweep_and_clean_up(tmp_path: Path) -> None:
    (tmp_path / "calls.jsonl").write_text('["seven"]\n')
    proc = run_cli(tmp_path, "capacity", "--task", STRICT, "--args-from", "calls.jsonl",
                   "--queue", "capacity-fails", "--budget", "10")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == (
        f"Error: the warm-up task {STRICT} failed: TypeError('count must be an int, not str')")
    assert processes_mentioning("capacity-fails") == []  # the worker is gone
    assert queue_length(f"sqlite:///{tmp_path}/celery-broker.db", "capacity-fails") == 0
    assert re.match(r"celery capacity: sweeping sync workers on sqlite:///celery-broker.db",
                    proc.stdout)
