"""The daemon's live state, shared by the tick loop, the metrics collector and the health checks.

One plain object, passed explicitly (never a module-level singleton): the event loop is its only
writer, and the scrape-time readers tolerate seeing it between two ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from controller.command_book import CommandBook
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from controller.logs import TickSummary
from controller.policy_file import Policy
from policies.decision import Decision, DecisionState, Limits
from policies.fleet import FleetState
from policies.workspace import DecisionWorkspace

#: Tick-duration histogram buckets. Units: s. A tick is budgeted well under its 1 s period.
TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(eq=False, kw_only=True)
class TickStats:
    """A cumulative histogram of tick durations plus counters. Units: s."""

    bucket_counts: NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(TICK_BUCKETS_S) + 1, np.int64)
    )
    duration_sum_s: float = 0.0
    ticks: int = 0
    overruns: int = 0
    last_tick_s: float = float("nan")
    last_tick_monotonic_s: float = float("nan")

    def observe(self, duration_s: float) -> None:
        self.bucket_counts[int(np.searchsorted(TICK_BUCKETS_S, duration_s))] += 1
        self.duration_sum_s += duration_s
        self.ticks += 1


@dataclass(eq=False, kw_only=True)
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_successful: bool = True
    last_success_s: float = float("nan")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemandResponseStatus:
    """Filled by the demand-response source when one runs; exported as metrics. Units: W."""

    active: bool
    target_w: float | None = None
    baseline_w: float | None = None
    shortfall_w: float | None = None
    compliance_ratio: dict[str, float] = field(default_factory=dict)


@dataclass(eq=False, kw_only=True)
class Runtime:
    """Everything the daemon knows right now. Units in names; times in wall-clock seconds."""

    policy: Policy
    fleet: FleetState
    classes: ClassTable
    ingest: Ingest
    book: CommandBook
    tier_table: NDArray[np.int8]
    limits: Limits
    decision: Decision | None = None
    decision_state: DecisionState | None = None
    #: The decision core's working memory, kept for the fleet's size (`policies.workspace`).
    workspace: DecisionWorkspace | None = None
    stale_rack: NDArray[np.bool_] | None = None
    queue: ConflatingQueue | None = None
    mqtt_connected: bool = False
    mqtt_reconnects: int = 0
    subscribed: bool = False
    ticks: TickStats = field(default_factory=TickStats)
    reloads: ReloadStats = field(default_factory=ReloadStats)
    site_energy_j: float = 0.0
    demand_response: DemandResponseStatus | None = None
    version: str = "0+unknown"
    #: What the periodic INFO summary of the ticks has gathered so far.
    tick_summary: TickSummary = field(default_factory=TickSummary)

    @property
    def backlog(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    def fresh_share(self, now_s: float) -> float:
        """Share of racks with telemetry newer than the stale timeout."""
        n = self.policy.topology.n_racks
        if n == 0:
            return 1.0
        stale = self.fleet.stale_racks(now_s, self.policy.config.control.stale_after_s)
        return float(1.0 - stale.mean())
