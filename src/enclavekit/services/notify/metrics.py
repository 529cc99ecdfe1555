"""Prometheus metrics of notify's host parts (each process has its own registry, served on ``/metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "notify_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ingested = Counter(
            "notify_messages_ingested", "Chat messages seen by ingest, by outcome", ["outcome"], registry=r
        )
        self.queued = Counter("notify_notifications_queued", "Notifications published to the queue", registry=r)
        self.queued_recipients = Counter("notify_recipients_queued", "Recipients in queued notifications", registry=r)
        self.delivered = Counter(
            "notify_recipients_delivered", "Recipients delivered (or duplicates of one)", registry=r
        )
        self.failed = Counter(
            "notify_recipients_failed", "Recipients failed for good, by reason", ["reason"], registry=r
        )
        self.retried = Counter("notify_recipients_retried", "Recipients scheduled for another attempt", registry=r)
        self.dead_lettered = Counter("notify_notifications_dead_lettered", "Notifications dead-lettered", registry=r)
        self.tombstones = Counter(
            "notify_subscriptions_tombstoned", "Subscriptions deleted after a tombstone", registry=r
        )
        self.enclave_calls = Counter("notify_enclave_calls", "Enclave batch calls by outcome", ["outcome"], registry=r)
        self.latency = Histogram(
            "notify_ingest_to_delivery_seconds",
            "From ingest to the provider's answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "notify_enclave_batch_seconds", "One enclave batch call", buckets=_LATENCY_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
