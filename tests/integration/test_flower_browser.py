"""Flower 2.2 against our worker, driven in headless Chromium with selenium.

Real processes on Redis database 7: our worker (``celery -A flowerapp worker -E``) and
``celery -A flowerapp flower`` (Flower installed with ``--no-deps`` next to our package, as
docs/monitoring.md says). The browser opens the workers, worker, tasks and task pages and
uses the revoke and rate-limit buttons; their effect is checked on the worker through
remote control. A screenshot of each page goes to ``artifacts/flower/`` (git-ignored).

Needs flower, selenium, ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (ci/setup.sh
installs them): skipped locally without them, failed under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, states
from tests.conftest import IN_CI, flushed_redis_url
from tests.integration.worker_harness import CommandProcess

REDIS_DB = 7
ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
ARTIFACTS = ROOT / "artifacts" / "flower"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WORKER = f"flowerw@{socket.gethostname()}"


def need_browser_stack() -> None:
    """Skip (locally) or fail (CI=true) unless Flower, selenium and Chromium are here."""
    missing = [name for name in ("flower", "selenium", "tornado")
               if importlib.util.find_spec(name) is None]
    missing += [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not missing:
        return
    message = (f"the Flower browser test needs {', '.join(missing)} "
               f"(bash ci/setup.sh installs them)")
    if IN_CI:
        pytest.fail(f"{message} (CI=true: it must not skip)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def until(check: Callable[[], Any], seconds: float = 30.0, every: float = 0.25,
          action: Callable[[], Any] | None = None) -> Any:
    """Poll ``check`` until it returns something true (returned), doing ``action`` between
    polls; the last (false) value after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        if action is not None:
            action()
        time.sleep(every)


@pytest.fixture(scope="module")
def url() -> str:
    need_browser_stack()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # no screenshot from an earlier run
    return flushed_redis_url(REDIS_DB)


@pytest.fixture(scope="module")
def env(url: str) -> dict[str, str]:
    full = dict(os.environ, FLOWERAPP_URL=url, PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
                # Flower's buttons call its /api/...; without auth it needs this to answer.
                FLOWER_UNAUTHENTICATED_API="true")
    for name in ("APP", "BROKER_URL", "RESULT_BACKEND", "CELERY_BROKER_URL"):
        full.pop(name, None)
    return full


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[CommandProcess]:
    # FLOWER_WORKER_PYTHON: another interpreter's celery as the worker (an upstream Celery
    # venv's python, to compare).
    python = os.environ.get("FLOWER_WORKER_PYTHON") or sys.executable
    options = (["--sync-workers", "2"] if python == sys.executable else
               ["-P", "threads", "-c", "2", "--without-gossip", "--without-mingle"])
    proc = CommandProcess([python, "-m", "celery", "-A", "flowerapp", "worker", "-E", "-l", "info",
                           "-n", WORKER, *options], cwd=APPS, env=dict(env, C_FORCE_ROOT="1"))
    try:
        proc.wait_for_line(f"{WORKER} ready", timeout=60)
        yield proc
    finally:
        status = proc.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "worker.log").write_text(proc.output)
        assert status == 0, f"worker exit status {status}:\n{proc.output}"


@pytest.fixture(scope="module")
def flower(env: dict[str, str], worker: CommandProcess) -> Iterator[str]:
    port = free_port()
    proc = CommandProcess([sys.executable, "-m", "celery", "-A", "flowerapp", "flower",
                           f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=3000"],
                          cwd=APPS, env=env)
    try:
        proc.wait_for_line("Visit me at", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        status = proc.stop()
        output = proc.output
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "flower.log").write_text(output)
        assert status == 0, f"flower exit status {status}:\n{output}"
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[Celery]:
    sys.path.insert(0, str(APPS))
    try:
        import flowerapp
    finally:
        sys.path.remove(str(APPS))
    assert flowerapp.URL == url, "flowerapp read another URL than the test's"
    yield flowerapp.app


@pytest.fixture(scope="module")
def browser(flower: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def sent(client: Celery, flower: str) -> dict[str, Any]:
    """One task that succeeds and one that fails, run to their end, after Flower started."""
    add, fail = client.tasks["flowerapp.add"], client.tasks["flowerapp.fail"]
    ok = add.delay(20, 22)
    bad = fail.delay("in the browser test")
    assert ok.get(timeout=30) == 42
    with pytest.raises(ValueError, match="failed on purpose"):
        bad.get(timeout=30)
    return {"ok": ok, "bad": bad}


def page_text(driver: Any, url: str, *expected: str, seconds: float = 30.0,
              shot: str | None = None) -> str:
    """Open ``url`` (again every 2 s) until its text (hidden tabs included) has every
    ``expected`` string; save a screenshot named ``shot``; fail with what the page showed."""

    def text() -> str:
        return " ".join(str(driver.execute_script("return document.body.textContent")).split())

    driver.get(url)
    last = [0.0]

    def reload() -> None:
        if time.monotonic() - last[0] > 2:
            last[0] = time.monotonic()
            driver.get(url)

    found = until(lambda: all(e in text() for e in expected), seconds, action=reload)
    if shot:
        driver.save_screenshot(str(ARTIFACTS / f"{shot}.png"))
    body = text()
    assert found, f"{url} lacks {[e for e in expected if e not in body]}; it shows:\n{body}"
    return body


def toast(driver: Any, expect: str, seconds: float = 15.0) -> str:
    """The text of Flower's latest alert toast once it says ``expect`` (the toast of an
    earlier click may still be the latest for a moment); the last one seen if none does."""
    from selenium.webdriver.common.by import By

    seen = [""]

    def latest() -> bool:
        toasts = driver.find_elements(By.CSS_SELECTOR, ".toast")
        seen[0] = toasts[-1].text if toasts else ""
        return expect in seen[0]

    until(latest, seconds)
    return seen[0]


# -- pages ---------------------------------------------------------------------------------


def test_worker_page_shows_our_worker_through_remote_control(browser, flower, worker):
    body = page_text(browser, f"{flower}/worker/{WORKER}", WORKER, "Worker pool options",
                     "asyncio:loop+threads", "Sync workers 2", shot="worker")
    assert "Error" not in body.split("\n")[0]


def test_workers_page_lists_our_worker_online(browser, flower, worker, sent):
    # The workers page is built from worker events (worker-online, heartbeats).
    from selenium.webdriver.common.by import By

    page_text(browser, f"{flower}/workers", WORKER, shot="workers")
    row = until(lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, "#workers-table tr")
                         if WORKER in r.text], 20)
    assert row, "our worker has no row in the workers table"
    assert "Online" in row[0].text, row[0].text


def test_tasks_page_lists_the_tasks_with_their_states(browser, flower, sent):
    ok, bad = sent["ok"], sent["bad"]
    from selenium.webdriver.common.by import By

    # The ids show with task-received; the states come with the worker's later events.
    page_text(browser, f"{flower}/tasks", ok.id, bad.id, "SUCCESS", "FAILURE", shot="tasks")
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")]
    ok_line = next(row for row in rows if ok.id[:8] in row)
    bad_line = next(row for row in rows if bad.id[:8] in row)
    assert "flowerapp.add" in ok_line and "SUCCESS" in ok_line, ok_line
    assert "flowerapp.fail" in bad_line and "FAILURE" in bad_line, bad_line


def test_task_page_shows_args_and_result(browser, flower, sent):
    ok, bad = sent["ok"], sent["bad"]
    body = page_text(browser, f"{flower}/task/{ok.id}", "flowerapp.add", "SUCCESS", "(20, 22)",
                     "42", shot="task-success")
    assert ok.id in body
    page_text(browser, f"{flower}/task/{bad.id}", "flowerapp.fail", "FAILURE",
              "in the browser test", "failed on purpose", shot="task-failure")


# -- actions -------------------------------------------------------------------------------


def test_revoke_button_revokes_the_task_on_the_worker(browser, flower, client, worker):
    from selenium.webdriver.common.by import By

    task_id = str(uuid.uuid4())
    # Held by the worker until its ETA: the revoke reaches it before it runs.
    held = client.tasks["flowerapp.add"].apply_async((1, 1), countdown=60, task_id=task_id)
    page_text(browser, f"{flower}/task/{task_id}", "flowerapp.add", "RECEIVED")
    browser.find_element(By.ID, "task-revoke").click()
    assert f"Revoked '{task_id}'" in toast(browser, f"Revoked '{task_id}'")
    revoked = until(lambda: task_id in ((client.control.inspect(timeout=2).revoked() or {})
                                        .get(WORKER) or []), 20)
    assert revoked, f"{task_id} not in the worker's revoked list:\n{worker.output[-3000:]}"
    browser.save_screenshot(str(ARTIFACTS / "task-revoked.png"))
    assert until(lambda: held.state == states.REVOKED, 20), held.state


def test_rate_limit_button_sets_the_rate_limit_on_the_worker(browser, flower, client, worker):
    from selenium.webdriver.common.by import By

    page_text(browser, f"{flower}/worker/{WORKER}", "flowerapp.add")
    browser.find_element(By.ID, "worker-tab-limits").click()
    rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "#limits-table tr")
            if r.find_element(By.TAG_NAME, "td").get_attribute("textContent").strip()
            == "flowerapp.add"]
    assert rows, "no flowerapp.add row in the worker page's limits table"
    row = rows[0]
    until(lambda: row.is_displayed(), 5)
    row.find_element(By.CSS_SELECTOR, "input[placeholder='Rate']").send_keys("7")
    row.find_element(By.ID, "task-rate-limit-flowerapp.add").click()
    assert "new rate limit set successfully" in toast(browser, "new rate limit set")
    browser.save_screenshot(str(ARTIFACTS / "worker-rate-limit.png"))
    worker.wait_for_line("New rate limit for tasks of type flowerapp.add: 7", timeout=10)
    registered = client.control.inspect(timeout=2).registered("rate_limit") or {}
    assert "flowerapp.add [rate_limit=7]" in registered.get(WORKER, []), registered


def test_pool_buttons_resize_our_worker(browser, flower, worker, client):
    """Flower's Grow and Shrink buttons (pool_grow/pool_shrink by 1) resize our worker's
    sync threads: checked with ``inspect stats`` after each."""
    from selenium.webdriver.common.by import By

    def threads() -> int:
        stats = client.control.inspect(timeout=2).stats() or {}
        return stats[WORKER]["pool"]["sync-workers"]

    assert threads() == 2
    page_text(browser, f"{flower}/worker/{WORKER}", "Pool size")
    browser.find_element(By.ID, "worker-pool-grow").click()
    assert f"Growing '{WORKER}' worker's pool by 1" in toast(browser, "Growing")
    worker.wait_for_line("Sync threads: 2 -> 3", timeout=10)
    assert threads() == 3
    browser.find_element(By.ID, "worker-pool-shrink").click()
    assert f"Shrinking '{WORKER}' worker's pool by 1" in toast(browser, "Shrinking")
    assert threads() == 2


# -- upstream's Flower ---------------------------------------------------------------------


def test_upstream_flower_lists_our_worker(env, worker, sent):
    """Flower running on upstream Celery (its own venv) sees our worker: online through
    its events, and its stats and queues through remote control."""
    from tests.compat.test_upstream_interop import _upstream_python

    python = _upstream_python()
    if subprocess.run([str(python), "-c", "import flower"], capture_output=True).returncode:
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "flower==2.2.0"],
                                 capture_output=True, text=True, timeout=600)
        if install.returncode:
            message = f"could not install flower into {python}: {install.stderr[-500:]}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
    port = free_port()
    proc = CommandProcess([str(python), "-m", "celery", "-A", "flowerapp", "flower",
                           f"--port={port}", "--address=127.0.0.1"], cwd=APPS,
                          env=dict(env, PYTHONPATH=str(APPS)))
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_for_line("Visit me at", timeout=60)
        status = until(lambda: get_json(f"{base}/api/workers?status=true").get(WORKER), 20)
        assert status is True, f"upstream Flower does not see {WORKER} online:\n{proc.output}"
        info = get_json(f"{base}/api/workers?refresh=true&workername={WORKER}")[WORKER]
        assert info["stats"]["pid"] == worker.proc.pid
        assert [q["name"] for q in info["active_queues"]] == ["celery"]
        # "flowerapp.add [rate_limit=7]" after the rate-limit test: names come first.
        assert "flowerapp.add" in {entry.split(" ")[0] for entry in info["registered"]}
    finally:
        assert proc.stop() == 0, proc.output


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)
