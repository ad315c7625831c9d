"""The performance gate's logic (bench/suite/gate.py): which commit it compares with, and its
verdict on pyperf results. Every figure below is synthetic TEST DATA; nothing is timed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pyperf = pytest.importorskip("pyperf")

SUITE = Path(__file__).resolve().parents[2] / "bench" / "suite"
sys.path.insert(0, str(SUITE))
import common  # noqa: E402
import gate  # noqa: E402
import passes  # noqa: E402
import timing  # noqa: E402
import units  # noqa: E402

# -- base commit ------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
        "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def machine_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The machine's copy of the record, in the test's folder (never the real one)."""
    path = tmp_path / "machine" / "perf-gate-passes.txt"
    monkeypatch.setattr(passes, "MACHINE_RECORD", path)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


def test_a_repository_of_one_commit_has_no_base(repo: Path) -> None:
    commit(repo, "first")
    sha, why = gate.select_base(repo)
    assert sha is None
    assert "no parent" in why


def test_a_repository_without_commits_has_no_base(repo: Path) -> None:
    assert gate.select_base(repo)[0] is None


def test_without_origin_the_base_is_the_parent_commit(repo: Path) -> None:
    first = commit(repo, "first")
    commit(repo, "second")
    assert gate.select_base(repo) == (first, "HEAD~1")


def test_a_branch_is_compared_with_where_it_left_origin_main(tmp_path: Path, repo: Path) -> None:
    commit(repo, "a")
    fork_point = commit(repo, "b")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    commit(clone, "d")
    commit(clone, "e")
    assert gate.select_base(clone) == (fork_point, "the merge base of HEAD and origin/main")


def test_a_fresh_clone_of_main_is_compared_with_its_parent(tmp_path: Path, repo: Path) -> None:
    parent = commit(repo, "a")
    commit(repo, "b")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert gate.select_base(clone) == (parent, "HEAD~1")  # the merge base would be HEAD


def test_a_fresh_clone_of_one_commit_has_no_base(tmp_path: Path, repo: Path) -> None:
    commit(repo, "only")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert gate.select_base(clone)[0] is None


def test_a_given_base_wins_and_a_wrong_one_is_an_error(repo: Path) -> None:
    first = commit(repo, "first")
    commit(repo, "second")
    commit(repo, "third")
    assert gate.select_base(repo, first[:10]) == (first, f"{first[:10]} (given)")
    with pytest.raises(ValueError, match="not a commit"):
        gate.select_base(repo, "no-such-revision")


def test_the_gate_skips_cleanly_when_there_is_no_previous_commit(
        repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, "only")
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    assert gate.main(["--repo", str(repo)]) == 0
    assert "skipped" in capsys.readouterr().err


def test_a_tree_whose_code_is_as_in_the_base_is_not_measured(
        repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "src").mkdir()
    (repo / "src" / "m.py").write_text("x = 1\n")
    git(repo, "add", "src")
    base = commit(repo, "code")
    (repo / "README.md").write_text("docs\n")
    git(repo, "add", "README.md")
    commit(repo, "docs only")
    assert gate.same_code(repo, base)
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    assert gate.main(["--repo", str(repo)]) == 0
    assert "nothing to measure" in capsys.readouterr().err
    (repo / "src" / "m.py").write_text("x = 2\n")  # a change to the code, not committed
    assert not gate.same_code(repo, base)
    git(repo, "checkout", "-q", "--", "src")
    (repo / "src" / "new.py").write_text("y = 1\n")  # an untracked file counts too
    assert not gate.same_code(repo, base)


def test_only_a_failure_that_shows_again_fails_the_gate() -> None:
    slow = verdict(runs_around(1.0), runs_around(1.5))
    same = verdict(runs_around(1.0), runs_around(1.0))
    assert slow.fails and not same.fails
    asked: list[list[str]] = []

    def again(rows: list[gate.Row]):
        def measure(names: list[str]) -> list[gate.Row]:
            asked.append(names)
            return rows
        return measure

    assert gate.confirmed(["micro.x"], again([slow])) == ["micro.x"]  # a regression
    assert gate.confirmed(["micro.x"], again([same])) == []  # a disturbance
    assert asked == [["micro.x"], ["micro.x"]]  # only the failed ones are measured again


# -- the record of passes, and a gate that cannot measure ------------------------------------

KEY = "0123abcd/gil"


def record(path: Path, *lines: tuple[str, str]) -> Path:
    """A record of passes: (key, commit) per line (TEST DATA)."""
    path.write_text(passes.HEADER + "".join(
        passes.Pass(key, sha, "2026-12-06T08:00:00Z", "3.11.7").line() for key, sha in lines))
    return path


def test_the_base_is_the_nearest_ancestor_that_passed_on_this_machine(tmp_path: Path,
                                                                      repo: Path) -> None:
    older = commit(repo, "a")
    newer = commit(repo, "b")
    mine_elsewhere = commit(repo, "c")  # passed on another machine only
    commit(repo, "d")
    git(repo, "checkout", "-q", "-b", "side", older)
    on_a_branch = commit(repo, "a branch HEAD is not on")
    git(repo, "checkout", "-q", "main")
    path = record(tmp_path / "passes.txt", (KEY, newer), (KEY, older), (KEY, on_a_branch),
                  ("ffffffff/gil", mine_elsewhere), (KEY.replace("gil", "ft"), mine_elsewhere),
                  (KEY, "f" * 40))  # a commit this clone does not have
    sha, why = gate.choose_base(repo, None, path, KEY)
    assert sha == newer
    assert why == f"the last commit that passed the gate on {KEY} (passes.txt)"
    # a given base still wins over the record
    assert gate.choose_base(repo, older, path, KEY)[0] == older


def test_without_a_pass_of_this_machine_the_base_is_the_parent_saying_so(tmp_path: Path,
                                                                         repo: Path) -> None:
    first = commit(repo, "a")
    commit(repo, "b")
    path = record(tmp_path / "passes.txt", ("ffffffff/gil", first))
    assert gate.choose_base(repo, None, path, KEY) == (
        first, f"HEAD~1; no pass recorded for {KEY} in passes.txt below HEAD")
    assert gate.choose_base(repo, None, tmp_path / "none.txt", KEY)[0] == first


def test_a_malformed_record_is_refused_naming_its_line(tmp_path: Path, repo: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, "a")
    commit(repo, "b")
    path = tmp_path / "passes.txt"
    path.write_text(passes.HEADER + "3354490b/gil not-a-commit\n")
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    assert gate.main(["--repo", str(repo), "--record", str(path)]) == 2
    assert "passes.txt:3: not a gate pass line" in capsys.readouterr().err


def code_change(repo: Path) -> None:
    """A committed code file, then a change to it in the working tree."""
    (repo / "src").mkdir()
    (repo / "src" / "m.py").write_text("x = 1\n")
    git(repo, "add", "src")
    commit(repo, "code")
    commit(repo, "more")
    (repo / "src" / "m.py").write_text("x = 2\n")


def test_a_base_that_cannot_be_built_fails_the_gate(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code_change(repo)

    def broken(*args: object, **kwargs: object) -> Path:
        raise subprocess.CalledProcessError(1, ["pip", "install"])

    monkeypatch.setattr(gate, "build_base", broken)
    monkeypatch.setattr(gate, "run_rounds", lambda *a, **k: pytest.fail("measured anyway"))
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    assert gate.main(["--repo", str(repo), "--record", str(tmp_path / "p.txt"),
                      "--only", "micro"]) == gate.CANNOT_MEASURE
    err = capsys.readouterr().err
    assert "perf gate: FAILED: could not build the base commit" in err
    assert "pip" in err and not (tmp_path / "p.txt").exists()


def test_redis_down_fails_the_gate_instead_of_dropping_the_end_to_end_units(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code_change(repo)
    monkeypatch.setattr(gate, "build_base", lambda *a, **k: pytest.fail("built anyway"))
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    assert gate.main(["--repo", str(repo), "--record", str(tmp_path / "p.txt"),
                      "--only", "micro,e2e.latency", "--url", "redis://127.0.0.1:1/9"]
                     ) == gate.CANNOT_MEASURE
    err = capsys.readouterr().err
    assert "FAILED: Redis does not answer at redis://127.0.0.1:1/9: e2e.latency cannot run" \
        in err


def test_an_expected_benchmark_that_no_run_measured_fails() -> None:
    rows = gate.decide({}, {}, LIMITS, expected=["e2e.latency.latency_p99"])
    assert [(r.name, r.status, r.fails) for r in rows] == [
        ("e2e.latency.latency_p99", "MISSING", True)]


def fake_rounds(slowdown: float):
    """``run_rounds`` answering six runs per tree of the benchmarks asked for (TEST DATA):
    the working tree ``slowdown`` times the base."""

    def run_rounds(trees, units, profile, only, url, rounds):
        out = {}
        for tree in trees:
            collector = common.Collector(tree)
            factor = slowdown if tree.label == "current" else 1.0
            for values in runs_around(10e-6 * factor):
                collector.add(common.Measured({n: {"values": values, "loops": 1}
                                               for n in gate.expected(units, only)}))
            out[tree.label] = collector
        return out

    return run_rounds


def gate_on(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slowdown: float,
            *args: str) -> int:
    """The gate's decision on ``repo`` with the base build and the measurement stubbed."""
    monkeypatch.setattr(gate, "build_base", lambda *a, **k: Path(sys.executable))
    monkeypatch.setattr(gate, "run_rounds", fake_rounds(slowdown))
    monkeypatch.setattr(passes, "machine_key", lambda free_threaded: KEY)
    monkeypatch.delenv("PERF_GATE_BASE", raising=False)
    return gate.main(["--repo", str(repo), "--record", str(tmp_path / "passes.txt"),
                      "--only", "micro.message_build", "--out", str(tmp_path / "out"), *args])


def test_a_pass_of_a_committed_tree_is_recorded_and_becomes_the_next_base(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code_change(repo)
    assert gate_on(repo, tmp_path, monkeypatch, 1.0) == 0
    assert "not recorded: src, bench/suite, pyproject.toml differ from HEAD" in \
        capsys.readouterr().out
    assert not (tmp_path / "passes.txt").exists()
    git(repo, "commit", "-q", "-a", "-m", "x = 2")
    passed = git(repo, "rev-parse", "HEAD")
    assert gate_on(repo, tmp_path, monkeypatch, 1.0) == 0
    assert f"recorded {passed[:12]} as passed for {KEY}" in capsys.readouterr().out
    assert [(p.key, p.sha) for p in passes.read(tmp_path / "passes.txt")] == [(KEY, passed)]
    commit(repo, "c")
    commit(repo, "d")
    (repo / "src" / "m.py").write_text("x = 3\n")
    git(repo, "commit", "-q", "-a", "-m", "x = 3")
    # a regression fails and is not recorded; the base stays the last commit that passed
    assert gate_on(repo, tmp_path, monkeypatch, 2.0, "--no-confirm") == 1
    out, err = capsys.readouterr()
    assert "FAILED: micro.message_build" in out and "last commit that passed" in out
    assert len(passes.read(tmp_path / "passes.txt")) == 1


def test_a_fresh_clone_takes_its_base_from_the_machines_copy_of_the_record(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, machine_record: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code_change(repo)
    git(repo, "commit", "-q", "-a", "-m", "x = 2")
    passed = git(repo, "rev-parse", "HEAD")
    assert gate_on(repo, tmp_path, monkeypatch, 1.0) == 0
    assert f"and {machine_record}" in capsys.readouterr().out
    assert [p.sha for p in passes.read(machine_record)] == [passed]
    # CI's clone: the committed record has no line for this machine, its copy has
    (tmp_path / "passes.txt").unlink()
    commit(repo, "c")
    (repo / "src" / "m.py").write_text("x = 3\n")
    git(repo, "commit", "-q", "-a", "-m", "x = 3")
    assert gate.choose_base(repo, None, tmp_path / "passes.txt", KEY, machine_record) == (
        passed, f"the last commit that passed the gate on {KEY} (passes.txt or {machine_record})")
    assert gate.choose_base(repo, None, tmp_path / "passes.txt", KEY)[0] != passed


# -- verdicts ---------------------------------------------------------------------------------


def bench(name: str, *runs: list[float]) -> pyperf.Benchmark:
    """A pyperf benchmark of one run per list (TEST DATA)."""
    return pyperf.Benchmark([
        pyperf.Run(values, metadata={"name": name, "unit": "second"}, collect_metadata=False)
        for values in runs
    ])


def runs_around(mean: float, n: int = 6, spread: float = 0.01) -> list[list[float]]:
    """n runs of 3 values each, close to ``mean`` (deterministic TEST DATA)."""
    return [[mean * (1 + spread * ((i % 3) - 1)), mean * (1 + spread * (((i + 1) % 3) - 1)),
             mean] for i in range(n)]


LIMITS = (("info.*", None), ("*", 0.15))


def verdict(base: list[list[float]], current: list[list[float]], name: str = "micro.x") -> gate.Row:
    rows = gate.decide({name: bench(name, *base)}, {name: bench(name, *current)}, LIMITS)
    assert len(rows) == 1
    return rows[0]


def test_the_same_figures_pass() -> None:
    row = verdict(runs_around(10e-6), runs_around(10e-6))
    assert row.status == "same" and not row.fails


def test_a_large_significant_slowdown_fails() -> None:
    row = verdict(runs_around(10e-6), runs_around(15e-6))
    assert row.status == "REGRESSION" and row.fails
    assert row.ratio == pytest.approx(1.5, rel=0.02)


def test_a_significant_slowdown_within_the_threshold_passes() -> None:
    row = verdict(runs_around(10e-6), runs_around(10.5e-6))
    assert row.significant
    assert row.status == "slower" and not row.fails


def test_a_speed_up_passes() -> None:
    row = verdict(runs_around(10e-6), runs_around(6e-6))
    assert row.status == "faster" and not row.fails


def test_a_slowdown_that_is_not_significant_passes() -> None:
    noisy_base = [[10e-6], [30e-6], [10e-6], [30e-6], [10e-6], [30e-6]]
    noisy_current = [[12e-6], [33e-6], [12e-6], [33e-6], [12e-6], [33e-6]]
    row = verdict(noisy_base, noisy_current)
    assert not row.significant and row.status == "same" and not row.fails


def test_slow_runs_from_machine_load_do_not_fail_when_the_best_run_kept_its_speed() -> None:
    base = runs_around(10e-6)
    current = [[10e-6]] * 2 + [[17e-6]] * 4  # two clean runs, four under load
    row = verdict(base, current)
    assert row.mean_ratio is not None and row.mean_ratio > 1.15
    assert row.ratio == pytest.approx(1.0, abs=0.02)
    assert not row.fails


def test_one_run_slowed_down_by_load_does_not_hide_a_regression() -> None:
    base = [[18.8e-6], [19.8e-6], [18.3e-6], [41.8e-6], [19.1e-6], [18.5e-6]]  # one loaded run
    current = [[25.4e-6], [25.6e-6], [27.1e-6], [26.2e-6], [26.1e-6], [25.5e-6]]
    row = verdict(base, current)
    assert row.significant and row.status == "REGRESSION"


def test_the_t_test_compares_equal_numbers_of_the_fastest_runs() -> None:
    base, current = [5.0, 1.0, 2.0, 3.0, 4.0, 6.0], [9.0, 8.0, 7.0, 6.0, 5.0]  # a run failed
    assert gate.samples(base, current) == ([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, 9.0])
    disturbed = [1.0, 1.1, 1.0, 1.2, 1.1, 9.0]
    assert gate.samples(disturbed, base) == ([1.0, 1.0, 1.1, 1.1, 1.2], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert len(gate.samples([1.0] * 3, [2.0] * 3)[0]) == 3


def test_each_run_counts_once_whatever_its_number_of_values() -> None:
    one_run_many_values = bench("micro.x", [10e-6] * 50)
    assert gate.run_figures(one_run_many_values) == [10e-6]
    row = verdict([[10e-6] * 50] * 3, [[20e-6] * 50] * 3)
    assert row.status == "too few runs" and not row.fails


def test_a_benchmark_without_threshold_is_reported_never_failed() -> None:
    row = verdict(runs_around(10e-6), runs_around(20e-6), name="info.p99")
    assert row.status == "info" and not row.fails


def test_a_benchmark_the_working_tree_lost_fails_one_it_gained_passes() -> None:
    base = {"micro.old": bench("micro.old", *runs_around(1e-6))}
    current = {"micro.new": bench("micro.new", *runs_around(1e-6))}
    rows = {r.name: r for r in gate.decide(base, current, LIMITS)}
    assert rows["micro.old"].status == "BROKEN" and rows["micro.old"].fails
    assert rows["micro.new"].status == "new" and not rows["micro.new"].fails


def test_latency_p99_fails_only_past_its_wide_limit() -> None:
    name = "e2e.latency.latency_p99"

    def p99(base_ms: float, current_ms: float) -> gate.Row:
        [row] = gate.decide({name: bench(name, *runs_around(base_ms / 1e3))},
                            {name: bench(name, *runs_around(current_ms / 1e3))})
        return row

    assert p99(2.0, 4.0).status == "slower"  # +100 %: within the A/A noise seen
    assert p99(2.0, 6.0).status == "REGRESSION"  # +200 %


def test_thresholds_take_the_first_matching_glob() -> None:
    assert gate.threshold_for("e2e.latency.latency_p99") == 1.50  # gated, not only reported
    assert gate.threshold_for("micro.json_dumps_args") == dict(gate.THRESHOLDS)["micro.*"]
    assert gate.threshold_for("e2e.noop_sync.time_per_task") == 0.40
    assert gate.threshold_for("e2e.latency.latency_p50") == dict(gate.THRESHOLDS)["e2e.*"]
    assert gate.threshold_for("enqueue.delay") == 1.0
    assert gate.threshold_for("enqueue.adelay_x100") == dict(gate.THRESHOLDS)["enqueue.*"]
    assert gate.threshold_for("unknown.thing") is None


def test_the_report_names_every_benchmark_and_its_verdict() -> None:
    base, current = common.Collector(common.Tree("base", Path("b"))), common.Collector(
        common.Tree("current", Path("c")))
    base.add(common.Measured({"micro.x": {"values": [1e-6, 1e-6], "loops": 8}}))
    current.skipped["micro.x"] = "ChildFailed: exit 1: boom"
    rows = gate.decide(base.benchmarks, current.benchmarks, LIMITS)
    text = "\n".join(gate.report(rows, base, current))
    assert "micro.x" in text and "BROKEN" in text and "boom" in text


# -- the suite's plumbing -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "patterns", "selected"), [
    ("micro.json_dumps_args", [], True),
    ("micro.json_dumps_args", ["micro"], True),
    ("micro.json_dumps_args", ["micro.json_*"], True),
    ("micro.json_dumps_args", ["mic"], False),
    ("e2e.latency.latency_p50", ["e2e.latency"], True),
    ("e2e.mixed_l1s2.time_per_task", ["e2e.mixed"], False),
    ("e2e.mixed_l1s2.time_per_task", ["e2e.mixed*"], True),
    ("enqueue.delay", ["micro", "enqueue"], True),
])
def test_only_selects_by_name_glob_or_dotted_prefix(name: str, patterns: list[str],
                                                      selected: bool) -> None:
    assert timing.matches(name, patterns) is selected


def test_the_gate_runs_micro_enqueue_throughput_and_latency_units() -> None:
    chosen = [u.name for u in units.select(list(gate.GATE_BENCHMARKS))]
    assert chosen == ["micro", "enqueue", "e2e.noop_sync", "e2e.latency"]


def test_a_celery_bench_report_becomes_seconds_per_task() -> None:
    unit = next(u for u in units.UNITS if u.name == "e2e.noop_sync")
    assert isinstance(unit, units.CeleryBenchUnit)
    report = {"throughput_per_s": 2000.0, "cpu_per_task_us": 0.0}  # TEST DATA
    metrics = unit.metrics(report)
    assert metrics == {"e2e.noop_sync.time_per_task": {"values": [0.0005], "loops": 1}}


def test_calibration_doubles_loops_until_a_value_lasts_long_enough() -> None:
    calls: list[int] = []

    def fake(loops: int) -> float:  # pretends each loop takes 1 ms
        calls.append(loops)
        return loops * 0.001

    assert timing.calibrate(fake, 0.016) == 16
    assert calls == [1, 1, 2, 4, 8, 16]


def test_a_benchmark_that_cannot_set_up_is_skipped_with_its_reason() -> None:
    def broken():
        raise ImportError("no module named celery.new_thing")

    out = timing.run_table({"micro.new": broken, "micro.ok": lambda: timing.simple(int)},
                           [], values=2, warmups=0, min_time=0.0)
    assert out["skipped"] == {"micro.new": "ImportError: no module named celery.new_thing"}
    assert len(out["results"]["micro.ok"]["values"]) == 2


def test_a_child_that_overruns_is_stopped_with_the_processes_below_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                      start_new_session=True)
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        time.sleep(120)
    """))
    with pytest.raises(common.ChildFailed, match="no answer"):
        common.run_json([sys.executable, str(script)], dict(os.environ), timeout=3)
    assert not common._alive(int(pid_file.read_text()))
