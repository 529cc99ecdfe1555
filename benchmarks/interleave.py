"""Ratios that hold still on a shared machine: time a baseline and its subjects round by round, interleaved.

Timing the baseline in one phase and the subject in another lets a ratio follow the machine's load from one
phase to the next (``nitro_verify``'s cold ratio read 1.08, 1.41 and 2.1 in three runs minutes apart). Here
each round times a short batch of every case, in an order rotated from round to round, so each ratio is taken
within one round, on one machine state, and reported as the median over the rounds with its spread.

    rounds = interleave({"floor": check, "cold": cold}, rounds=30, per_round=10)
    rounds.stats("cold")                                  # p50/p99 over every call of every round
    rounds.ratio("cold", "floor", scale=5)                # per-round ratio of medians: median, min, max
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CPU", "Rounds", "interleave", "interleave_async", "percentiles"]

CPU = time.thread_time_ns
"""This thread's CPU time: the clock for pure computation on a machine shared with other processes."""


def percentiles(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    """``p50_us`` and ``p99_us`` of per-call times in µs."""
    ordered = sorted(values)
    return {
        "p50_us": round(statistics.median(ordered), digits),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], digits),
    }


@dataclass(frozen=True, slots=True)
class Rounds:
    """Per case, the per-call times (µs) of each round, in round order."""

    samples: Mapping[str, list[list[float]]]

    def all(self, name: str) -> list[float]:
        """Every per-call time of ``name``, all rounds together."""
        return [value for one in self.samples[name] for value in one]

    def stats(self, name: str, digits: int = 1) -> dict[str, float]:
        """p50 and p99 of ``name`` over every call of every round."""
        return percentiles(self.all(name), digits)

    def p50(self, name: str) -> float:
        return statistics.median(self.all(name))

    def round_medians(self) -> list[dict[str, float]]:
        """For each round, the median per-call time of every case."""
        count = min(len(rounds) for rounds in self.samples.values())
        return [{name: statistics.median(rounds[i]) for name, rounds in self.samples.items()} for i in range(count)]

    def spread(self, figure: Callable[[Mapping[str, float]], float], digits: int = 2) -> dict[str, float]:
        """``figure`` (of one round's medians) over the rounds: its median, minimum and maximum."""
        values = [figure(medians) for medians in self.round_medians()]
        return {
            "median": round(statistics.median(values), digits),
            "min": round(min(values), digits),
            "max": round(max(values), digits),
        }

    def ratio(
        self, subject: str, baseline: str | Sequence[str], *, scale: float = 1.0, digits: int = 2
    ) -> dict[str, float]:
        """``subject`` over ``scale`` × ``baseline`` (the sum of several cases when a sequence), per round."""
        parts = [baseline] if isinstance(baseline, str) else list(baseline)
        return self.spread(lambda m: m[subject] / (scale * sum(m[part] for part in parts)), digits)


def _order(names: list[str], round_number: int) -> list[str]:
    shift = round_number % len(names)
    return names[shift:] + names[:shift]


def interleave(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    per_round: int,
    batch: int = 1,
    warmup: int = 10,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> Rounds:
    """Time every case ``per_round`` times in each of ``rounds`` rounds, the cases' order rotated each round.

    A sample is the mean time (µs) of ``batch`` consecutive calls (for operations of a few µs, where one call
    is at the clock's resolution). ``warmup`` calls of each case come first and are not kept. ``clock`` is
    wall time by default; pass :data:`CPU` for work that runs entirely on this thread (pure computation), so
    that time spent descheduled on a loaded machine (other processes' turns) is not counted.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_number in range(rounds):
        for name in _order(names, round_number):
            fn, times = cases[name], []
            for _ in range(per_round):
                start = clock()
                for _ in range(batch):
                    fn()
                times.append((clock() - start) / 1000 / batch)
            samples[name].append(times)
    return Rounds(samples)


async def interleave_async(
    cases: Mapping[str, Callable[[], Awaitable[object]]], *, rounds: int, per_round: int, warmup: int = 10
) -> Rounds:
    """:func:`interleave` for coroutine functions (each call awaited on the running loop)."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            await cases[name]()
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_number in range(rounds):
        for name in _order(names, round_number):
            fn, times = cases[name], []
            for _ in range(per_round):
                start = time.perf_counter_ns()
                await fn()
                times.append((time.perf_counter_ns() - start) / 1000)
            samples[name].append(times)
    return Rounds(samples)
