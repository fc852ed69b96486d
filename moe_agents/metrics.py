"""Prometheus metrics of a pipeline, fed from its observer events.

``PipelineMetrics(pipeline)`` registers itself as an observer of ``pipeline`` and keeps the
``moe_agents_*`` series below in a ``prometheus_client`` registry of its own (or the one given).
The HTTP server serves them at ``/metrics``; a library user exposes the same series with
``prometheus_client.start_http_server(port, registry=metrics.registry)`` or ``metrics.render()``.
Needs ``prometheus-client`` (the ``server`` extra).

============================================  ==========================================================
series                                        what
============================================  ==========================================================
``moe_agents_requests_total{status}``         requests by outcome: ``ok`` or the error type
                                              (``InvalidInput``, ``Overloaded``, ``ExpertsFailed``, ...)
``moe_agents_request_seconds``                whole requests (histogram)
``moe_agents_route_seconds``                  routing of answered requests (histogram)
``moe_agents_selected_total{expert,mode}``    experts chosen by the router, by selection mode
``moe_agents_expert_calls_total{expert,       expert calls: ``ok``, ``timeout``, ``unavailable``, ``error``
outcome}``
``moe_agents_expert_seconds{expert}``         expert calls (histogram)
``moe_agents_fallbacks_total{expert}``        experts asked because every selected one failed
``moe_agents_tokens_total{expert,kind}``      tokens, ``kind`` ``prompt`` or ``completion``
``moe_agents_cost_usd_total{expert}``         money spent
``moe_agents_feedback_total``                 feedback scores received
``moe_agents_in_flight``                      requests admitted or waiting now
``moe_agents_breaker_open{backend}``          1 while a backend's circuit breaker is open
============================================  ==========================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import BackendTimeout, BackendUnavailable, ExpertsFailed
from .reliability import GuardedBackend
from .types import Query, Result

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .pipeline import Pipeline

__all__ = ["CONTENT_TYPE", "PipelineMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format's content type."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _prometheus() -> Any:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "moe_agents.metrics needs prometheus-client: pip install 'moe-agents[server]'"
        ) from exc


def _outcome(error: BaseException) -> str:
    if isinstance(error, BackendTimeout):
        return "timeout"
    if isinstance(error, BackendUnavailable):
        return "unavailable"
    return "error"


class PipelineMetrics:
    """The ``moe_agents_*`` Prometheus series of one pipeline (see the module docstring).

    Args:
        pipeline: the pipeline to observe; the metrics register themselves as its observer.
        registry: where the series live (default: a new registry of their own, so that two
            pipelines in one process never clash).
    """

    def __init__(self, pipeline: Pipeline, *, registry: CollectorRegistry | None = None) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = registry if registry is not None else prom.CollectorRegistry()
        self.pipeline = pipeline
        r, buckets = self.registry, _LATENCY_BUCKETS
        self.requests = prom.Counter(
            "moe_agents_requests", "Requests by outcome (ok or the error type).", ["status"], registry=r
        )
        self.request_seconds = prom.Histogram(
            "moe_agents_request_seconds", "Whole requests, in seconds.", buckets=buckets, registry=r
        )
        self.route_seconds = prom.Histogram(
            "moe_agents_route_seconds",
            "Routing of answered requests, in seconds.",
            buckets=buckets,
            registry=r,
        )
        self.selected = prom.Counter(
            "moe_agents_selected", "Experts chosen by the router.", ["expert", "mode"], registry=r
        )
        self.expert_calls = prom.Counter(
            "moe_agents_expert_calls", "Expert calls by outcome.", ["expert", "outcome"], registry=r
        )
        self.expert_seconds = prom.Histogram(
            "moe_agents_expert_seconds", "Expert calls, in seconds.", ["expert"], buckets=buckets, registry=r
        )
        self.fallbacks = prom.Counter(
            "moe_agents_fallbacks", "Experts asked because every selected one failed.", ["expert"], registry=r
        )
        self.tokens = prom.Counter(
            "moe_agents_tokens", "Tokens used, by kind (prompt, completion).", ["expert", "kind"], registry=r
        )
        self.cost = prom.Counter("moe_agents_cost_usd", "Money spent, in USD.", ["expert"], registry=r)
        self.feedback = prom.Counter("moe_agents_feedback", "Feedback scores received.", registry=r)
        in_flight = prom.Gauge("moe_agents_in_flight", "Requests admitted or waiting now.", registry=r)
        in_flight.set_function(lambda: pipeline.admission.in_flight)
        r.register(_BreakerCollector(pipeline, prom))
        pipeline.observe(self)

    def render(self) -> bytes:
        """The series in Prometheus' text format (serve it with ``CONTENT_TYPE``)."""
        return bytes(_prometheus().generate_latest(self.registry))

    async def on_result(self, query: Query, result: Result) -> None:
        self.requests.labels("ok").inc()
        self.request_seconds.observe(result.timings.get("total", 0.0))
        self.route_seconds.observe(result.timings.get("route", 0.0))
        mode = result.selection.mode
        for name in result.selection.experts:
            self.selected.labels(name, mode).inc()
        for name in result.metadata.get("fallbacks", ()):
            self.fallbacks.labels(name).inc()
        for name, answer in result.answers.items():
            self.expert_calls.labels(name, "ok").inc()
            self._usage(
                name, answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.cost_usd
            )
        for name, error in result.errors.items():
            self.expert_calls.labels(name, _outcome(error)).inc()
        for key, seconds in result.timings.items():
            if key.startswith("expert."):
                self.expert_seconds.labels(key.removeprefix("expert.")).observe(seconds)

    async def on_failure(self, error: Exception, seconds: float) -> None:
        self.requests.labels(type(error).__name__).inc()
        self.request_seconds.observe(seconds)
        if isinstance(error, ExpertsFailed):
            for name, cause in error.errors.items():
                self.expert_calls.labels(name, _outcome(cause)).inc()

    async def on_feedback(self, result: Result, score: float) -> None:
        self.feedback.inc()

    def _usage(self, expert: str, prompt: int, completion: int, cost_usd: float) -> None:
        if prompt:
            self.tokens.labels(expert, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(expert, "completion").inc(completion)
        if cost_usd:
            self.cost.labels(expert).inc(cost_usd)


class _BreakerCollector:
    """``moe_agents_breaker_open{backend}``, read from the experts' guards at scrape time."""

    def __init__(self, pipeline: Pipeline, prom: Any) -> None:
        self.pipeline, self.prom = pipeline, prom

    def describe(self) -> list[Any]:
        return [self._family()]

    def collect(self) -> Iterator[Any]:
        family, seen = self._family(), set()
        for expert in self.pipeline.experts.values():
            for backend in expert.backends:
                if isinstance(backend, GuardedBackend) and backend.name not in seen:
                    seen.add(backend.name)
                    family.add_metric([backend.name], 1.0 if backend.breaker.state == "open" else 0.0)
        yield family

    def _family(self) -> Any:
        return self.prom.metrics_core.GaugeMetricFamily(
            "moe_agents_breaker_open", "1 while a backend's circuit breaker is open.", labels=["backend"]
        )
