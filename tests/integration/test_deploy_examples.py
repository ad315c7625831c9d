"""examples/deploy/: the systemd units are checked by systemd-analyze and their commands run
for real (a worker restarted by ExecReload's SIGHUP, beat), the Dockerfile and the compose
file are parsed and their commands checked against the celery command line."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml

from celery.bin.celery import celery as celery_group

from ..conftest import IN_CI, flushed_redis_url, stop_process

REDIS_DB = 3
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "deploy"


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, eq, value = line.partition("=")
        assert current is not None and eq, f"{name}: not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def check_celery_args(args: list[str]) -> None:
    """``args`` (after ``celery``) parse as the celery command line would: the group's
    options, then the subcommand's, their callbacks run (no app is loaded)."""
    assert args[0] == "-A" and not args[2].startswith("-")
    name = args[2]
    with celery_group.make_context("celery", args[:3]) as ctx:
        command = celery_group.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        command.make_context(name, args[3:], parent=ctx)


def command_of(service: dict[str, list[tuple[str, str]]]) -> tuple[list[str], dict[str, str]]:
    exec_start = shlex.split(values(service["Service"], "ExecStart")[0])
    assert exec_start[0].endswith("/bin/celery")
    env = dict(v.split("=", 1) for v in values(service["Service"], "Environment"))
    return exec_start[1:], env


@pytest.mark.parametrize("name", ["celery-worker.service", "celery-beat.service"])
def test_units_pass_systemd_analyze_verify(name, tmp_path):
    service = unit(name)
    assert values(service["Unit"], "Description") and values(service["Install"], "WantedBy")
    assert values(service["Service"], "KillSignal") == ["SIGTERM"]
    args, env = command_of(service)
    check_celery_args(args)
    assert set(env) <= {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if IN_CI:
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed")
    celery_bin = Path(sys.executable).parent / "celery"
    text = (DEPLOY / name).read_text().replace("/srv/proj/.venv/bin/celery", str(celery_bin))
    text = text.replace("WorkingDirectory=/srv/proj", f"WorkingDirectory={tmp_path}")
    (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


def test_the_worker_unit_runs_reloads_and_stops(tmp_path):
    url = flushed_redis_url(REDIS_DB)
    args, env = command_of(unit("celery-worker.service"))
    reload = values(unit("celery-worker.service")["Service"], "ExecReload")[0]
    assert reload == "/bin/kill -HUP $MAINPID"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(DEPLOY), str(ROOT / "src")]),
               **{k: url for k in env})
    log = tmp_path / "worker.log"  # read while it runs: the restart is waited for
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "celery", *args], cwd=DEPLOY, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    sys.path.insert(0, str(DEPLOY))
    try:
        import proj

        proj.app.conf.broker_url = proj.app.conf.result_backend = url
        assert proj.add.delay(2, 3).get(timeout=60) == 5
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        # Acted on before the tasks below and the SIGTERM at the end: with both pending
        # (a starved machine), the supervisor may take the SIGTERM first, and a reload while
        # stopping is dropped.
        deadline = time.monotonic() + 30
        while "SIGHUP: restarting" not in log.read_text():  # (the supervisor's, or a lone
            assert time.monotonic() < deadline, log.read_text()  # process's on FT)
            time.sleep(0.05)
        assert [proj.add.delay(i, i).get(timeout=60) for i in range(3)] == [0, 2, 4]
        assert proj.heartbeat.delay().get(timeout=30) == "alive"
        assert proc.poll() is None
    finally:
        sys.path.remove(str(DEPLOY))
        stop_process(proc)
        if "proj" in sys.modules:
            sys.modules.pop("proj").app.close()
    assert proc.returncode == 0, log.read_text()


def test_the_beat_unit_runs_and_stops(tmp_path):
    url = flushed_redis_url(REDIS_DB)
    args, env = command_of(unit("celery-beat.service"))
    args = [str(tmp_path / "beat.db") if a.startswith("/var/lib/celery/") else a for a in args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(DEPLOY), str(ROOT / "src")]),
               **{k: url for k in env})
    proc = subprocess.Popen([sys.executable, "-m", "celery", *args], cwd=DEPLOY, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the leader says so once it sends
            seen.append(line)
            if "is the sender now" in line:
                break
        assert proc.poll() is None, "".join(seen)
    finally:
        output = "".join(seen) + stop_process(proc)
    assert proc.returncode == 0, output
    assert (tmp_path / "beat.db").exists()


def dockerfile() -> list[tuple[str, str]]:
    out = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest))
    return out


def test_dockerfile_copies_what_exists_and_runs_a_valid_command():
    instructions = dockerfile()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.")
    for word, rest in instructions:
        assert word in {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "STOPSIGNAL", "CMD"}
        if word == "COPY":
            source = rest.split()[0]
            assert (ROOT / source).exists(), source  # the build context is the checkout
    cmd = yaml.safe_load(dict(instructions)["CMD"])  # a JSON array is YAML too
    assert cmd[0] == "celery"
    check_celery_args(cmd[1:])


def test_compose_file_has_redis_workers_and_beat_with_valid_commands():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "worker", "beat"}
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    for name in ("worker", "beat"):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).exists()
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    check_celery_args(services["beat"]["command"][1:])
    assert services["worker"]["deploy"]["replicas"] == 2
