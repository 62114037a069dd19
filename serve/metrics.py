"""Prometheus metrics of one server: requests, latency, verdicts, rejections.

Each app owns its registry (no process-global state, so tests can build many apps). With
``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds up every worker.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The counters and histogram; :meth:`render` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sdmark_serve_requests", "HTTP requests by route and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("sdmark_serve_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.verdicts = Counter("sdmark_serve_verdicts", "Verified images by verdict (watermarked, unmarked, error)",
                                ["verdict"], registry=self.registry)
        self.rejections = Counter("sdmark_serve_rejections", "Requests refused before or instead of verification, by reason",
                                  ["reason"], registry=self.registry)

    def count_reports(self, reports: list[dict[str, Any]]) -> None:
        for report in reports:
            verdict = "error" if report.get("error") else ("watermarked" if report.get("watermarked") else "unmarked")
            self.verdicts.labels(verdict=verdict).inc()

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)
