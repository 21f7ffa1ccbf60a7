"""Safe caps: what every GPU may draw when its agent hears nothing, derived from the topology.

An agent whose last command's TTL runs out applies its safe caps on its own. A controller crash,
a broker outage or a network partition makes every agent do so at about the same time, so safe
caps are only safe if ALL of them together fit every limit: each server's, rack's and row's usable
limit (rating x derating, less the non-GPU power drawn inside the group) and the site's contract.
A fixed share of each GPU's max cap does not (0.6 of max left derated racks 22-24 % over their
usable limit), so the caps are derived here, and configured ones are checked here.

Derivation: every GPU starts at its min cap and all rise together towards their max cap, each
the same fraction of its range, until a group's limit stops the GPUs under it (the allocator of
`policies.capping`, every GPU in one tier with its max cap as demand). The result is the highest
uniform-fraction caps that fit: no group is left with room that its GPUs could have taken.

The caps a policy loads with fit its contract. A lower site limit in force (a demand-response
level, the facility's budget on a hot day) is what an outage must respect while it lasts, so
commands carry caps that follow it (`follow_site_limit`): derived again, a step under the limit,
when the ones carried do not fit it, and back to the policy's once those fit again. (The policy's
fit the facility's budget at its design temperature, so only a limit falling under the contract
moves them: a demand-response event's start and end, a ramp's 5 % steps.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.capping import REL_TOL, allocate
from policies.decision import Limits
from policies.plan import CappingPlan
from policies.topology import Topology

FloatArray = NDArray[np.float64]

#: Safe caps that no longer fit the site limit in force are derived for this share under it, so
#: that a ramp down re-derives them (and makes every rack due) at most once per step of it.
FOLLOW_STEP_FRAC = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Overrun:
    """One group that a set of safe caps does not fit. Units: W."""

    level: str
    group: str
    #: GPU safe caps plus non-GPU power inside the group.
    draw_w: float
    #: The group's usable limit (the site's includes the contract and the margin).
    usable_w: float

    def describe(self) -> str:
        return (
            f"{self.level} {self.group}: every GPU on its safe cap draws {self.draw_w:.0f} W, "
            f"over its usable {self.usable_w:.0f} W"
        )


def usable_limits(
    topology: Topology, *, site_limit_w: float | None = None, site_margin_frac: float = 0.0
) -> tuple[FloatArray, ...]:
    """Per level, each group's usable limit; the site's is the lowest of its rating and
    `site_limit_w`, less `site_margin_frac` of it (as the allocation keeps). Units: W."""
    if not 0.0 <= site_margin_frac < 1.0:
        raise ValueError("site_margin_frac must be in [0, 1)")
    usable = [lv.usable_w.astype(np.float64, copy=True) for lv in topology.levels]
    site = float(usable[-1][0])
    if site_limit_w is not None:
        site = min(site, site_limit_w)
    usable[-1] = np.array([site * (1.0 - site_margin_frac)])
    return tuple(usable)


def derive_safe_caps(
    topology: Topology, *, site_limit_w: float | None = None, site_margin_frac: float = 0.0
) -> FloatArray:
    """Per-GPU safe caps that fit every level all at once (see the module). Units: W.

    Where even the min caps do not fit a group, its GPUs get their min cap (no lower cap
    exists); `safe_cap_overruns` then names that group.
    """
    plan = CappingPlan.build(topology)
    usable = usable_limits(topology, site_limit_w=site_limit_w, site_margin_frac=site_margin_frac)
    max_cap = topology.gpu_max_cap_w
    alloc = allocate(
        plan,
        floor_w=topology.gpu_min_cap_w,
        demand_w=max_cap,
        max_w=max_cap,
        tier=np.zeros(topology.n_gpus, dtype=np.int8),
        usable_w=usable,
    )
    # The fill meets a binding limit to within float rounding of its sums, from either side;
    # shaving that rounding off the GPUs a limit held back keeps them at or under every limit
    # (never under the min); GPUs that reached their max cap were held back by nothing.
    cap = alloc.cap_w
    held = cap < max_cap
    cap[held] = np.maximum(cap[held] * (1.0 - 4.0 * REL_TOL), topology.gpu_min_cap_w[held])
    return cap


def configured_safe_caps(topology: Topology, max_cap_frac: float) -> FloatArray:
    """An operator's safe caps, `max_cap_frac` of each GPU's max cap, inside its range. Units: W."""
    return np.clip(
        topology.gpu_max_cap_w * max_cap_frac, topology.gpu_min_cap_w, topology.gpu_max_cap_w
    )


def safe_cap_overruns(
    topology: Topology,
    safe_cap_w: FloatArray,
    *,
    site_limit_w: float | None = None,
    site_margin_frac: float = 0.0,
) -> list[Overrun]:
    """Every group whose GPUs, all on `safe_cap_w` at once, would draw over its usable limit."""
    cap = np.asarray(safe_cap_w, dtype=np.float64)
    if cap.shape != (topology.n_gpus,):
        raise ValueError(f"safe_cap_w must have shape ({topology.n_gpus},)")
    usable = usable_limits(topology, site_limit_w=site_limit_w, site_margin_frac=site_margin_frac)
    out: list[Overrun] = []
    for k, level in enumerate(topology.levels):
        draw = topology.group_sum(k, cap) + topology.overhead_under(k)
        over = np.flatnonzero(draw > usable[k] + REL_TOL * np.maximum(np.abs(usable[k]), 1.0))
        out.extend(
            Overrun(
                level=level.name,
                group=level.ids[g],
                draw_w=float(draw[g]),
                usable_w=float(usable[k][g]),
            )
            for g in over.tolist()
        )
    return out


def site_limit_in_force(topology: Topology, limits: Limits) -> float:
    """The lowest site limit in force: the site's rating, the hard limit and a softer target
    (a demand-response level). Units: W."""
    site = float(topology.levels[-1].usable_w[0])
    for limit_w in (limits.site_limit_w, limits.site_target_w):
        if limit_w is not None:
            site = min(site, limit_w)
    return site


def follow_site_limit(
    topology: Topology,
    *,
    carried_w: FloatArray,
    policy_w: FloatArray,
    limits: Limits,
    site_margin_frac: float,
) -> FloatArray | None:
    """Safe caps for the site limit in force (module doc), or None to keep `carried_w`.

    `carried_w` are the safe caps commands carry now, `policy_w` the policy's own (derived for
    its contract, or configured). Only the site is checked: the limits below it change only
    with the topology, when the policy's caps are derived again. Never above the policy's.
    """
    site_w = site_limit_in_force(topology, limits)
    overhead_w = float(topology.overhead_under(len(topology.levels) - 1)[0])

    def fits(caps: FloatArray, limit_w: float) -> bool:
        room = limit_w * (1.0 - site_margin_frac)
        return float(caps.sum()) + overhead_w <= room + REL_TOL * max(abs(room), 1.0)

    # At their min caps already (a limit in force that even those do not fit), they can go no
    # lower: deriving again would make the same caps, one allocation per tick for nothing.
    if not fits(carried_w, site_w) and not np.array_equal(carried_w, topology.gpu_min_cap_w):
        derived = derive_safe_caps(
            topology,
            site_limit_w=site_w * (1.0 - FOLLOW_STEP_FRAC),
            site_margin_frac=site_margin_frac,
        )
        return np.minimum(derived, policy_w)
    if fits(policy_w, site_w) and not np.array_equal(carried_w, policy_w):
        return policy_w.copy()
    return None
