"""The suite's app: bench/benchapp.py's (broker and results at $BENCH_URL), with results that
expire after ten minutes, so a run killed before its clean-up leaves nothing for long."""

from benchapp import app, noop

app.conf.result_expires = 600

__all__ = ["app", "noop"]
