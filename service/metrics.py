"""Prometheus metrics of one app, in its own registry (two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Milliseconds-scale buckets, in seconds: the service's stages run from ~0.1 ms to seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("r4t_requests", "Requests by route, strategy and HTTP status",
                                ["route", "strategy", "status"], registry=self.registry)
        self.stage = Histogram("r4t_stage_seconds", "Time per pipeline stage", ["strategy", "stage"],
                               buckets=BUCKETS, registry=self.registry)
        self.batch_size = Histogram("r4t_batch_size", "Queries per ONNX session run", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self.queue_depth = Gauge("r4t_queue_depth", "Queries waiting for an ONNX run", ["model"],
                                 registry=self.registry)
        self.rejected = Counter("r4t_rejected", "Requests refused with 429 (queue full)", ["strategy"],
                                registry=self.registry)
        self.provider = Gauge("r4t_provider", "1 for the ONNX Runtime provider each model runs on",
                              ["model", "provider"], registry=self.registry)

    def observe_stages(self, strategy: str, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage.labels(strategy, stage).observe(ms / 1e3)
