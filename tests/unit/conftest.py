"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from .executor_doubles import run as _run

#: ``run(count, expected)``: a started ThreadExecutor of ``count`` threads and its Recorder
#: (done once ``expected`` requests ended); every executor made is stopped after the test.
run = pytest.fixture(_run)
