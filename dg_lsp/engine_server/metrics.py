"""Prometheus metrics of the engine server (its own registry, served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from dg_lsp.engine.scheduler import StepReport

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise here

#: Request outcomes counted in ``dg_engine_requests_total``.
STATUSES = ("ok", "cancelled", "rejected", "invalid", "unauthorized", "unavailable", "error", "too_large")


class EngineMetrics:
    """Queue depth, requests, latency, steps and tokens per forward."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("dg_engine_queue_depth", "Requests waiting for a batch slot", registry=self.registry)
        self.active = Gauge("dg_engine_active_canvases", "Canvases being denoised", registry=self.registry)
        self.requests = Counter(
            "dg_engine_requests", "Completion requests by outcome", ["status"], registry=self.registry
        )
        for status in STATUSES:
            self.requests.labels(status=status)
        self.latency = Histogram(
            "dg_engine_request_seconds",
            "Time from arrival to answer of successful requests",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.forwards = Counter("dg_engine_forwards", "Batched decoder forwards", registry=self.registry)
        self.canvas_steps = Counter(
            "dg_engine_canvas_steps", "Denoising steps summed over canvases (one forward may step many)", registry=self.registry
        )
        self.batch_size = Histogram(
            "dg_engine_batch_size", "Canvases per decoder forward", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=self.registry
        )
        self.forward_seconds = Histogram(
            "dg_engine_forward_seconds",
            "Time of one batched decoder forward (including a batch layout rebuilt before it)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.layout_changes = Counter(
            "dg_engine_batch_layouts", "Batch layouts rebuilt because the canvases of a forward changed", registry=self.registry
        )
        self.layout_copied = Counter(
            "dg_engine_layout_copied_bytes",
            "Prompt KV bytes copied to rebuild batch layouts (zero with the slotted static cache)",
            registry=self.registry,
        )
        self.tokens_per_forward = Histogram(
            "dg_engine_tokens_per_forward",
            "Middle tokens produced per denoising step, per request",
            buckets=(0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=self.registry,
        )

    def on_step(self, report: StepReport) -> None:
        """Record one batched forward (called on the engine thread)."""
        self.forwards.inc()
        self.canvas_steps.inc(report.canvases)
        self.batch_size.observe(report.canvases)
        self.forward_seconds.observe(report.forward_ms / 1000.0)
        if report.layout_ms:
            self.layout_changes.inc()
            self.layout_copied.inc(report.layout_bytes)
