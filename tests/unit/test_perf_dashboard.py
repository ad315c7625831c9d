"""perf/record.py turns benchmark outputs into history records; perf/render.py draws them.

Every figure below is synthetic TEST DATA, written only under tmp_path (never perf/history/).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[2] / "perf"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


record = _load("record")
render = _load("render")

# --- synthetic TEST DATA in the shapes the benchmarks print --------------------------------------

COMPARE_OUTPUT = {  # bench/compare.py --json
    "celery-asyncio sync noop, 1 loop + 4 sync workers": {
        "impl": "0.1.0 (celery-asyncio)",
        "worker": "--loop-workers 1 --sync-workers 4",
        "tasks": 3000,
        "tasks_per_s": 1900.0,
        "publish_per_s": 5000.0,
        "worker_cpu_us_per_task": 110.0,
        "rtt_p50_ms": 1.1,
        "rtt_p99_ms": 2.7,
    },
    "upstream Celery threads c=8": {
        "impl": "5.7.0 (recovery)",
        "worker": "-P threads -c 8",
        "tasks": 3000,
        "tasks_per_s": 650.0,
        "publish_per_s": 2000.0,
        "worker_cpu_us_per_task": 1100.0,
        "rtt_p50_ms": 3.0,
        "rtt_p99_ms": 9.0,
    },
    "some future configuration": {"tasks_per_s": 10.0, "brand_new_metric": 7},
}


def _peer(version: str, noop: float, cpu: float, p50: float, io: float | None) -> dict:
    best = {
        "version": version,
        "noop": {
            "tasks": 500,
            "seconds": 1.0,
            "tasks_per_s": noop,
            "publish_per_s": noop * 3,
            "worker_cpu_us_per_task": cpu,
        },
        "latency": {
            "samples": 100,
            "p50_ms": p50,
            "p99_ms": p50 * 3,
            "mean_ms": p50 * 1.2,
            "worker_cpu_us_per_task": cpu * 2,
        },
    }
    if io is not None:
        best["io"] = {
            "tasks": 200,
            "seconds": 1.0,
            "tasks_per_s": io,
            "publish_per_s": io * 2,
            "worker_cpu_us_per_task": cpu,
        }
    return {
        "about": f"TEST DATA {version}",
        "worker_noop": "",
        "worker_io": "",
        "venv": "",
        "pins": [],
        "rounds": [{"round": 1, "loadavg_1m_before": 1.5, "failed_attempts": []}],
        "version": version,
        "best": best,
        "figures": {},
    }


PEERS_OUTPUT = {  # bench/peers.py --json PATH
    "meta": {
        "tasks": 500,
        "io_tasks": 200,
        "latency_samples": 100,
        "ping_samples": 500,
        "rounds": 1,
        "url": "redis://127.0.0.1:6379/11",
        "cpus": 2,
        "python": "3.11.7",
        "started": 0,
        "seconds": 60.0,
        "command": "bench/peers.py --quick --rounds 1 --json p.json",
    },
    "redis_ping": {"client": "redis-py", "p50_ms": 0.05, "p99_ms": 0.2, "rounds": []},
    "redis_ping_ours": {"client": "valkey-py", "p50_ms": 0.04, "p99_ms": 0.1,
                        "queue_p50_ms": 0.125, "queue_p99_ms": 0.3, "rounds": []},
    "results": {
        "ours": _peer("0.1.0", 2000.0, 100.0, 1.0, 900.0),
        "ours-async": _peer("0.1.0", 1800.0, 110.0, 1.5, None),
        "dramatiq": _peer("2.2.1", 1000.0, 300.0, 2.0, 450.0),
        "newcomer": {"about": "TEST DATA", "rounds": [], "error": "venv set-up failed"},
    },
    "ratios": {},
}

COMMIT_A = {
    "sha": "a" * 40,
    "short": "aaaaaaa",
    "date": "2026-01-01T10:00:00Z",
    "subject": "TEST DATA one",
    "dirty": False,
    "changed_files": [],
}
COMMIT_B = {
    "sha": "b" * 40,
    "short": "bbbbbbb",
    "date": "2026-01-02T10:00:00Z",
    "subject": "TEST DATA two",
    "dirty": False,
    "changed_files": [],
}


def _machine(machine_id: str) -> dict:
    return {
        "id": machine_id,
        "cpu_model": "TEST CPU",
        "cores": 2,
        "python": "3.11.7",
        "redis": "7.0.15",
        "os": "Linux",
    }


# --- record.py -----------------------------------------------------------------------------------


def test_compare_output_becomes_one_benchmark_per_configuration_with_unknown_ones_kept():
    kind, benchmarks, peers = record.convert(COMPARE_OUTPUT)
    assert (kind, peers) == ("compare", None)
    ours = benchmarks["compare: celery-asyncio sync noop, 1 loop + 4 sync workers"]
    assert ours["ours"] is True
    assert ours["metrics"] == {
        "tasks": 3000,
        "tasks_per_s": 1900.0,
        "publish_per_s": 5000.0,
        "cpu_us_per_task": 110.0,
        "p50_ms": 1.1,
        "p99_ms": 2.7,
    }
    assert ours["info"]["worker"] == "--loop-workers 1 --sync-workers 4"
    assert benchmarks["compare: upstream Celery threads c=8"]["ours"] is False
    assert benchmarks["compare: some future configuration"]["metrics"] == {
        "tasks_per_s": 10.0,
        "brand_new_metric": 7.0,
    }


def test_peers_output_becomes_benchmarks_per_workload_and_a_peer_table():
    kind, benchmarks, peers = record.convert(PEERS_OUTPUT)
    assert kind == "peers"
    assert benchmarks["peers: noop / dramatiq"]["metrics"]["tasks_per_s"] == 1000.0
    assert benchmarks["peers: latency / ours"]["metrics"]["p99_ms"] == 3.0
    assert benchmarks["peers: io / ours"]["ours"] is True
    assert "peers: io / ours-async" not in benchmarks  # no I/O run: nothing invented
    table = peers["implementations"]
    assert table["dramatiq"]["figures"]["noop"]["cpu_us_per_task"] == 300.0
    assert table["newcomer"]["error"] == "venv set-up failed"
    assert peers["meta"]["command"].startswith("bench/peers.py")
    assert peers["redis_ping"] == {"client": "redis-py", "p50_ms": 0.05, "p99_ms": 0.2}
    assert peers["redis_ping_ours"] == {"client": "valkey-py", "p50_ms": 0.04, "p99_ms": 0.1,
                                        "queue_p50_ms": 0.125, "queue_p99_ms": 0.3}


def test_peers_flat_figures_are_read_when_best_is_missing():
    data = {
        "results": {
            "arq": {
                "version": "0.28",
                "figures": {
                    "noop_tasks_per_s": 300.0,
                    "io_tasks_per_s": None,
                    "latency_p50_ms": 4.0,
                },
            }
        }
    }
    _, benchmarks, _ = record.convert(data)
    assert benchmarks["peers: noop / arq"]["metrics"] == {"tasks_per_s": 300.0}
    assert benchmarks["peers: latency / arq"]["metrics"] == {"p50_ms": 4.0}


def test_unrecognised_json_is_refused():
    with pytest.raises(ValueError):
        record.convert({"hello": "world"})


def test_records_of_one_commit_and_machine_merge_into_one_file(tmp_path):
    first = record.build_record(
        COMPARE_OUTPUT, "python bench/compare.py --json", COMMIT_A, _machine("m1")
    )
    second = record.build_record(
        PEERS_OUTPUT, "python bench/peers.py --json p.json", COMMIT_A, _machine("m1")
    )
    assert record.record_path(first, tmp_path) == record.record_path(second, tmp_path)
    assert record.record_path(first, tmp_path).name == "20260101T100000Z_aaaaaaa_m1.json"
    merged = record.merge(first, second)
    assert [run["kind"] for run in merged["runs"]] == ["compare", "peers"]
    assert [run["command"] for run in merged["runs"]] == [
        "python bench/compare.py --json",
        "python bench/peers.py --json p.json",
    ]
    assert "compare: upstream Celery threads c=8" in merged["benchmarks"]
    assert "peers: noop / ours" in merged["benchmarks"]
    assert merged["peers"]["implementations"]["ours"]["version"] == "0.1.0"
    assert merged["schema"] == record.SCHEMA


def test_json_is_found_after_other_output_and_json_option_is_read():
    assert record.parse_json_output('pip says {hi}\n{"a": {"tasks_per_s": 1}}\n') == {
        "a": {"tasks_per_s": 1}
    }
    assert record.json_option(["python", "bench/peers.py", "--json", "out.json"]) == "out.json"
    assert record.json_option(["python", "bench/compare.py", "--json", "--tasks", "5"]) is None
    assert record.json_option(["x", "--json=o.json"]) == "o.json"


# --- render.py -----------------------------------------------------------------------------------


class _Checker(HTMLParser):
    """Collects tags; fails on a closing tag that does not match the open one."""

    VOID = {"meta", "br", "link", "img", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def history(tmp_path):
    """Three synthetic records: two commits on machine m1, the second commit on m2 too."""
    folder = tmp_path / "history"
    folder.mkdir()
    for commit, machine, scale in (
        (COMMIT_A, "m1", 1.0),
        (COMMIT_B, "m1", 1.1),
        (COMMIT_B, "m2", 0.8),
    ):
        compare = {
            k: {**v, "tasks_per_s": v["tasks_per_s"] * scale} for k, v in COMPARE_OUTPUT.items()
        }
        rec = record.build_record(compare, "TEST DATA", commit, _machine(machine))
        if machine == "m1":
            rec = record.merge(
                rec, record.build_record(PEERS_OUTPUT, "TEST DATA", commit, _machine(machine))
            )
        record.record_path(rec, folder).write_text(record.dumps(rec))
    (folder / "broken.json").write_text("{not json")
    return folder


def test_dashboard_is_well_formed_with_one_svg_per_chart_and_a_series_per_machine(
    history, tmp_path
):
    out = tmp_path / "dashboard.html"
    render.main(["--history", str(history), "--out", str(out)])
    page = out.read_text()
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")

    svgs = [attrs for tag, attrs in checker.starts if tag == "svg"]
    assert all(a.get("class") == "chart" and a.get("role") == "img" for a in svgs)
    records = render.load_records(history)
    assert len(records) == 3  # the broken file is skipped
    commits = render.commits_of(records)
    colors = {"m1": "#000", "m2": "#111"}
    expected = sum(
        len(render.benchmark_charts(name, records, commits, colors, "x"))
        for _, items in render.benchmark_groups(records)
        for name, _ in items
    )
    assert len(svgs) == expected
    # compare benchmarks with all metrics: 3 charts each (throughput, latency, CPU) x 3 configurations,
    # minus latency and CPU for the one without them; peers: noop 2, latency 2, io 2 charts.
    assert expected == 3 + 3 + 1 + 2 * 3 + 2 * 3 + 2 * 2

    polylines = page.count("<polyline")
    assert polylines > 0  # m1 has two commits: lines; m2 has one: a dot
    ours_throughput = render.benchmark_charts(
        "compare: celery-asyncio sync noop, 1 loop + 4 sync workers",
        records,
        commits,
        {"m1": "#000001", "m2": "#000002"},
        "x",
    )[0]
    assert 'stroke="#000001"' in ours_throughput and 'stroke="#000002"' in ours_throughput
    assert "<title>m1</title>" in ours_throughput and "<title>m2</title>" in ours_throughput
    assert "tasks/s" in ours_throughput and "commit (oldest → newest)" in ours_throughput


def test_dashboard_has_the_peer_table_with_ratios_legend_and_measurement_note(history, tmp_path):
    page = render.render(render.load_records(history))
    assert "Latest peer comparison" in page and "dramatiq" in page
    # ours / dramatiq: 2000 / 1000 tasks/s = 2.00x; CPU 300 / 100 = 3.00x; p50 2.0 / 1.0 = 2.00x
    assert '<td class="n good">2.00×</td><td class="n good">3.00×</td>' in page
    assert "failed: venv set-up failed" in page
    assert "Legend:" in page and "machine m2" in page
    assert "2 cores" in page and "Ratios from one run matter" in page
    assert "× best upstream" in page
    assert page.count("<tr>") > 10
    # the floors with our own client library too (the "same client library")
    assert "with our client library (valkey-py): PING p50 0.040 ms, queue p50 0.125 ms" in page
    # and our round trips over it (1.0 and 1.5 ms over 0.125 ms), ours only
    assert "our round-trip p50 over that queue floor: ours 8.00×, ours-async 12.00×." in page


def test_empty_history_renders_a_page_saying_so(tmp_path):
    page = render.render(render.load_records(tmp_path))
    assert "No record holds a bench/peers.py run yet" in page
    assert "<svg" not in page


def test_record_command_line_writes_then_merges_one_file_per_commit_and_machine(tmp_path, capsys):
    compare_json, peers_json = tmp_path / "compare.json", tmp_path / "peers.json"
    compare_json.write_text(json.dumps(COMPARE_OUTPUT))
    peers_json.write_text(json.dumps(PEERS_OUTPUT))
    common = [
        "--history",
        str(tmp_path / "h"),
        "--machine-id",
        "testmach",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]
    with pytest.raises(SystemExit):  # compare.py's JSON does not name its command
        record.main([str(compare_json), *common])
    record.main([str(compare_json), "--command", "TEST DATA compare", *common])
    record.main([str(peers_json), *common])
    [path] = (tmp_path / "h").iterdir()
    assert path.name.endswith("_testmach.json")
    saved = json.loads(path.read_text())
    assert [run["command"] for run in saved["runs"]] == [
        "TEST DATA compare",
        PEERS_OUTPUT["meta"]["command"],
    ]
    assert saved["machine"]["redis"] is None  # nothing listens on port 1
    assert saved["commit"]["sha"] and len(saved["benchmarks"]) == 3 + 8
    capsys.readouterr()
    record.main([str(peers_json), "--dry-run", *common])
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["runs"]) == 3
    assert json.loads(path.read_text()) == saved  # a dry run writes nothing


# --- bench/scaling.py ------------------------------------------------------------------------------


def _point(interp: str, workload: str, threads: int, rate: float, one: float,
           gil: str) -> dict:
    return {
        "interpreter": interp, "workload": workload, "task_cpu_ms": 5.0, "threads": threads,
        "tasks": 100 * threads,
        "tasks_per_s": rate, "median_tasks_per_s": rate * 0.9, "speedup": rate / one,
        "median_speedup": rate / one, "cpu_us_per_task": 5200.0, "elapsed_s": 2.5,
        "worker_gil": gil, "worker_python": "3.13.1", "good_rounds": 2,
        "rounds": [{"round": 1, "tasks_per_s": rate}, {"round": 2, "tasks_per_s": rate * 0.8}],
    }


SCALING_OUTPUT = {  # bench/scaling.py --json PATH
    "meta": {
        "tool": "bench/scaling.py",
        "command": ".venv/bin/python bench/scaling.py --threads 1,2,4 --json s.json",
        "threads": [1, 2, 4],
        "workloads": ["sync-cpu", "async-cpu"],
        "workload_about": {"sync-cpu": "`def` tasks burning 5 ms of CPU",
                           "async-cpu": "`async def` tasks burning 5 ms of CPU"},
        "rounds": 2,
        "statistic": "best",
        "cpus": 4,
        "loadavg_1m_before": 1.0,
        "loadavg_1m_after": 1.5,
    },
    "interpreters": {
        "gil": {"label": "CPython 3.11.7 (GIL build)", "free_threaded": False,
                "gil_enabled": True, "version": "3.11.7"},
        "ft": {"label": "CPython 3.13.1 (free-threaded, GIL off)", "free_threaded": True,
               "gil_enabled": False, "version": "3.13.1"},
    },
    "points": [
        *(_point("gil", w, t, 190.0 * f, 190.0, "on")
          for w in ("sync-cpu", "async-cpu") for t, f in ((1, 1), (2, 1.02), (4, 0.98))),
        *(_point("ft", w, t, 180.0 * f, 180.0, "off")
          for w in ("sync-cpu", "async-cpu") for t, f in ((1, 1), (2, 1.9), (4, 3.6))),
        {"interpreter": "ft", "workload": "noop", "threads": 8, "error": "exit 1: boom"},
    ],
    "pyperf": {},
}


def test_scaling_output_becomes_one_benchmark_per_workload_interpreter_and_threads():
    kind, benchmarks, table = record.convert(SCALING_OUTPUT)
    assert kind == "scaling" and len(benchmarks) == 12  # the failed point is left out
    ft2 = benchmarks["scaling: sync-cpu 5 ms / ft / 2 threads"]
    assert (ft2["suite"], ft2["workload"], ft2["impl"]) == ("scaling", "sync-cpu 5 ms", "ft")
    assert ft2["metrics"]["threads"] == 2 and ft2["metrics"]["speedup"] == 1.9
    assert ft2["info"]["worker_gil"] == "off"
    assert "scaling: async-cpu 5 ms / gil / 1 thread" in benchmarks
    assert table["interpreters"]["ft"]["free_threaded"] is True
    assert table["meta"]["threads"] == [1, 2, 4] and table["workload_about"]["sync-cpu 5 ms"]
    rec = record.build_record(SCALING_OUTPUT, "TEST DATA", COMMIT_A, _machine("m1"))
    assert rec["peers"] is None and rec["scaling"] == table
    merged = record.merge(rec, record.build_record(COMPARE_OUTPUT, "TEST DATA", COMMIT_A,
                                                   _machine("m1")))
    assert merged["scaling"] == table and "compare: upstream Celery threads c=8" in merged[
        "benchmarks"]
    # A sweep of another task size is another set of benchmarks, merged next to the first.
    bigger = json.loads(json.dumps(SCALING_OUTPUT).replace('"task_cpu_ms": 5.0',
                                                           '"task_cpu_ms": 20.0'))
    merged = record.merge(merged, record.build_record(bigger, "TEST DATA", COMMIT_A,
                                                      _machine("m1")))
    assert "scaling: sync-cpu 5 ms / ft / 2 threads" in merged["benchmarks"]
    assert "scaling: sync-cpu 20 ms / ft / 2 threads" in merged["benchmarks"]
    assert set(merged["scaling"]["workload_about"]) == {
        "sync-cpu 5 ms", "async-cpu 5 ms", "sync-cpu 20 ms", "async-cpu 20 ms"}


def test_the_dashboard_charts_speed_up_against_threads_per_workload_with_the_ideal(tmp_path):
    rec = record.build_record(SCALING_OUTPUT, "TEST DATA", COMMIT_A, _machine("m1"))
    rec = record.merge(rec, record.build_record(COMPARE_OUTPUT, "TEST DATA", COMMIT_A,
                                                _machine("m1")))
    folder = tmp_path / "history"
    folder.mkdir()
    record.record_path(rec, folder).write_text(record.dumps(rec))
    records = render.load_records(folder)
    page = render.render(records)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert "Scaling with threads (bench/scaling.py)" in page
    charts = render.scaling_charts(records[0], "s")
    assert len(charts) == 2  # sync-cpu, async-cpu
    sync = next(c for c in charts if ">sync-cpu 5 ms: speed-up" in c)
    assert "worker threads" in sync and "commit (oldest" not in sync
    assert "<title>ft</title>" in sync and "<title>gil</title>" in sync
    assert "<title>ideal</title>" in sync and ">3.6<" in sync  # ft's last value, labelled
    assert "CPython 3.13.1 (free-threaded, GIL off)" in page and "1.90×" in page
    # Not among the charts over commits: they are drawn against threads.
    groups = [heading for heading, _ in render.benchmark_groups(records)]
    assert not any("scaling" in heading for heading in groups)
