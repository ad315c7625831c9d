"""Capacity planning for ``celery capacity``: the model fitted to a sweep, and its reports."""

from __future__ import annotations

from .model import (
    Candidate,
    LatencyPrediction,
    Point,
    Scaling,
    erlang_c,
    fit_scaling,
    predict_latency,
    recommend,
)

__all__ = [
    "Candidate",
    "LatencyPrediction",
    "Point",
    "Scaling",
    "erlang_c",
    "fit_scaling",
    "predict_latency",
    "recommend",
]
