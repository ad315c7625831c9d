"""Broker transports: our clients for Redis/Valkey and the embedded brokers."""

from .base import Delivery, Transport
from .registry import TRANSPORTS, transport_for_url

__all__ = ["TRANSPORTS", "Delivery", "Transport", "transport_for_url"]
