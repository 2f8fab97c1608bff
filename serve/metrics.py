"""Prometheus metrics of one server: the engine's state, read at scrape time, and per-request
counters and latency histograms."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lowbit.runtime.batching import Snapshot

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector(Collector):
    """Gauges and totals from :meth:`BatchEngine.snapshot` (nothing while the model loads)."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]):
        self.snapshot = snapshot

    def collect(self):
        s = self.snapshot()
        if s is None:
            return
        gauges = {
            "lowbit_requests_running": ("requests admitted to the batch", s.running),
            "lowbit_requests_queued": ("requests waiting for a batch slot or KV pages", s.queued),
            "lowbit_kv_pages_total": ("pages of the KV cache pool", s.kv_pages_total),
            "lowbit_kv_pages_in_use": ("KV pages held by running requests and the prefix cache",
                                       s.kv_pages_in_use),
            "lowbit_prefix_cache_sequences": ("finished sequences kept for prefix reuse",
                                              s.prefix_cache_sequences),
            "lowbit_decode_tokens_per_second": ("aggregate tok/s of the last decode step", s.decode_tok_s),
            "lowbit_prefill_tokens_per_second": ("tok/s of the last prefill chunk", s.prefill_tok_s),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("lowbit_prompt_tokens", "prompt tokens prefilled", value=s.prompt_tokens)
        yield CounterMetricFamily("lowbit_generated_tokens", "tokens sampled", value=s.generated_tokens)


class Metrics:
    """The server's registry (one per app, so tests can run several)."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(snapshot))
        self.requests = Counter("lowbit_requests", "requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.ttft = Histogram("lowbit_time_to_first_token_seconds", "submission to first token",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("lowbit_request_seconds", "submission to last token",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
