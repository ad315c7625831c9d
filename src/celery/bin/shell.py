"""``celery shell`` (a Python shell with the app and its tasks) and ``celery report`` (what
to paste into a bug report), as Celery's."""

from __future__ import annotations

import code
from typing import Any

import click

from .base import CLIContext, user_error

__all__ = ["report", "shell"]


def _namespace(app: Any, with_tasks: bool) -> dict[str, Any]:
    import celery
    from celery import chain, chord, group, signature
    from celery.result import AsyncResult, GroupResult

    names: dict[str, Any] = {
        "app": app, "celery": app, "Celery": celery.Celery, "Task": app.Task,
        "signature": signature, "chain": chain, "group": group, "chord": chord,
        "AsyncResult": AsyncResult, "GroupResult": GroupResult,
    }
    if with_tasks:
        for name, task in app.tasks.items():
            if not name.startswith("celery."):
                names.setdefault(name.rsplit(".", 1)[-1], task)
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ipython", "flavour", flag_value="ipython", help="Use IPython.")
@click.option("--bpython", "flavour", flag_value="bpython", help="Use bpython.")
@click.option("--python", "flavour", flag_value="python", help="Use the plain Python shell.")
@click.option("-T", "--without-tasks", is_flag=True, help="Do not put the app's tasks in "
              "the namespace.")
@click.option("-c", "--command", "command", metavar="CODE",
              help="Run CODE in the shell's namespace and exit.")
@click.pass_obj
def shell(obj: CLIContext, flavour: str | None, without_tasks: bool,
          command: str | None) -> None:
    """A Python shell with the app (``app``, ``celery``), its tasks by their short names,
    and the canvas names (``signature``, ``chain``, ``group``, ``chord``, ``AsyncResult``)."""
    app = obj.app
    app.finalize()
    names = _namespace(app, not without_tasks)
    if command is not None:
        exec(compile(command, "<celery shell -c>", "exec"), names)  # noqa: S102 - the user's code
        return
    if flavour in (None, "ipython"):
        try:
            from IPython import start_ipython  # type: ignore[import-not-found]
        except ImportError:
            if flavour == "ipython":
                raise user_error("--ipython: IPython is not installed") from None
        else:
            start_ipython(argv=[], user_ns=names)
            return
    if flavour == "bpython":
        try:
            import bpython  # type: ignore[import-not-found]
        except ImportError:
            raise user_error("--bpython: bpython is not installed") from None
        bpython.embed(names)
        return
    code.interact(banner=f"celery shell: {app.main or '__main__'} "
                         f"({', '.join(sorted(k for k in names if k[0].islower()))})",
                  local=names, exitmsg="")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_obj
def report(obj: CLIContext) -> None:
    """Versions, platform and the app's broker and backend (passwords masked), to paste
    into a bug report."""
    click.echo(obj.app.bugreport())
