"""Tiny upstream-Celery project used only by gen_fixtures.py (run with the
upstream venv).  Not imported by our own test-suite."""
