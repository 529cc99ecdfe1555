"""Exponential backoff: how long to wait before the next try. The one copy in the tree; services' settings and
``enclavekit up``'s supervisor call it with their own base, factor and cap."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["exponential_backoff"]


def exponential_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1; 0 and below count as 1).

    ``base * factor ** (attempt - 1)``, never more than ``cap``; with ``jitter`` (a fraction in [0, 1]) the
    result is drawn uniformly from ``[delay * (1 - jitter), delay]``, so pieces that fail together do not
    retry together. ``rng`` returns a float in [0, 1) (injectable for tests).
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], not {jitter}")
    exponent = max(0, attempt - 1)
    try:
        delay = min(cap, base * factor**exponent)
    except OverflowError:  # a huge attempt count: far past the cap
        delay = cap
    return float(delay * (1.0 - jitter * rng()))
