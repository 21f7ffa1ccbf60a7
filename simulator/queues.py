"""An inference service's request queue: arrivals per tick, prefill then decode, first come first
served, each phase at its own speed; and the queueing delay each tick's requests saw.

One entry per tick holds that tick's arrivals: their prefill and decode work (GPU-seconds at the
top clock) and their weight (requests, or GPU-seconds where a source has no request counts).
Prefill is served in arrival order; an entry's decode may start once its prefill is done, in
arrival order too, so entries complete in order. An entry's queueing delay is the time from the
start of its arrival tick to the start of the tick that finished it (0: served within its tick).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Completed entries are dropped from the front once this many pile up (bounded memory).
_COMPACT_AT = 4096


@dataclass(eq=False)
class ServiceQueue:
    """Work waiting at one service. Units: seconds, GPU-seconds at the top clock."""

    arrival_s: list[float] = field(default_factory=list)
    prefill_left: list[float] = field(default_factory=list)
    decode_left: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    #: First entry not complete, and first entry whose prefill is not done.
    head: int = 0
    prefill_head: int = 0
    #: Delays of completed entries that arrived at t >= 0, with their weights.
    delays_s: list[float] = field(default_factory=list)
    delay_weights: list[float] = field(default_factory=list)
    #: Work not yet served, kept as running totals so reading it costs nothing per tick.
    prefill_open: float = 0.0
    decode_open: float = 0.0

    def push(self, now_s: float, prefill: float, decode: float, weight: float) -> None:
        """This tick's arrivals."""
        if prefill <= 0.0 and decode <= 0.0 and weight <= 0.0:
            return
        self.arrival_s.append(now_s)
        self.prefill_left.append(max(prefill, 0.0))
        self.decode_left.append(max(decode, 0.0))
        self.weight.append(weight)
        self.prefill_open += max(prefill, 0.0)
        self.decode_open += max(decode, 0.0)

    def pending(self) -> tuple[float, float]:
        """(prefill, decode) work not yet served. Units: GPU-seconds at the top clock."""
        return max(self.prefill_open, 0.0), max(self.decode_open, 0.0)

    def serve_prefill(self, budget: float) -> float:
        """Serve up to `budget` of prefill work in arrival order; returns the work served."""
        served = 0.0
        i, n = self.prefill_head, len(self.arrival_s)
        while i < n and budget - served > 1e-12:
            take = min(self.prefill_left[i], budget - served)
            self.prefill_left[i] -= take
            served += take
            if self.prefill_left[i] > 1e-12:
                break
            self.prefill_left[i] = 0.0
            i += 1
        while i < n and self.prefill_left[i] <= 1e-12:
            i += 1  # entries with no prompt work are ready for decode at once
        self.prefill_head = i
        self.prefill_open -= served
        return served

    def serve_decode(self, budget: float, now_s: float) -> float:
        """Serve up to `budget` of decode work of prefilled entries in order; returns the work
        served. Entries finished now record their delay (`now_s` is this tick's start)."""
        served = 0.0
        i = self.head
        while i < self.prefill_head:
            take = min(self.decode_left[i], budget - served)
            self.decode_left[i] -= take
            served += take
            if self.decode_left[i] > 1e-12:
                break
            self.decode_left[i] = 0.0
            if self.arrival_s[i] >= 0.0:
                self.delays_s.append(now_s - self.arrival_s[i])
                self.delay_weights.append(self.weight[i])
            i += 1
        self.head = i
        self.decode_open -= served
        if self.head >= _COMPACT_AT:
            for seq in (self.arrival_s, self.prefill_left, self.decode_left, self.weight):
                del seq[: self.head]
            self.prefill_head -= self.head
            self.head = 0
        return served

    def delays(self, now_s: float) -> tuple[list[float], list[float]]:
        """Delays and weights of every measured entry: finished ones, and unfinished ones at
        least `now_s` - arrival (they are still waiting)."""
        open_d = [now_s - a for a in self.arrival_s[self.head :] if a >= 0.0]
        open_w = [
            w
            for a, w in zip(self.arrival_s[self.head :], self.weight[self.head :], strict=True)
            if a >= 0.0
        ]
        return self.delays_s + open_d, self.delay_weights + open_w


def weighted_quantile(values: list[float], weights: list[float], q: float) -> float:
    """The smallest value with at least `q` of the total weight at or below it."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    if v.size == 0:
        return 0.0
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, q * cum[-1] - 1e-9 * cum[-1]))
    return float(v[order][min(k, v.size - 1)])
