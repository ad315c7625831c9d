"""Signed messages between upstream Celery and us, both ways (tests/compat/interop/signed.py:
the same app for both, configured with app.setup_security)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import flushed_redis_url
from ..signing_keys import make_signer
from .test_upstream_interop import INTEROP_DIR, REDIS_DB, _env, _upstream_python

pytestmark = pytest.mark.upstream


@pytest.fixture(scope="module")
def upstream_python():
    """Upstream Celery's venv with the cryptography package its signing needs."""
    python = _upstream_python()
    if subprocess.run([str(python), "-c", "import cryptography"]).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "cryptography"], check=True,
                       timeout=600)
    return python


SEND = """
import json
from signed import app
print(json.dumps(app.send_task("signed.add", (20, 22)).get(timeout=30)))
"""


def test_signed_both_ways(upstream_python, tmp_path):
    url = flushed_redis_url(REDIS_DB)
    make_signer(tmp_path, "upstream", trusted=True)
    make_signer(tmp_path, "ours", trusted=True)
    env = dict(_env(url), SIGNED_DIR=str(tmp_path))
    ours = dict(env, PYTHONPATH=os.pathsep.join([str(INTEROP_DIR), env.get("PYTHONPATH", "")]),
                SIGNED_KEY="ours.key", SIGNED_CERT="ours.pem")
    theirs = dict(env, SIGNED_KEY="upstream.key", SIGNED_CERT="upstream.pem")
    for worker_python, worker_env, client_python, client_env in (
            (sys.executable, ours, str(upstream_python), theirs),
            (str(upstream_python), theirs, sys.executable, ours)):
        worker = subprocess.Popen(
            [worker_python, "-m", "celery", "-A", "signed", "worker", "-P", "threads", "-c",
             "2", "-l", "warning", "--without-gossip", "--without-mingle"],
            cwd=INTEROP_DIR, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            sent = subprocess.run([client_python, "-c", SEND], cwd=INTEROP_DIR, env=client_env,
                                  capture_output=True, timeout=120)
        finally:
            worker.terminate()
            output, _ = worker.communicate(timeout=30)
        assert sent.returncode == 0, sent.stderr.decode()[-3000:] + output.decode()[-3000:]
        assert json.loads(sent.stdout) == 42
