"""``celery worker``'s metrics options (``--metrics-port``/``--metrics-host``): which port each
process serves, the supervisor's check of those ports, the banner's line."""

from __future__ import annotations

from typing import Any

from .base import user_error

__all__ = ["metrics_line", "metrics_options", "probe_metrics_ports"]


def metrics_options(conf: Any, port: int | None, host: str | None, slot: Any,
                    processes: int | None) -> dict[str, Any]:
    """The Worker's ``metrics_port``/``metrics_host``: option, else setting. Each process
    of ``--processes N`` is a whole worker with its own endpoint: process i (1 to N) serves
    port + i - 1 (port 0 stays 0: each picks a free port)."""
    if port is None and conf.worker_metrics_port is not None:
        from ..worker.metrics import check_port

        port = check_port(conf.worker_metrics_port)
    index, total = (slot.index, slot.total) if slot is not None else (1, processes or 1)
    if port:
        if port + total - 1 > 65535:
            raise user_error(f"--metrics-port {port}: {total} processes would need ports up "
                             f"to {port + total - 1}, past 65535")
        port += index - 1
    return {"metrics_port": port, "metrics_host": host or conf.worker_metrics_host}


def probe_metrics_ports(options: dict[str, Any], processes: int) -> None:
    """In the supervisor: each process's metrics port can be listened on now, or one line
    (rather than every process failing to start, three times each)."""
    port = options.get("metrics_port")
    if port:
        from ..worker.metrics import probe_port

        for index in range(processes):
            probe_port(options["metrics_host"], port + index)


def metrics_line(options: dict[str, Any], processes: int) -> list[str]:
    """The banner's line on the metrics endpoint, if there is one."""
    port = options.get("metrics_port")
    if port is None:
        return []
    host = options.get("metrics_host") or "127.0.0.1"
    if not port:
        return [f"  metrics:     http://{host}:<any free port>/metrics"]
    ports = f"{port}-{port + processes - 1}" if processes > 1 else str(port)
    return [f"  metrics:     http://{host}:{ports}/metrics"]
