"""The ``celery`` command line without a server: options, app loading, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import celery
from celery.bin.celery import celery as celery_group
from celery.bin.celery import main
from celery.bin.worker import banner
from celery.utils.text import mask_url, pluralize

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "redis://127.0.0.1:1/0"


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m celery ARGS`` in a fresh interpreter (app imports stay out of this one)."""
    full_env = {**os.environ, **(env or {})}
    for name in ("APP", "BROKER_URL", "RESULT_BACKEND", "CONFIG_MODULE"):
        full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "celery", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr in by default
    except TypeError:
        return CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with a few app modules, to run the CLI from."""
    (tmp_path / "flatapp.py").write_text(
        textwrap.dedent("""
        from celery import Celery
        app = Celery("flatapp", broker="redis://127.0.0.1:1/0")
        other = Celery("other", broker="redis://127.0.0.1:1/1")
    """)
    )
    (tmp_path / "oddname.py").write_text(
        textwrap.dedent("""
        from celery import Celery
        my_app = Celery("oddname", broker="redis://127.0.0.1:1/0")
    """)
    )
    (tmp_path / "noapp.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "needsdep.py").write_text("import surely_not_installed_dep\n")
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "celery.py").write_text(
        textwrap.dedent("""
        from celery import Celery
        app = Celery("proj", broker="redis://:secret@127.0.0.1:1/3")

        @app.task
        def hello():
            return "hi"
    """)
    )
    return tmp_path


def describe_app(project: Path, spec: str) -> subprocess.CompletedProcess[str]:
    """Load ``spec`` through the CLI; ``status`` fails on the app's (unreachable) broker
    with an error line naming the broker URL, which tells which app was loaded."""
    return run_cli("-A", spec, "status", "--timeout", "5", cwd=project)


# -- version and help ---------------------------------------------------------------------


def test_version_prints_the_version_banner() -> None:
    result = runner().invoke(celery_group, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == celery.VERSION_BANNER


def test_python_dash_m_celery_prints_the_version(tmp_path: Path) -> None:
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == celery.VERSION_BANNER


def test_subcommand_help_needs_no_app() -> None:
    for command in ("worker", "call", "result", "purge", "status"):
        result = runner().invoke(celery_group, ["-A", "does_not_exist_anywhere", command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage: celery " + command in result.output


def test_main_uses_the_app_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    app = celery.Celery("given", broker="redis://127.0.0.1:1/5", set_as_current=False)
    try:
        with pytest.raises(SystemExit) as info:
            main(["status", "--timeout", "5"], app=app)
    finally:
        app.close()
    assert info.value.code == 1
    assert "Error: broker redis://127.0.0.1:1/5: unreachable" in capsys.readouterr().err


def test_main_exits_like_a_command_line_program() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


# -- app loading --------------------------------------------------------------------------


def test_missing_app_module_is_one_error_line(project: Path) -> None:
    proc = run_cli("-A", "no_such_module_here", "status", cwd=project)
    assert_one_error_line(proc, "no_such_module_here", "not found")


def test_missing_app_attribute_is_one_error_line(project: Path) -> None:
    proc = run_cli("-A", "flatapp:nope", "status", cwd=project)
    assert_one_error_line(proc, "'flatapp'", "no attribute 'nope'")


def test_module_without_an_app_is_one_error_line(project: Path) -> None:
    assert_one_error_line(run_cli("-A", "noapp", "status", cwd=project), "no Celery instance")


def test_error_raised_while_importing_the_app_is_one_error_line(project: Path) -> None:
    assert_one_error_line(
        run_cli("-A", "broken", "status", cwd=project), "RuntimeError", "boom at import"
    )


def test_missing_dependency_of_the_app_names_the_dependency(project: Path) -> None:
    line = assert_one_error_line(run_cli("-A", "needsdep", "status", cwd=project))
    assert "surely_not_installed_dep" in line


@pytest.mark.parametrize(
    ("spec", "port_db"),
    [
        ("flatapp", "127.0.0.1:1/0"),  # the module's `app` attribute
        ("flatapp:other", "127.0.0.1:1/1"),  # module:attr
        ("flatapp.other", "127.0.0.1:1/1"),  # module.attr
        ("oddname", "127.0.0.1:1/0"),  # the only Celery instance in the module
        ("proj", ":**@127.0.0.1:1/3"),  # package -> proj.celery, password masked
    ],
)
def test_app_is_found_like_celery_finds_it(project: Path, spec: str, port_db: str) -> None:
    # Each app points at a distinct unreachable broker; the error line shows which was used.
    line = assert_one_error_line(describe_app(project, spec), "unreachable")
    assert f"redis://{port_db}" in line
    assert "secret" not in line


def test_workdir_changes_directory_before_loading_the_app(project: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = run_cli(
        "--workdir", str(project), "-A", "proj", "status", "--timeout", "5", cwd=elsewhere
    )
    assert_one_error_line(proc, "redis://:**@127.0.0.1:1/3")


def test_broker_option_overrides_the_apps_broker(project: Path) -> None:
    proc = run_cli("-A", "flatapp", "-b", "redis://127.0.0.1:1/7", "status", cwd=project)
    assert_one_error_line(proc, "redis://127.0.0.1:1/7")


def test_config_module_is_read(project: Path) -> None:
    (project / "settings_mod.py").write_text("broker_url = 'redis://127.0.0.1:1/9'\n")
    proc = run_cli("-A", "oddname", "--config", "settings_mod", "status", cwd=project)
    assert_one_error_line(proc, "redis://127.0.0.1:1/9")


# -- user errors --------------------------------------------------------------------------


def test_unreachable_broker_status_is_one_error_line(project: Path) -> None:
    proc = run_cli("-b", UNREACHABLE, "status", cwd=project)
    assert_one_error_line(proc, UNREACHABLE, "unreachable")
    assert proc.stdout == ""


def test_call_with_unknown_broker_scheme_is_one_error_line(project: Path) -> None:
    proc = run_cli("-b", "nats://127.0.0.1:4222", "call", "some.task", cwd=project)
    assert_one_error_line(proc, "'nats'", "redis")


def test_call_with_unreachable_broker_is_one_error_line(project: Path) -> None:
    proc = run_cli("-b", UNREACHABLE, "call", "some.task", cwd=project)
    assert_one_error_line(proc)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--args", "[1,", "not valid JSON"),
        ("--args", '{"a": 1}', "JSON array"),
        ("--kwargs", "[1]", "JSON object"),
        ("--eta", "tomorrow", "ISO 8601"),
    ],
)
def test_call_rejects_bad_arguments_before_connecting(
    option: str, value: str, fragment: str
) -> None:
    # (-b sets CELERY_BROKER_URL in this process, as Celery's CLI does: env= restores it)
    result = runner().invoke(celery_group, ["-b", UNREACHABLE, "call", "t", option, value],
                             env={"CELERY_BROKER_URL": None})
    assert result.exit_code == 1 and "CELERY_BROKER_URL" not in os.environ
    assert result.stderr.startswith("Error: ")
    assert fragment in result.stderr and option in result.stderr


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_worker_log_level_is_case_insensitive(level: str) -> None:
    # A bad pool is reported, not the level: the level was accepted.
    result = runner().invoke(celery_group, ["worker", "-l", level, "-P", "prefork"])
    assert result.exit_code == 2
    assert "--pool" in result.stderr and "--loglevel" not in result.stderr


def test_worker_rejects_an_unknown_log_level() -> None:
    result = runner().invoke(celery_group, ["worker", "-l", "chatty"])
    assert result.exit_code == 2
    assert "'chatty' is not a log level" in result.stderr


@pytest.mark.parametrize("pool", ["prefork", "gevent", "eventlet", "solo"])
def test_worker_rejects_pools_other_than_asyncio(pool: str) -> None:
    result = runner().invoke(celery_group, ["worker", "-P", pool])
    assert result.exit_code == 2
    assert "only has the asyncio pool" in result.stderr


def test_worker_rejects_conflicting_concurrency_options() -> None:
    result = runner().invoke(celery_group, ["worker", "-c", "2", "--sync-workers", "3"])
    assert result.exit_code == 2
    assert "--concurrency" in result.stderr


def test_worker_with_unknown_broker_scheme_is_one_error_line(project: Path) -> None:
    proc = run_cli("-A", "flatapp", "-b", "amqp2://x", "worker", cwd=project)
    assert_one_error_line(proc, "'amqp2'")


# -- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:**@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:**@host/1"),
        ("valkey://host:6379/0", "valkey://host:6379/0"),
        ("redis://user@host", "redis://user@host"),
        ("redis://:a@h1;redis://:b@h2", "redis://:**@h1;redis://:**@h2"),
        ("not a url", "not a url"),
        (None, ""),
    ],
)
def test_mask_url_hides_passwords_only(url: str | None, masked: str) -> None:
    assert mask_url(url) == masked


def test_pluralize() -> None:
    assert [pluralize(n, "queue") for n in (0, 1, 2)] == ["queues", "queue", "queues"]


def test_worker_banner_lists_concurrency_queues_and_user_tasks() -> None:
    app = celery.Celery("bannerapp", broker="redis://:pw@h:6379/0", set_as_current=False)

    @app.task(name="bannerapp.work")
    def work() -> None:
        return None

    class FakeWorker:
        hostname = "w1@example"
        queues = ["high", "low"]

    options = {
        "hostname": "x",
        "queues": None,
        "loop_workers": 2,
        "loop_concurrency": 50,
        "sync_workers": 1,
    }
    text = banner(app, FakeWorker(), options, loglevel=20)
    assert "w1@example" in text
    assert "redis://:**@h:6379/0" in text and ":pw@" not in text
    assert "2 loop workers × 50 + 1 sync worker" in text
    assert "(inline)" not in text
    inline = banner(app, FakeWorker(), {**options, "loop_workers": 1, "loop_inline": True}, 20)
    assert "1 loop worker (inline) × 50 + 1 sync worker" in inline
    assert "high, low" in text
    assert "bannerapp.work" in text
    assert "results:     disabled" in text
