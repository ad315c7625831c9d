"""Commands from the ``celery.commands`` entry points (how Flower plugs into ``celery``).

Each test installs small distributions (a ``*.dist-info`` with ``entry_points.txt``) in a
temporary directory put on ``PYTHONPATH``, so ``importlib.metadata`` finds real entry
points, and runs ``python -m celery`` in a fresh interpreter.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.unit.test_cli import assert_one_error_line, run_cli


def install_plugin(site: Path, dist: str, entry_points: dict[str, str],
                   modules: dict[str, str]) -> None:
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[celery.commands]\n{lines}")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    install_plugin(site, "goodplugin", {"hello": "goodplugin:hello"}, {"goodplugin": """
        import click
        from celery.bin.base import CeleryCommand

        @click.command(cls=CeleryCommand)
        @click.option("--name", default="world")
        @click.pass_context
        def hello(ctx, name):
            '''Say hello, with the app's main name.'''
            click.echo(f"hello {name} from {ctx.obj.app.main}")
    """})
    install_plugin(site, "brokenplugin", {"broken": "brokenplugin:command"}, {"brokenplugin": """
        import surely_not_installed_dependency
    """})
    install_plugin(site, "notacommand", {"oddity": "notacommand:thing"}, {"notacommand": """
        thing = 42
    """})
    install_plugin(site, "shadowplugin", {"worker": "shadowplugin:worker"}, {"shadowplugin": """
        raise RuntimeError("a plugin shadowing a built-in command must not be imported")
    """})
    (tmp_path / "plugapp.py").write_text(
        "from celery import Celery\napp = Celery('plugapp', broker='memory://')\n")
    return site


def run(site: Path, *args: str):
    return run_cli(*args, cwd=site.parent, env={"PYTHONPATH": str(site)})


def test_a_plugin_command_runs_with_the_app_from_dash_a(site: Path) -> None:
    proc = run(site, "-A", "plugapp", "hello", "--name", "flower")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello flower from plugapp"


def test_help_lists_plugins_including_broken_ones_without_failing(site: Path) -> None:
    proc = run(site, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    commands = proc.stdout.split("Commands:", 1)[1]
    assert "hello" in commands and "Say hello" in commands
    assert "broken" in commands and "could not be loaded" in commands
    assert "worker" in commands


def test_a_plugin_that_fails_to_import_gives_one_error_line(site: Path) -> None:
    proc = run(site, "-A", "plugapp", "broken", "--port=5555", "extra")
    line = assert_one_error_line(proc, "'broken'", "brokenplugin:command", "ModuleNotFoundError",
                                 "surely_not_installed_dependency")
    assert "could not be loaded" in line


def test_a_plugin_that_is_not_a_click_command_gives_one_error_line(site: Path) -> None:
    proc = run(site, "oddity")
    assert_one_error_line(proc, "'oddity'", "notacommand:thing", "not a click command")


def test_builtin_commands_work_next_to_a_broken_plugin(site: Path) -> None:
    proc = run(site, "worker", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: celery worker" in proc.stdout  # ours, not shadowplugin's


def test_an_unknown_command_is_still_a_usage_error(site: Path) -> None:
    proc = run(site, "no-such-command")
    assert proc.returncode == 2
    assert "No such command 'no-such-command'" in proc.stderr
