"""Servers' non-GPU power budgeted as measured, per rack, instead of at its peak.

The topology gives every server's non-GPU power (CPUs, fans, NICs: `Level.overhead_w`) at its
peak, and the allocation budgets that whatever the load, so caps stay safe even if every CPU and
fan went flat out at once. What a server draws beside its GPUs follows their load, though: a
GB200 tray draws about two thirds of its 1.6 kW peak with idle GPUs. Budgeted at the peak, the
difference is power no GPU may use, and under a binding limit it shows up as steady gap.

Telemetry gives each rack's metered power (wall side) and its GPUs' power (DC side), so a rack's
non-GPU draw is the meter times the PSU efficiency less its GPUs' sum. Servers are not metered
apart, so only the rack level and the levels above it are budgeted from the measurement; a
server's own limit keeps its peak. Per rack the budgeted non-GPU power is:

- the measurement peak-held (a rise counts at once, a fall decays with `hold_s`), so a quiet
  phase of a synchronous job does not hand out what its compute phase draws;
- plus a margin (`margin_frac` of the rack's peak) for a rise before the controller reacts;
- never above the peak, and the peak itself for a rack that is stale, never heard from, or whose
  reported power is not above its GPUs' (an agent without a rack meter reports its GPUs' sum):
  a rack the controller cannot see is assumed at its worst case.

The allocation then budgets each group at its measured non-GPU power: the plan it fills against
carries the lower overheads (`CappingPlan.with_overhead`), so every limit, the stale racks' kept
caps, the anti-chatter check and lending all see the same figures. Safe caps (`policies.safe_caps`)
still fit every limit at the peak: they hold while the controller is away and nothing is
measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.decision import NonGpuSettings
from policies.demand import hold_demand
from policies.fleet import FleetState
from policies.plan import CappingPlan

FloatArray = NDArray[np.float64]

#: A rack whose measured non-GPU power is at most this share of its peak is taken as unmetered:
#: no powered server draws so little beside its GPUs, while a rack agent without a meter reports
#: its GPUs' sum (nothing beside them) and a half-metered rack (one of two feeds) less still.
UNMETERED_FRAC = 0.01


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class NonGpuBudget:
    """Per level, the non-GPU power each group is budgeted at (as `CappingPlan.overhead_w`), and
    per rack the held measurement the next tick starts from. Units: W (DC side)."""

    overhead_w: tuple[FloatArray, ...]
    held_w: FloatArray


def measured_overhead(
    plan: CappingPlan,
    fleet: FleetState,
    *,
    settings: NonGpuSettings,
    previous_w: FloatArray | None,
    dt_s: float,
    stale_rack: NDArray[np.bool_] | None,
) -> NonGpuBudget:
    """Each group's non-GPU power as measured per rack, held, with margin, at most its peak.

    `previous_w` is the last tick's held measurement per rack (None cold: nothing is held).
    `stale_rack` racks are budgeted at their peak. Units: W, s.
    """
    topo = plan.topology
    k_rack = topo.rack_level
    peak = plan.overhead_w[k_rack]
    gpu_w = plan.up(plan.server_sum(fleet.power_w))[k_rack]
    measured = fleet.rack_power_w * settings.psu_efficiency - gpu_w
    # Not above the unmetered share (NaN included: the comparison is False) means not measured.
    blind = ~(measured > UNMETERED_FRAC * peak)
    if stale_rack is not None:
        blind |= stale_rack
    held = hold_demand(measured, previous_w, dt_s=dt_s, hold_s=settings.hold_s)
    # A blind rack holds its peak, so once it reports again its figure falls from there.
    held = np.where(blind, peak, held)
    estimate = np.minimum(held + settings.margin_frac * peak, peak)
    freed = peak - estimate
    overhead = list(plan.overhead_w)
    overhead[k_rack] = estimate
    levels = topo.levels
    for k in range(k_rack + 1, len(levels)):
        summed = np.bincount(levels[k - 1].parent, weights=freed, minlength=levels[k].size)
        freed = summed.astype(np.float64, copy=False)
        overhead[k] = np.maximum(plan.overhead_w[k] - freed, 0.0)
    return NonGpuBudget(overhead_w=tuple(overhead), held_w=held)
