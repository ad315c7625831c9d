"""``celery capacity``: sweep worker settings with ``celery bench``'s runner, fit the capacity
model, and recommend the smallest worker that meets a target rate and p99. This module
checks the options and reports; ``capacity_sweep`` measures, ``celery.capacity`` reasons.

Threads: the sweep runs on one event loop on the main thread (see ``capacity_sweep``); the
rest of the command runs on the main thread before and after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from ..capacity.plan import Measured, plan, unreachable
from ..capacity.report import html_page, text_lines
from ..utils.text import mask_url
from .base import CLIContext, user_error
from .bench import make_plan
from .capacity_sweep import POINT_TASK_CAP, Sweep, Workload

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["capacity"]

# -- the workload ---------------------------------------------------------------------------


def _is_call(value: Any) -> bool:
    """``{"args": [...], "kwargs": {...}}``, either key optional, no other key."""
    return isinstance(value, dict) and set(value) <= {"args", "kwargs"} and \
        isinstance(value.get("args", []), list) and isinstance(value.get("kwargs", {}), dict)


def read_samples(path: str) -> tuple[tuple[tuple[Any, ...], dict[str, Any]], ...]:
    """``--args-from``: one call a line, a JSON array (the arguments) or an object with
    ``args`` and/or ``kwargs``; blank lines are skipped."""
    samples: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise user_error(f"--args-from {path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise user_error(f"--args-from {path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(value, list):
            samples.append((tuple(value), {}))
        elif _is_call(value):
            samples.append((tuple(value.get("args", [])), dict(value.get("kwargs", {}))))
        else:
            raise user_error(f"--args-from {path}:{number}: give a JSON array of arguments or "
                             'an object {"args": [...], "kwargs": {...}}')
    if not samples:
        raise user_error(f"--args-from {path}: no arguments in it (one JSON array a line)")
    return tuple(samples)


def make_workload(app: Celery, opts: dict[str, Any]) -> Workload:
    """Check the workload options: a synthetic mix, or ``--task`` with its samples."""
    if opts["task"] is None:
        if opts["args_from"]:
            raise user_error("--args-from gives the arguments of --task: give --task too")
        mix = opts["mix"]
        return Workload("async" if mix == 1 else "sync" if mix == 0 else "mixed")
    synthetic = [name for name, default in (("io_ms", 0.0), ("cpu_ms", 0.0), ("async_cpu_ms", 0.0),
                                            ("payload_bytes", 0)) if opts[name] != default]
    if synthetic or opts["mix"] is not None:
        names = ", ".join(f"--{n.replace('_', '-')}" for n in synthetic + (
            ["mix"] if opts["mix"] is not None else []))
        raise user_error(f"{names}: options of the synthetic workload, not with --task")
    name = opts["task"]
    if name not in app.tasks:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise user_error(f"unknown task {name!r}; the app's tasks: "
                         f"{', '.join(known) if known else '(none)'}")
    samples = read_samples(opts["args_from"]) if opts["args_from"] else (((), {}),)
    kind = "async" if app.tasks[name].is_async else "sync"
    return Workload(kind, name, samples, opts["args_from"])


def _bench_options(opts: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """The options ``celery bench`` would get for this workload (its checks run on them)."""
    mix = {"async": 1.0, "sync": 0.0}.get(workload.kind, opts["mix"] if opts["mix"] is not None
                                          else 0.5)
    return {
        "tasks": POINT_TASK_CAP, "io_ms": opts["io_ms"], "cpu_ms": opts["cpu_ms"],
        "async_cpu_ms": opts["async_cpu_ms"], "mix": mix, "payload_bytes": opts["payload_bytes"],
        "loop_workers": 1, "loop_concurrency": 1, "sync_workers": 1,
        "prefetch_multiplier": opts["prefetch_multiplier"], "in_flight": 1,
        "no_results": False, "queue": opts["queue"], "timeout": opts["timeout"],
        "task_events": False, "worker_args": (), "external_worker": False,
    }


# -- the report -----------------------------------------------------------------------------


def build_report(sweep: Sweep, opts: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` object: where and what was measured, and the planner's reading of it."""
    measured = Measured(
        kind=sweep.workload.kind, points=sweep.points, variants=sweep.variants,
        probe_s=sweep.probe, prefetch=sweep.prefetch,
        free_threaded=bool(sysconfig.get_config_var("Py_GIL_DISABLED")))
    return {
        "workload": _workload_json(sweep),
        "broker": mask_url(sweep.app.broker_url),
        "result_backend": mask_url(sweep.app.conf.result_backend),
        "queue": sweep.base.queue, "purged": sweep.purged,
        "budget_s": sweep.budget, "elapsed_s": round(sweep.spent(), 2),
        **plan(measured, target_rate=opts["target_rate"], target_p99_ms=opts["target_p99"],
               max_utilisation=opts["max_utilisation"], max_cores=opts["max_cores"]),
        "notes": sweep.notes,
    }


def _workload_json(sweep: Sweep) -> dict[str, Any]:
    plan, workload = sweep.base, sweep.workload
    if workload.task:
        return {"kind": workload.kind, "task": workload.task, "args_from": workload.args_file,
                "samples": len(workload.samples)}
    return {"kind": workload.kind, "task": None, "io_ms": plan.io_ms, "cpu_ms": plan.cpu_ms,
            "async_cpu_ms": plan.async_cpu_ms, "mix": plan.mix,
            "payload_bytes": plan.payload_bytes}


# -- the command ----------------------------------------------------------------------------


def _dry_run(sweep: Sweep) -> dict[str, Any]:
    steps = sweep.slot_steps()
    return {
        "dry_run": True, "workload": _workload_json(sweep),
        "broker": mask_url(sweep.app.broker_url),
        "result_backend": mask_url(sweep.app.conf.result_backend),
        "queue": sweep.base.queue, "budget_s": sweep.budget, "point_s": sweep.point_s,
        "axis": sweep.workload.axis, "slots": steps,
        "processes": [p for p in (2, 4, 8) if p <= sweep.max_cores],
        "prefetch_multiplier": sweep.base.prefetch_multiplier,
        "other_settings": (["prefetch multiplier 1"] if sweep.sweep_prefetch else []) + (
            ["2 loop workers, when the worker is busy on CPU"]
            if sweep.workload.kind != "sync" else []),
        "target": {"rate": sweep.target_rate, "max_utilisation": sweep.max_util},
    }


def _dry_run_text(d: dict[str, Any]) -> list[str]:
    w = d["workload"]
    what = (f"task {w['task']} with {w['samples']} argument sample(s)" if w["task"] else
            f"synthetic {w['kind']} tasks (io {w['io_ms']:g} ms, cpu {w['cpu_ms']:g} ms, "
            f"async cpu {w['async_cpu_ms']:g} ms, mix {w['mix']:g}, "
            f"{w['payload_bytes']}-byte payload)")
    return [
        f"celery capacity --dry-run: would measure {what}",
        f"  broker   {d['broker']}   results {d['result_backend']}",
        f"  queue    {d['queue']} (purged after each point)",
        f"  sweep    {d['axis']} in {', '.join(map(str, d['slots']))} (stopping once the target "
        f"is met with 3 points, or throughput stops growing), {d['point_s']:g} s a point, "
        f"prefetch multiplier {d['prefetch_multiplier']}",
        f"  then     --processes {', '.join(map(str, d['processes'])) or '(none: --max-cores 1)'}"
        " if one process is CPU-bound and short of the target",
        f"  and      {', '.join(d['other_settings']) or 'no other setting'} at the best "
        "slot count, with the budget left",
        f"  budget   {d['budget_s']:g} s; nothing is sent",
    ]


def _prepare(obj: CLIContext, opts: dict[str, Any]) -> Sweep:
    app = obj.app
    if urlsplit(app.broker_url).scheme == "memory":
        raise user_error("celery capacity measures worker processes: a memory:// broker "
                         "cannot cross processes; use the app's real broker")
    if not app.conf.result_backend:
        raise user_error("celery capacity awaits every task's result: configure a result "
                         "backend (or give --result-backend)")
    if opts["target_p99"] is not None and opts["target_rate"] is None:
        raise user_error("--target-p99 is the latency at --target-rate: give that too")
    workload = make_workload(app, opts)
    plan, notes = make_plan(obj, app, _bench_options(opts, workload))
    if not plan.results:
        raise user_error(f"celery capacity awaits every task's result: {notes[0]}")
    opts["max_cores"] = opts["max_cores"] or os.cpu_count() or 1
    return Sweep(obj, app, plan, workload, opts)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--io-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic async tasks await asyncio.sleep this many milliseconds [0].")
@click.option("--cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic sync tasks burn this many milliseconds of CPU [0].")
@click.option("--async-cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic async tasks burn this much CPU around their await [0].")
@click.option("--mix", type=click.FloatRange(0, 1), default=None,
              help="Fraction of async synthetic tasks; the rest are sync [0.5].")
@click.option("--payload-bytes", type=click.IntRange(0), default=0,
              help="Size of a string argument each synthetic task gets [0].")
@click.option("--task", metavar="NAME", help="Measure this task of the app instead.")
@click.option("--args-from", type=click.Path(dir_okay=False), metavar="FILE.jsonl",
              help="Arguments for --task, one call a line: [args] or {\"args\", \"kwargs\"}.")
@click.option("--target-rate", type=click.FloatRange(0, min_open=True), metavar="TASKS/S",
              help="Tasks per second the workers must sustain.")
@click.option("--target-p99", type=click.FloatRange(0, min_open=True), metavar="MS",
              help="Most p99 latency at the target rate, in milliseconds.")
@click.option("--max-cores", type=click.IntRange(1), help="Cores one machine may give [all].")
@click.option("--max-slots", type=click.IntRange(1), default=256,
              help="Largest loop concurrency / sync workers swept [256].")
@click.option("--max-utilisation", type=click.FloatRange(0.1, 0.95), default=0.8,
              help="Most load a worker is planned for, as a share of its capacity [0.8].")
@click.option("--prefetch-multiplier", type=click.IntRange(1),
              help="Prefetch multiplier of the measured workers [4, and 1 is tried].")
@click.option("--budget", type=click.FloatRange(5), default=150.0, metavar="SECONDS",
              help="Time the whole sweep may take [150].")
@click.option("--queue", metavar="NAME", help="Sweep queue, purged [celery-bench-<pid>].")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0,
              metavar="SECONDS", help="Give up when no task has finished for this long [60].")
@click.option("--verify", is_flag=True,
              help="Then measure the recommended worker and compare it with the prediction.")
@click.option("--dry-run", is_flag=True, help="Say what would be measured; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.option("--html", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Also write a self-contained HTML page with the sweep's charts.")
@click.pass_obj
def capacity(obj: CLIContext, **opts: Any) -> None:
    """Measure worker settings on the app's broker and recommend the smallest worker that
    meets --target-rate (and --target-p99): a sweep, a fitted model, a recommendation."""
    from ..worker.executor.loop import new_event_loop

    sweep = _prepare(obj, opts)
    if opts["dry_run"]:
        planned = _dry_run(sweep)
        click.echo(json.dumps(planned) if opts["as_json"] else "\n".join(_dry_run_text(planned)))
        return
    if not opts["as_json"] and not obj.quiet:
        click.echo(f"celery capacity: sweeping {sweep.workload.axis} on "
                   f"{mask_url(sweep.app.broker_url)}, {sweep.budget:g} s at most")
    with tempfile.TemporaryDirectory(prefix="celery-capacity-") as tmp:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(sweep.main(Path(tmp)))
                report = build_report(sweep, opts)
                if opts["verify"]:
                    runner.run(sweep.verify(report, Path(tmp)))
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            run = sweep.run
            if isinstance(exc, asyncio.CancelledError) and not (run and run.terminated):
                raise
            why = "terminated by SIGTERM" if run and run.terminated else "interrupted"
            raise user_error(f"{why}: {run.stopped_text() if run else 'nothing started'}") \
                from None
    if opts["html"]:
        try:
            Path(opts["html"]).write_text(html_page(report))
        except OSError as exc:
            raise user_error(f"--html {opts['html']}: {exc.strerror}") from None
    click.echo(json.dumps(report) if opts["as_json"] else "\n".join(text_lines(report)))
    rec = report["recommendation"]
    if opts["target_rate"] is not None and not rec["meets_target"]:
        raise user_error(unreachable(report))
