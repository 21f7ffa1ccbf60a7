"""The fleet's power hierarchy as metrics: site, rows, racks, tiers and (opt-in) GPUs.

Group sums are `np.bincount` over index arrays; the only per-rack Python work is emitting
samples, which prometheus_client requires, and it happens on the scrape, not the tick. Limits
go out as wall power: racks report wall power, while the decision core's limits are after the
PSUs. Units: watts, joules, hertz.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client.core import Metric

from controller.metric_families import Family
from controller.runtime import Runtime
from policies.tiers import N_TIERS

MHZ_TO_HZ = 1e6

SITE = ("site",)
ROW = ("site", "row")
RACK = ("site", "row", "rack")
TIER = ("site", "tier")
#: One series per GPU: opt-in (`metrics.per_gpu`) because of cardinality.
GPU = ("site", "rack", "gpu")

SITE_POWER = Family("site_power_watts", "gauge", "Measured site power (racks' reports).", SITE)
SITE_LIMIT = Family(
    "site_limit_watts", "gauge", "Site limit in force: min of contract, DR, facility.", SITE
)
SITE_CONTRACT = Family("site_contract_watts", "gauge", "Utility contract for the site.", SITE)
SITE_HEADROOM = Family("site_headroom_watts", "gauge", "Site limit minus measured power.", SITE)
STALE_RACKS = Family("stale_racks", "gauge", "Racks without fresh telemetry.", SITE)
RACKS = Family("racks", "gauge", "Racks in the topology.", SITE)
GPUS = Family("gpus", "gauge", "GPUs in the topology.", SITE)
ROW_POWER = Family("row_power_watts", "gauge", "Measured row power.", ROW)
ROW_LIMIT = Family(
    "row_limit_watts", "gauge", "Usable row limit; absent when the row has none.", ROW
)
ROW_HEADROOM = Family("row_headroom_watts", "gauge", "Row limit minus power.", ROW)
RACK_POWER = Family("rack_power_watts", "gauge", "Measured rack power.", RACK)
RACK_LIMIT = Family("rack_limit_watts", "gauge", "Usable rack limit (rating x derating).", RACK)
RACK_RATING = Family("rack_breaker_rating_watts", "gauge", "Rack breaker rating.", RACK)
RACK_HEADROOM = Family("rack_headroom_watts", "gauge", "Usable limit minus power.", RACK)
RACK_UTILIZATION = Family(
    "rack_breaker_utilization_ratio", "gauge", "Rack power over its breaker rating.", RACK
)
RACK_STALE = Family("rack_stale", "gauge", "1 when the rack's telemetry is stale.", RACK)
RACK_CAP = Family("rack_cap_watts", "gauge", "Sum of the rack's GPU caps as decided.", RACK)
INFEASIBLE = Family(
    "infeasible_groups", "gauge", "Groups whose limit even min caps exceed.", ("site", "level")
)
SITE_ENERGY = Family("site_energy_joules", "counter", "Site energy, integrated per tick.", SITE)
DVFS_SAVING = Family("dvfs_saving_watts", "gauge", "Estimated power saved by clock ceilings.", SITE)
TIER_CAP = Family("tier_cap_watts", "gauge", "Sum of caps per tier.", TIER)
TIER_POWER = Family("tier_power_watts", "gauge", "Measured power per tier.", TIER)
TIER_GPUS = Family("tier_gpus", "gauge", "GPUs per tier.", TIER)
TIER_CLOCK = Family("tier_sm_clock_max_hertz", "gauge", "Mean SM-clock ceiling per tier.", TIER)
GPU_POWER = Family("gpu_power_watts", "gauge", "GPU power.", GPU)
GPU_CAP = Family("gpu_cap_watts", "gauge", "GPU cap as decided.", GPU)
GPU_CLOCK = Family("gpu_sm_clock_hertz", "gauge", "GPU SM clock.", GPU)

FAMILIES: tuple[Family, ...] = (
    SITE_POWER, SITE_LIMIT, SITE_CONTRACT, SITE_HEADROOM, STALE_RACKS, RACKS, GPUS,
    ROW_POWER, ROW_LIMIT, ROW_HEADROOM,
    RACK_POWER, RACK_LIMIT, RACK_RATING, RACK_HEADROOM, RACK_UTILIZATION, RACK_STALE, RACK_CAP,
    INFEASIBLE, SITE_ENERGY, DVFS_SAVING,
    TIER_CAP, TIER_POWER, TIER_GPUS, TIER_CLOCK,
    GPU_POWER, GPU_CAP, GPU_CLOCK,
)  # fmt: skip


def hierarchy(rt: Runtime, now_s: float) -> Iterator[Metric]:
    """Site, row and rack power, limits and headroom; `now_s` (s, the daemon's freshness clock)
    decides which racks are stale."""
    topo = rt.policy.topology
    site = topo.site
    fleet = rt.fleet
    rack_lv, row_k = topo.rack_level, topo.rack_level + 1
    racks, rows = topo.levels[rack_lv], topo.levels[row_k]
    rack_power = fleet.rack_power_w
    row_of_rack = racks.parent
    row_power = np.bincount(row_of_rack, weights=rack_power, minlength=rows.size)
    site_power = float(rack_power.sum())
    dec = rt.decision
    # The core's limits are after the PSUs; racks report wall power, so limits go out as wall.
    wall = 1.0 / rt.policy.config.limits.psu_efficiency
    site_limit = wall * (
        float(dec.limit_w[-1][0]) if dec is not None else float(topo.levels[-1].usable_w[0])
    )
    row_limit = wall * (dec.limit_w[row_k] if dec is not None else rows.usable_w)
    contract = wall * float(topo.levels[-1].usable_w[0])
    stale = fleet.stale_racks(now_s, rt.policy.config.control.stale_after_s)

    s = [site]
    for family, value in (
        (SITE_POWER, site_power),
        (SITE_LIMIT, site_limit),
        (SITE_CONTRACT, contract),
        (SITE_HEADROOM, site_limit - site_power),
        (STALE_RACKS, float(stale.sum())),
        (RACKS, float(topo.n_racks)),
        (GPUS, float(topo.n_gpus)),
    ):
        yield family.one(s, value)

    row_labels = [(site, rid) for rid in rows.ids]
    yield ROW_POWER.fill(row_labels, row_power)
    yield ROW_LIMIT.fill(row_labels, row_limit)
    yield ROW_HEADROOM.fill(row_labels, row_limit - row_power)

    rack_labels = [
        (site, rows.ids[r], rid) for rid, r in zip(racks.ids, row_of_rack.tolist(), strict=True)
    ]
    usable = racks.usable_w * wall
    rating = racks.limit_w * wall
    for family, values in (
        (RACK_POWER, rack_power),
        (RACK_LIMIT, usable),
        (RACK_RATING, rating),
        (RACK_HEADROOM, usable - rack_power),
        (RACK_UTILIZATION, rack_power / rating),
        (RACK_STALE, stale.astype(np.float64)),
    ):
        yield family.fill(rack_labels, values)
    if dec is not None:
        yield RACK_CAP.fill(rack_labels, topo.group_sum(rack_lv, dec.cap_w))

    infeasible = INFEASIBLE.gauge()
    for k, level in enumerate(topo.levels):
        count = float(dec.infeasible[k].sum()) if dec is not None else 0.0
        infeasible.add_metric([site, level.name], count)
    yield infeasible

    energy = SITE_ENERGY.counter()
    energy.add_metric(s, rt.site_energy_j)
    yield energy
    yield DVFS_SAVING.one(s, dec.dvfs_saving_w if dec is not None else 0.0)


def tiers(rt: Runtime) -> Iterator[Metric]:
    """Caps, power, GPUs and mean SM-clock ceiling per priority tier, once a decision exists."""
    dec = rt.decision
    if dec is None:
        return
    site = rt.policy.topology.site
    tier = dec.tier.astype(np.intp)
    gpus = np.bincount(tier, minlength=N_TIERS).astype(np.float64)
    cap = np.bincount(tier, weights=dec.cap_w, minlength=N_TIERS)
    power = np.bincount(tier, weights=rt.fleet.power_w, minlength=N_TIERS)
    clock = np.bincount(tier, weights=dec.sm_clock_max_mhz, minlength=N_TIERS)
    clock_hz = np.divide(clock, gpus, out=np.zeros(N_TIERS), where=gpus > 0) * MHZ_TO_HZ
    labels = [(site, str(t)) for t in range(N_TIERS)]
    yield TIER_CAP.fill(labels, cap)
    yield TIER_POWER.fill(labels, power)
    yield TIER_GPUS.fill(labels, gpus)
    yield TIER_CLOCK.fill(labels, clock_hz)


def per_gpu(rt: Runtime) -> Iterator[Metric]:
    """One series per GPU (`metrics.per_gpu`): power, and the decided cap and SM clock."""
    topo = rt.policy.topology
    rack_ids = np.array(topo.racks.ids)[topo.gpu_group[topo.rack_level]]
    labels = [(topo.site, rack, str(g)) for g, rack in enumerate(rack_ids.tolist())]
    yield GPU_POWER.fill(labels, rt.fleet.power_w)
    if rt.decision is not None:
        yield GPU_CAP.fill(labels, rt.decision.cap_w)
        yield GPU_CLOCK.fill(labels, rt.fleet.sm_clock_mhz * MHZ_TO_HZ)
