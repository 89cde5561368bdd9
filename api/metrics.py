"""Prometheus metrics of one app, in its own registry so several apps can live in one process."""

import time
from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.view_cache import ViewCache

# A path that matched no route is counted under one label: raw paths would explode cardinality.
UNMATCHED = "<unmatched>"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "presence_api_requests",
            "HTTP requests by route template, method and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "presence_api_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["method", "route"],
            registry=self.registry,
        )
        self.status_ids = Histogram(
            "presence_api_status_ids",
            "Restaurant ids asked per status request",
            buckets=(1, 10, 100, 1000, 5000, 10_000),
            registry=self.registry,
        )
        self.statuses = Counter(
            "presence_api_statuses",
            "Statuses answered, by how: served from a standing view or derived (core/status_view.py)",
            ["source"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: the router writes the matched route into the shared scope dict."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app raises before starting a response
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> ApiMetrics:
    """Count every HTTP request of `app`; the `/metrics` route (routes/health.py) renders them."""
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics


class ViewCacheCollector(Collector):
    """The API's copy of status views' facts (core/view_cache.py), read when scraped."""

    def __init__(self, cache: ViewCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        c = self.cache
        counters = (
            ("hits", c.hits, "statuses whose view facts came from the copy"),
            ("fills", c.fills, "view facts read from Redis and kept"),
            ("invalidated", c.invalidated, "view facts dropped because Redis reported a change"),
            ("resets", c.resets, "times tracking ended and the copy was emptied"),
            ("sync_timeouts", c.sync_timeouts, "batches that read Redis because the copy's PING was late"),
        )
        for name, value, text in counters:
            yield CounterMetricFamily(f"presence_api_view_cache_{name}", text, value=value)
        yield GaugeMetricFamily("presence_api_view_cache_entries", "restaurants in the copy", value=len(c))
        yield GaugeMetricFamily("presence_api_view_cache_tracking", "1 while the copy is kept", value=int(c.tracking))
