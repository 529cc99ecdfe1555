"""The host's protections for the inference enclave, as sans-I/O cores with the clock passed in.

* :class:`TokenBucket` — requests per second with a burst (the reference: 200 rps, burst 400);
* :class:`CircuitBreaker` — opens when at least ``error_ratio`` of at least ``min_requests`` requests in the
  last ``window`` seconds failed, stays open ``open_seconds``, then lets one trial through (half-open);
* :class:`ProtectionSettings` — those numbers and the bound on requests in flight, each configurable.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import StrEnum

from enclavekit.errors import ConfigurationError

__all__ = ["BreakerState", "CircuitBreaker", "ProtectionSettings", "TokenBucket"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtectionSettings:
    rate: float = 200.0
    """Requests per second the token bucket refills."""
    burst: int = 400
    max_in_flight: int = 64
    """Requests forwarded to the enclave and not yet answered, over all connections."""
    max_wait: float = 2.0
    """How long a request may wait for a token or a slot before its connection is closed."""
    error_ratio: float = 0.2
    min_requests: int = 50
    window: float = 10.0
    open_seconds: float = 5.0
    response_timeout: float = 30.0
    """A request unanswered this long counts as a failure of the enclave link."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.max_in_flight < 1 or not 0 < self.error_ratio <= 1:
            raise ConfigurationError(f"inference gateway settings out of range: {self}")
        if self.min_requests < 1 or self.window <= 0 or self.open_seconds <= 0 or self.max_wait < 0:
            raise ConfigurationError(f"inference gateway settings out of range: {self}")


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. Starts full."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now if self.updated is None else max(now, self.updated)

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is there (0 if one is now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """A circuit breaker on the enclave link over a sliding window of outcomes."""

    error_ratio: float
    min_requests: int
    window: float
    open_seconds: float
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    trial_running: bool = False
    outcomes: collections.deque[tuple[float, bool]] = field(default_factory=collections.deque)
    failures: int = 0
    """How many of ``outcomes`` are failures (kept as they come and go: O(1) per request, not a scan of the
    window, which holds thousands of outcomes at the default rate)."""
    times_opened: int = 0

    @classmethod
    def from_settings(cls, settings: ProtectionSettings) -> CircuitBreaker:
        return cls(settings.error_ratio, settings.min_requests, settings.window, settings.open_seconds)

    def is_open(self, now: float) -> bool:
        """Whether the breaker refuses everything now (open, and not yet time for a trial)."""
        return self.state is BreakerState.OPEN and now - self.opened_at < self.open_seconds

    def allow(self, now: float) -> bool:
        """Whether a new request may go to the enclave now (in half-open state: one trial at a time)."""
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
            self.trial_running = False
        if self.state is BreakerState.HALF_OPEN:
            if self.trial_running:
                return False
            self.trial_running = True
        return True

    def record(self, now: float, *, ok: bool) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.trial_running = False
            if ok:
                self.state = BreakerState.CLOSED
                self._forget()
            else:
                self._open(now)
            return
        outcomes = self.outcomes
        outcomes.append((now, ok))
        if not ok:
            self.failures += 1
        while outcomes and now - outcomes[0][0] > self.window:
            if not outcomes.popleft()[1]:
                self.failures -= 1
        if len(outcomes) >= self.min_requests and self.failures >= self.error_ratio * len(outcomes):
            self._open(now)

    def _forget(self) -> None:
        self.outcomes.clear()
        self.failures = 0

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self._forget()
        self.times_opened += 1
