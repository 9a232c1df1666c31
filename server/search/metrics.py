"""The search service's Prometheus metrics, on ``prometheus_client``.

Each app has its own ``CollectorRegistry`` rather than the library's global one, because
one process may hold several apps (the tests build one per test). Series:

- ``fedsearch_http_requests_total`` and ``fedsearch_http_request_duration_seconds``
  (histogram), labelled ``endpoint``, ``method``, ``status``; ``endpoint`` is the route
  template (``/items/{item_id}``, so item ids never become series), ``unmatched`` when no
  route served the path;
- ``fedsearch_index_items``, ``fedsearch_index_recall_at_10{kind}`` (measured when the
  index was built), ``fedsearch_index_bytes_per_item{kind}`` and
  ``fedsearch_model_info{version,encoder}`` (value 1), read from the serving state at scrape
  time, so they always describe what requests are served by;
- ``fedsearch_query_cache_hits_total``, ``..._misses_total``, ``fedsearch_query_cache_hit_ratio``
  and ``fedsearch_query_cache_entries`` (when the query cache is on);
- ``fedsearch_stage_cpu_seconds_total{stage}``: CPU time spent encoding queries (``encode``),
  searching the index (``search``, including ``refine``: re-scoring a compressed index's
  shortlist on full vectors) and reranking with user vectors (``rerank``). The rest of the
  process's CPU time is HTTP, JSON and the framework.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.search.engine import SearchEngine

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_LABELS = ("endpoint", "method", "status")


class ServingStateCollector:
    """Gauges of the index and adapter version, read from the engine at each scrape."""

    def __init__(self, engine: SearchEngine, encoder_version: str) -> None:
        self._engine = engine
        self._encoder_version = encoder_version

    def collect(self) -> Iterator[Metric]:
        state = self._engine.state
        index = state.catalog.index
        yield GaugeMetricFamily(
            "fedsearch_index_items", "items in the FAISS index", value=index.ntotal
        )
        recall = GaugeMetricFamily(
            "fedsearch_index_recall_at_10",
            "recall@10 of the index against exact search, measured at build time",
            labels=["kind"],
        )
        recall.add_metric([index.info.kind], index.info.recall_at_10)
        yield recall
        size = GaugeMetricFamily(
            "fedsearch_index_bytes_per_item",
            "bytes per item of the index's vector codes and ids",
            labels=["kind"],
        )
        size.add_metric([index.info.kind], index.info.bytes_per_item)
        yield size
        yield from self._query_cache()
        stages = CounterMetricFamily(
            "fedsearch_stage_cpu_seconds",
            "CPU seconds by stage of the search pipeline",
            labels=["stage"],
        )
        stages.add_metric(["encode"], self._engine.query_encoder.encode_cpu_s)
        for stage, seconds in self._engine.stage_cpu_s.items():
            stages.add_metric([stage], seconds)
        stages.add_metric(["refine"], index.refine_cpu_s)
        yield stages
        model = GaugeMetricFamily(
            "fedsearch_model_info",
            "the adapter version being served (value 1)",
            labels=["version", "encoder"],
        )
        model.add_metric([state.model.version, self._encoder_version], 1)
        yield model

    def _query_cache(self) -> Iterator[Metric]:
        cache = self._engine.query_encoder.cache
        if cache is None:
            return
        yield CounterMetricFamily(
            "fedsearch_query_cache_hits", "query texts answered from the cache", value=cache.hits
        )
        yield CounterMetricFamily(
            "fedsearch_query_cache_misses", "query texts encoded", value=cache.misses
        )
        yield GaugeMetricFamily(
            "fedsearch_query_cache_hit_ratio", "hits / (hits + misses)", value=cache.hit_rate
        )
        yield GaugeMetricFamily(
            "fedsearch_query_cache_entries", "encoded query texts held", value=len(cache)
        )


class ServiceMetrics:
    """The registry of one app: request counter and latency histogram, serving gauges."""

    def __init__(self, engine: SearchEngine, encoder_version: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fedsearch_http_requests_total",
            "HTTP requests by endpoint, method and status",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "fedsearch_http_request_duration_seconds",
            "HTTP request latency by endpoint and status",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ServingStateCollector(engine, encoder_version))

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type, in the format the ``Accept`` header asks
        for (the classic text format 0.0.4 unless the scraper asks for another)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class MetricsMiddleware:
    """Counts and times every HTTP request into ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # when the app fails before it starts a response

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(endpoint, scope["method"], status, time.perf_counter() - start)
