"""Prometheus metrics: the module-level instruments every layer records into.

Instruments live in prometheus-client's default registry, once per process,
so the many apps a test session builds share them. Values that belong to one
app (its PostgreSQL pool) are read at scrape time by `render`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase as Metric_
from prometheus_client.registry import Collector

__all__ = [
    "ANSWERS",
    "CONTENT_TYPE",
    "FIRST_TOKEN_SECONDS",
    "HISTORY_BATCH_SIZE",
    "HISTORY_COMMIT_FAILURES",
    "HISTORY_COMMIT_SECONDS",
    "OPEN_STREAMS",
    "RATE_LIMITED",
    "RATE_LIMIT_LOOP_LAG",
    "REDIS_ERRORS",
    "REDIS_UP",
    "REQUESTS",
    "REQUEST_SECONDS",
    "TOKENS",
    "UPSTREAM_ERRORS",
    "UPSTREAM_SECONDS",
    "labelled",
    "observe_request",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# A `_created` series beside every counter and histogram child doubles the series
# scraped, for a timestamp Prometheus's text format does not use.
disable_created_metrics()

# LLM answers stream for minutes; the default buckets stop at 10 s. Many other requests
# (health checks, cached lookups) take under a millisecond.
_LONG_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120, 300
)  # fmt: skip
# Up to a provider's timeout_s default (600 s).
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "relay_http_requests_total",
    "HTTP requests answered, by route pattern, method and status.",
    ("route", "method", "status"),
)
REQUEST_SECONDS = Histogram(
    "relay_http_request_duration_seconds",
    "Time from request to the last byte of the answer, by route pattern.",
    ("route",),
    buckets=_LONG_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "relay_upstream_response_seconds",
    "Time until a provider's response headers arrived.",
    ("upstream", "model"),
    buckets=_WAIT_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "relay_upstream_errors_total",
    "Provider failures relay turned into an error, by upstream and kind (unreachable,"
    " timeout, closed, undecodable, auth, quota, not_found, status_4xx, status_5xx,"
    " not_streamed, cut,"
    " stalled, too_large).",
    ("upstream", "kind"),
)
FIRST_TOKEN_SECONDS = Histogram(
    "relay_time_to_first_token_seconds",
    "Time from request to the first content token sent to the client.",
    ("model",),
    buckets=_WAIT_BUCKETS,
)
OPEN_STREAMS = Gauge("relay_open_streams", "Streams being relayed right now.")
TOKENS = Counter(
    "relay_tokens_total",
    "Tokens relayed, by model and direction (in: prompt, out: completion); estimated"
    ' "true" where the provider reported no usage and relay counts what it charged.',
    ("model", "direction", "estimated"),
)
RATE_LIMITED = Counter(
    "relay_rate_limited_total", "Requests refused by a rate limit, by bucket.", ("bucket",)
)
HISTORY_BATCH_SIZE = Histogram(
    "relay_history_commit_batch_size",
    "History rows written per group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
HISTORY_COMMIT_SECONDS = Histogram(
    "relay_history_commit_seconds",
    "Time one history group commit took.",
    # Far past the usual few ms: a commit that waits on a disk or a lock shows its wait.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HISTORY_COMMIT_FAILURES = Counter(
    "relay_history_commit_failures_total",
    "Complete answers relay could not commit to history (the database failing or too"
    " slow, relay stopping, their conversation or client deleted meanwhile): each counts"
    " once, its client sent an error instead of the answer's end.",
)
ANSWERS = Counter(
    "relay_answers_total",
    "Answers relayed, by final status (complete, cut, cancelled, failed); counted once"
    " each as it ends, after history's verdict: an answer whose commit failed is failed"
    " (see relay_history_commit_failures_total).",
    ("outcome",),
)
REDIS_ERRORS = Counter(
    "relay_redis_errors_total", "Redis commands that failed, the reconnect probes' included."
)
RATE_LIMIT_LOOP_LAG = Counter(
    "relay_rate_limit_loop_lag_total",
    "Rate-limit checks decided in relay's memory alone because relay's own loop was too"
    " busy to send them to Redis in time (Redis stays in use): a loaded instance.",
)
# An alert on the counter alone would clear while Redis stays down.
REDIS_UP = Gauge(
    "relay_redis_up", "1 while relay uses Redis, 0 while it limits rates in-process without it."
)

# Any token is a valid HTTP method; unknown ones share a label so a client
# cannot grow the series without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.cache
def labelled(metric: Metric_, *values: str) -> Any:
    """The child of `metric` for these label values (in declaration order), looked up
    once: every label relay uses takes few values (route patterns, statuses, models)."""
    return metric.labels(*values)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Record one answered request under its route pattern (never the raw path)."""
    method = method if method in _METHODS else "OTHER"
    labelled(REQUESTS, route, method, str(status)).inc()
    labelled(REQUEST_SECONDS, route).observe(seconds)


class PoolCollector(Collector):
    """The PostgreSQL pool's connection counts, read when scraped."""

    def __init__(self, stats: Mapping[str, int]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        # By state, so that a sum over the label is the connections open; the pool's
        # limit is a series of its own.
        family = GaugeMetricFamily(
            "relay_postgres_pool_connections",
            "PostgreSQL pool connections open, by state (idle, in_use).",
            labels=("state",),
        )
        size, free = self._stats.get("size", 0), self._stats.get("free", 0)
        family.add_metric(("idle",), free)
        family.add_metric(("in_use",), size - free)
        yield family
        yield GaugeMetricFamily(
            "relay_postgres_pool_max_connections",
            "The most connections the PostgreSQL pool opens (RELAY_DATABASE_POOL_SIZE).",
            value=self._stats.get("max", 0),
        )


def render(pool_stats: Mapping[str, int] | None = None) -> bytes:
    """The Prometheus text exposition of the process's metrics and this app's pool."""
    text = generate_latest(REGISTRY)
    if pool_stats is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PoolCollector(pool_stats))
        text += generate_latest(registry)
    return text
