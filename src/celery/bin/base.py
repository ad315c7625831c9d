"""What every command shares: finding the app, the CLI context, turning errors into one line."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeGuard

import click

from ..exceptions import CeleryError

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = [
    "AppLoadError",
    "CLIContext",
    "CeleryCommand",
    "CeleryGroup",
    "find_app",
    "user_error",
]


class AppLoadError(click.ClickException):
    """The ``-A/--app`` value does not lead to a Celery application."""


def user_error(message: str) -> click.ClickException:
    """A ClickException whose message fits on one line (click prints ``Error: <message>``)."""
    return click.ClickException(" ".join(str(message).split()))


def _is_app(obj: Any) -> TypeGuard[Celery]:
    from ..app.base import Celery

    return isinstance(obj, Celery)


def _load_error(name: str, exc: BaseException) -> AppLoadError:
    if (
        isinstance(exc, ModuleNotFoundError)
        and exc.name
        and (name == exc.name or name.startswith(exc.name + "."))
    ):
        return AppLoadError(
            f"Unable to load celery application: the module {exc.name!r} was not found "
            f"(current directory: {os.getcwd()})"
        )
    return AppLoadError(
        f"Unable to load celery application: importing {name!r} raised {type(exc).__name__}: {exc}"
    )


def _import_module(name: str) -> ModuleType:
    """Import ``name``; AppLoadError when it does not exist or fails while importing."""
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise _load_error(name, exc) from exc


def _app_in_module(module: ModuleType, name: str) -> Celery:
    """The app a module holds: its ``app`` or ``celery`` attribute, else (for a package)
    the one in ``<package>.celery``, else the first Celery instance among its globals."""
    for attr in ("app", "celery"):
        value = getattr(module, attr, None)
        if _is_app(value):
            return value
    if hasattr(module, "__path__"):
        # ``-A proj`` finds the app in ``proj/celery.py``, the usual project layout.
        submodule = f"{name}.celery"
        try:
            found = importlib.import_module(submodule)
        except ModuleNotFoundError as exc:
            if exc.name != submodule:
                raise _load_error(submodule, exc) from exc
        except Exception as exc:
            raise _load_error(submodule, exc) from exc
        else:
            return _app_in_module(found, submodule)
    for value in vars(module).values():
        if _is_app(value):
            return value
    raise AppLoadError(
        f"Unable to load celery application: module {name!r} has no Celery instance "
        f"(looked for an attribute named 'app' or 'celery', then any Celery instance)"
    )


def _app_attribute(module: ModuleType, module_name: str, attr: str, spec: str) -> Celery:
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(
            f"Unable to load celery application: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if isinstance(value, ModuleType):
        return _app_in_module(value, value.__name__)
    if not _is_app(value):
        raise AppLoadError(
            f"Unable to load celery application: {spec!r} is not a Celery instance "
            f"(it is {type(value).__module__}.{type(value).__qualname__})"
        )
    return value


def find_app(spec: str) -> Celery:
    """The Celery app named by ``-A``: ``module``, ``module:attr`` or ``module.attr``.

    For a module, its ``app`` or ``celery`` attribute is used if it is a Celery instance,
    else (for a package) ``<package>.celery`` is tried, else the first Celery instance found
    in the module. The caller puts the current directory on ``sys.path`` first.
    """
    module_name, colon, attr = spec.partition(":")
    if colon:
        return _app_attribute(_import_module(module_name), module_name, attr, spec)
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name != spec or "." not in spec:
            raise _load_error(spec, exc) from exc
        # Not a module: read ``module.attr``.
        module_name, _, attr = spec.rpartition(".")
        return _app_attribute(_import_module(module_name), module_name, attr, spec)
    except Exception as exc:
        raise _load_error(spec, exc) from exc
    return _app_in_module(module, spec)


class CLIContext:
    """Options of the ``celery`` group, and the app, loaded on first use.

    Commands get it as ``ctx.obj``; loading late lets ``celery worker --help`` work
    without an importable app.
    """

    def __init__(
        self,
        app: Celery | None = None,
        app_spec: str | None = None,
        broker: str | None = None,
        result_backend: str | None = None,
        config: str | None = None,
        quiet: bool = False,
    ) -> None:
        self._app = app
        self._owns_app = app is None
        self._configured = False
        self.app_spec = app_spec
        self.broker = broker
        self.result_backend = result_backend
        self.config = config
        self.quiet = quiet

    @property
    def app(self) -> Celery:
        if self._app is None or not self._configured:
            self._app = self._configure(self._app or self._find())
            self._configured = True
        return self._app

    def _find(self) -> Celery:
        from .._state import get_current_app, set_default_app

        # As with ``python -m``: modules next to where the command runs are importable.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        app = find_app(self.app_spec) if self.app_spec else get_current_app()
        set_default_app(app)
        return app

    def _configure(self, app: Celery) -> Celery:
        if self.config:
            app.config_from_object(self.config)
        # Command-line URLs win over the app's own settings, as in Celery; as Celery's CLI,
        # the environment variables (which win over the app's settings, Settings.apply_env)
        # carry them into the processes this command starts too.
        if self.broker:
            os.environ["CELERY_BROKER_URL"] = app.conf.broker_url = self.broker
        if self.result_backend:
            os.environ["CELERY_RESULT_BACKEND"] = app.conf.result_backend = self.result_backend
        return app

    def echo(self, message: str = "") -> None:
        """Print to stdout unless ``--quiet``."""
        if not self.quiet:
            click.echo(message)

    def close(self) -> None:
        """Close the app's connections if this context loaded it (not one handed to main())."""
        if self._owns_app and self._app is not None:
            self._app.close()


class CeleryCommand(click.Command):
    """Base class for a ``celery`` subcommand (Celery's name, used by plugins like Flower).

    A plain click command: ``ctx.obj`` is the ``CLIContext`` (``ctx.obj.app`` loads the
    app given by ``-A``), and the group turns library errors into one ``Error:`` line.
    """


class CeleryGroup(click.Group):
    """The ``celery`` group: library errors a user can fix become one ``Error:`` line.

    Commands it does not have itself come from the ``celery.commands`` entry points
    (bin/plugins.py), imported on first use.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .plugins import plugin_entry_points

        return sorted(set(super().list_commands(ctx)) | set(plugin_entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        from .plugins import load_plugin, plugin_entry_points

        entry_point = plugin_entry_points().get(cmd_name)
        if entry_point is None:
            return None
        command = load_plugin(entry_point)
        self.add_command(command, cmd_name)  # load once
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from ..exceptions import TimeoutError as CeleryTimeoutError

        try:
            return super().invoke(ctx)
        except CeleryTimeoutError as exc:
            raise user_error(f"timed out: {exc}" if str(exc) else "timed out") from exc
        except CeleryError as exc:
            raise user_error(str(exc) or type(exc).__name__) from exc
