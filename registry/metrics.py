"""Prometheus metrics of one service process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

METRICS = CollectorRegistry()
REQUESTS = Counter("laminate_http_requests_total", "HTTP requests by route and status",
                   ["method", "route", "status"], registry=METRICS)
LATENCY = Histogram("laminate_http_request_seconds", "HTTP request latency by route",
                    ["route"], registry=METRICS)
REGISTRATIONS = Counter("laminate_card_registrations_total", "Card registrations by outcome",
                        ["outcome"], registry=METRICS)
LOG_SIZE = Gauge("laminate_log_size", "Leaves in the transparency log as last seen",
                 registry=METRICS)
