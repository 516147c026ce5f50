"""Prometheus metrics named as Triton reports them, in a registry per app."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    success: Counter
    failure: Counter
    inference_count: Counter
    execution_count: Counter
    request_latency: Histogram
    queue_time: Histogram
    compute_time: Histogram
    batch_size: Histogram

    def observe_batch(self, rows: int, queued: float, computed: float) -> None:
        self.execution_count.inc()
        self.inference_count.inc(rows)
        self.queue_time.observe(queued)
        self.compute_time.observe(computed)
        self.batch_size.observe(rows)


def create_metrics() -> ServerMetrics:
    registry = CollectorRegistry()
    return ServerMetrics(
        registry=registry,
        success=Counter("nv_inference_request_success", "Successful inference requests", ["model"], registry=registry),
        failure=Counter("nv_inference_request_failure", "Failed inference requests", ["model", "reason"],
                        registry=registry),
        inference_count=Counter("nv_inference_count", "Inferences performed (batch rows)", registry=registry),
        execution_count=Counter("nv_inference_exec_count", "Model executions (batches run)", registry=registry),
        request_latency=Histogram("nv_inference_request_duration_seconds", "End-to-end request latency",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry),
        queue_time=Histogram("nv_inference_queue_duration_seconds", "Time a batch's oldest request waited",
                             buckets=LATENCY_BUCKETS, registry=registry),
        compute_time=Histogram("nv_inference_compute_infer_duration_seconds", "Model execution time per batch",
                               buckets=LATENCY_BUCKETS, registry=registry),
        batch_size=Histogram("nv_inference_batch_size", "Rows per executed batch", buckets=BATCH_BUCKETS,
                             registry=registry),
    )
