"""``--pidfile``: a file holding the pid of the process that runs, made exclusively (a
second worker with the same pidfile refuses to start) and removed when it exits; one left by
a process that is gone (a crash, kill -9) is replaced, as Celery's."""

from __future__ import annotations

import errno
import os

__all__ = ["Pidfile", "PidfileError", "pid_alive", "read_pid"]


class PidfileError(Exception):
    """The pidfile is held by a running process, or cannot be written."""


def read_pid(path: str) -> int | None:
    """The pid in ``path``; None when there is no such file or it holds no pid."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PidfileError(f"Cannot read the pidfile {path}: {exc}") from None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._written: int | None = None

    def acquire(self) -> None:
        """Write this process's pid to the file, made exclusively.

        Raises:
            PidfileError: a running process holds it (its pid is named), or it cannot be
            written.
        """
        for _ in range(3):  # a stale file removed meanwhile by another starter: again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = read_pid(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise PidfileError(f"The pidfile {self.path} is held by the running "
                                       f"process {pid}: is this worker already running?") \
                        from None
                try:  # stale (its process is gone) or empty: replace it
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise PidfileError(f"Cannot write the pidfile {self.path}: "
                                   f"{os.strerror(exc.errno or errno.EIO)}") from None
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
            self._written = os.getpid()
            return
        raise PidfileError(f"Cannot take the pidfile {self.path}: others keep making it")

    def release(self) -> None:
        """Remove the file if it still holds the pid this process wrote."""
        if self._written is None:
            return
        try:
            if read_pid(self.path) == self._written:
                os.unlink(self.path)
        except (OSError, PidfileError):
            pass
        self._written = None
