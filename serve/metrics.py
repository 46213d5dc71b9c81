"""The service's Prometheus metrics, in a registry of its own (one per app, so several apps can live in a process).

    sammed_request_seconds{method, route, status}   histogram of request latency per route template
    sammed_encode_seconds                           histogram of image encoder time (one per new session)
    sammed_decode_seconds                           histogram of prompt decoder time (one per predict)
    sammed_open_sessions                            gauge
    sammed_rejected_requests_total{reason}          counter: unauthorized, too_large, busy, bad_request, not_found
    sammed_sessions_dropped_total{reason}           counter: lru, ttl, deleted
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Clicks take milliseconds, encodes and uploads up to seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The counters, gauges and histograms of one app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram("sammed_request_seconds", "HTTP request latency by route template",
                                  ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.encode = Histogram("sammed_encode_seconds", "image encoder time per new session", buckets=LATENCY_BUCKETS,
                                registry=self.registry)
        self.decode = Histogram("sammed_decode_seconds", "prompt decoder time per predict", buckets=LATENCY_BUCKETS,
                                registry=self.registry)
        self.open_sessions = Gauge("sammed_open_sessions", "sessions held", registry=self.registry)
        self.rejected = Counter("sammed_rejected_requests", "requests refused, by reason", ("reason",),
                                registry=self.registry)
        self.dropped = Counter("sammed_sessions_dropped", "sessions removed, by reason", ("reason",),
                               registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
