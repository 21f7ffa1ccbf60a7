"""Hierarchical water-filling of GPU power caps under nested limits, vectorized.

Semantics (exact, so the slow reference in `policies.reference` can be held to them):

1. Every GPU starts at its floor (min cap; a stale GPU is pinned at its reserve). A group whose
   floors and non-GPU overhead already exceed its usable limit is *infeasible*: flagged, and
   nothing under it rises above the floor.
2. Nine phases then share what is left, in strict priority: four tier-floor phases, Flex 0, 1,
   2, 3 (each GPU of the tier rises from its floor towards its tier floor, the cap that keeps it
   within its tier's tolerated slowdown; absent tier floors, these phases grant nothing), four
   tier phases, Flex 0, 1, 2, 3 (each GPU of the tier rises from its tier floor towards its
   demand), then a surplus phase (every GPU rises from its demand towards its max cap, so an
   unconstrained fleet runs uncapped). Every tier is kept at its floor before any tier gets
   more; where even the tier floors do not fit, the most tolerant tier gives first.
3. Inside a phase, GPU i sits at ``start_i + theta * gain_i`` and theta rises from 0 to 1 for
   everyone at once (progressive filling); when a group's limit is reached, every GPU under it
   stops. The result is max-min fair in the fraction of each GPU's gain granted, which for a
   tier phase is its demand above the floor: water-filling relative to demand.

For a tree of limits, the level at which a GPU stops is the smallest, over its ancestors, of the
level at which that ancestor's subtree saturates (computed bottom-up, each group seeing its
children's saturation). All GPUs of a server move together, so after one pass over the GPUs to
sum gains per (server, phase), the whole fill runs on server-sized arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.errors import PolicyError
from policies.plan import N_PHASES, CappingPlan
from policies.tiers import N_TIERS
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Relative slack tolerated when comparing sums to limits (float rounding of large sums).
REL_TOL = 1e-9


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Allocation:
    """The allocation's caps and what each group was granted.

    `used_w[k]` is floors, overhead and every phase's grant summed per group of level k (the
    power the caps allow the group), `infeasible[k]` the groups whose floors alone exceed
    `usable_w[k]`, `theta` the fill level of each (server, phase). Units: W.
    """

    cap_w: FloatArray
    used_w: tuple[FloatArray, ...]
    infeasible: tuple[BoolArray, ...]
    theta: FloatArray


def allocate(
    plan: CappingPlan,
    *,
    floor_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    tier_floor_w: FloatArray | None = None,
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
) -> Allocation:
    """Fill caps to each tier's floor in tier order, then to demand by tier, then to `max_w`.

    `tier_floor_w` (per GPU, floor <= tier floor <= demand; None: no tier floors) is the cap
    that keeps the GPU within its tier's tolerated slowdown. Every GPU first rises from
    `floor_w` to its tier floor in four phases, Flex 0 first (so where even the tier floors do
    not fit, the most tolerant tier gives first), then from there to its demand in strict tier
    order, then to `max_w`: two fills, the second starting at the first one's caps. When every
    group holds all the tier floors (the fill's own infeasibility check shows it), the first
    fill is the tier floors themselves and is skipped. Temporaries live in `workspace` (a fresh
    one when None). Units: W.
    """
    ws = DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace
    if tier_floor_w is None:
        return _sure(
            plan,
            floor_w=floor_w,
            demand_w=demand_w,
            max_w=max_w,
            tier=tier,
            usable_w=usable_w,
            workspace=ws,
            out=out,
        )
    # Usually every group holds all the tier floors: the fill from them is then the answer, and
    # it finds whether they fit (its infeasibility check) before doing any other work.
    held = _fill(
        plan,
        floor_w=tier_floor_w,
        demand_w=demand_w,
        max_w=max_w,
        tier=tier,
        usable_w=usable_w,
        workspace=ws,
        out=out,
        only_if_feasible=True,
    )
    if held is not None:
        return held
    first = _sure(
        plan,
        floor_w=floor_w,
        demand_w=tier_floor_w,
        max_w=tier_floor_w,
        tier=tier,
        usable_w=usable_w,
        workspace=ws,
    )
    second = _sure(
        plan,
        floor_w=first.cap_w,
        demand_w=demand_w,
        max_w=max_w,
        tier=tier,
        usable_w=usable_w,
        workspace=ws,
        out=out,
    )
    # Groups flagged are those whose hard floors exceed their limit (the first fill's view);
    # the second fill starts from caps that fit wherever that is possible.
    return Allocation(
        cap_w=second.cap_w,
        used_w=second.used_w,
        infeasible=first.infeasible,
        theta=second.theta,
    )


def _sure(
    plan: CappingPlan,
    *,
    floor_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    workspace: DecisionWorkspace,
    out: FloatArray | None = None,
) -> Allocation:
    """`_fill` run to the end (it only gives up when asked to)."""
    alloc = _fill(
        plan,
        floor_w=floor_w,
        demand_w=demand_w,
        max_w=max_w,
        tier=tier,
        usable_w=usable_w,
        workspace=workspace,
        out=out,
    )
    if alloc is None:  # pragma: no cover - unreachable without only_if_feasible
        raise PolicyError("the fill gave up without being asked to")
    return alloc


def _fill(
    plan: CappingPlan,
    *,
    floor_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    workspace: DecisionWorkspace,
    out: FloatArray | None = None,
    only_if_feasible: bool = False,
) -> Allocation | None:
    """Fill caps from `floor_w` to `demand_w` by tier, then to `max_w`, under `usable_w` limits.

    With `only_if_feasible`, None as soon as some group's floors exceed its limit.

    Requires floor <= demand <= max per GPU (a reserved GPU has all three equal). `usable_w` is
    per level, overhead not yet subtracted. The caps go into `out` when given (a buffer the
    caller only reads before its next use), else into a fresh array. Units: W.
    """
    n_servers = plan.n_servers
    buffers = workspace.fill
    if floor_w is plan.topology.gpu_min_cap_w:
        floor_server = plan.min_cap_server_w
    else:
        floor_server = plan.server_sum(floor_w)
    base = [s + o for s, o in zip(plan.up(floor_server), plan.overhead_w, strict=True)]
    infeasible = tuple(
        b > u + REL_TOL * np.maximum(np.abs(u), 1.0) for b, u in zip(base, usable_w, strict=True)
    )
    if only_if_feasible and any(flags.any() for flags in infeasible):
        return None
    tier_gain = np.subtract(demand_w, floor_w, out=buffers.tier_gain)
    key = workspace.phase_keys(plan, tier)
    gain_sums = np.bincount(key, weights=tier_gain, minlength=n_servers * N_PHASES)
    # Tiers are below N_TIERS, so the surplus column starts at zero; it is filled only if the
    # surplus phase is reached (under a binding site limit it never is).
    gains: FloatArray = gain_sums.astype(np.float64, copy=False).reshape(n_servers, N_PHASES)
    remaining = [np.maximum(u - b, 0.0) for u, b in zip(usable_w, base, strict=True)]
    theta = np.ones((n_servers, N_PHASES))
    tier_totals = plan.up(gains[:, :N_TIERS])  # every tier phase's group sums in one pass
    surplus_gain: FloatArray | None = None
    # What is left of the site below the rounding slack of its sums is no power to share: a
    # phase run for it would grant nothing measurable yet cost as much as any other. A site
    # without a limit has no rounding to allow for (and infinity is never "below" infinity).
    site_usable = usable_w[-1]
    site_slack = np.where(
        np.isfinite(site_usable), REL_TOL * np.maximum(np.abs(site_usable), 1.0), 0.0
    )
    for phase in range(N_PHASES):
        if not np.any(remaining[-1] > site_slack):
            # The site is exhausted (the usual state under a binding site or DR limit): this
            # phase and every later one grant nothing anywhere.
            theta[:, phase:] = 0.0
            break
        if phase < N_TIERS:
            totals = [t[:, phase] for t in tier_totals]
        else:
            surplus_gain = np.subtract(max_w, demand_w, out=buffers.surplus_gain)
            gains[:, N_TIERS] = plan.server_sum(surplus_gain)
            totals = plan.up(gains[:, N_TIERS])
        gain = gains[:, phase]
        level_theta, site_full = _fill_phase(plan, gain, totals, remaining)
        if level_theta is None:
            granted = totals
        else:
            theta[:, phase] = level_theta
            if site_full:
                # The fill stopped at the site's limit: what it leaves is rounding, below the
                # slack, so every later phase grants nothing (as the check above would find).
                theta[:, phase + 1 :] = 0.0
                break
            granted = plan.up(gain * level_theta)
        remaining = [np.maximum(r - g, 0.0) for r, g in zip(remaining, granted, strict=True)]
    flat = theta.reshape(-1)
    # mode="clip" (keys are always in range) lets take write straight into its output buffer.
    cap_w = np.take(flat, key, mode="clip", out=np.empty_like(tier_gain) if out is None else out)
    np.multiply(cap_w, tier_gain, out=cap_w)
    np.add(cap_w, floor_w, out=cap_w)
    if surplus_gain is not None and theta[:, N_TIERS].any():
        surplus = buffers.surplus
        if plan.gpus_per_server:
            rows = (n_servers, plan.gpus_per_server)
            np.multiply(
                surplus_gain.reshape(rows), theta[:, N_TIERS, np.newaxis], out=surplus.reshape(rows)
            )
        else:
            key = workspace.surplus_keys(plan, N_TIERS)
            np.take(flat, key, mode="clip", out=surplus)
            np.multiply(surplus, surplus_gain, out=surplus)
        np.add(cap_w, surplus, out=cap_w)
    server_used = floor_server + np.einsum("ij,ij->i", gains, theta)
    used = tuple(s + o for s, o in zip(plan.up(server_used), plan.overhead_w, strict=True))
    return Allocation(cap_w=cap_w, used_w=used, infeasible=infeasible, theta=theta)


def _fill_phase(
    plan: CappingPlan, gain: FloatArray, totals: list[FloatArray], remaining: list[FloatArray]
) -> tuple[FloatArray | None, bool]:
    """Per-server fill level of one phase in [0, 1] (None when no group binds: all at 1), and
    whether the site itself bound, so that it has nothing left for later phases.

    Going up the levels, each server remembers the group that last held it back (its holder)
    and that group's saturation level (its reach). A group's saturation only depends on its
    servers' reaches, and servers with one holder share one reach, so each group is solved
    over its holders (plus one item for servers nobody held): a sort over the binding groups
    below, not over servers.
    """
    if all(np.all(t <= r) for t, r in zip(totals, remaining, strict=True)):
        return None, False
    reach = np.ones(plan.n_servers)
    holder = np.full(plan.n_servers, -1, dtype=np.int64)  # global group id, -1 = none
    offsets = plan.group_offsets
    saturation = np.ones(int(offsets[-1]))  # per global group id
    any_held = site_full = False
    held_sums: list[FloatArray] | None = None  # what each group wants given the reaches so far
    for k in range(plan.n_levels):
        path = plan.server_path[k]
        size = plan.topology.levels[k].size
        if not any_held:
            wanted = totals[k]
        else:
            if held_sums is None:  # reaches changed below: sum them up once for every level
                held_sums = plan.up(gain * reach)
            wanted = held_sums[k]
        binding = wanted > remaining[k]
        if not binding.any():
            continue
        if not any_held:
            # Nothing below holds any server back yet: each group's sum is linear in theta.
            level = np.ones(size)
            level[binding] = remaining[k][binding] / wanted[binding]
        else:
            level = _saturation_levels(plan, k, gain, holder, saturation, binding, remaining[k])
        saturation[offsets[k] : offsets[k + 1]] = level
        if size == 1:  # the site: one level for every server
            lowered = reach > level[0]
            reach[lowered] = level[0]
            holder[lowered] = offsets[k]
        else:
            level_of_server = level[path]
            lowered = level_of_server < reach
            reach[lowered] = level_of_server[lowered]
            holder[lowered] = path[lowered] + offsets[k]
        any_held = True
        held_sums = None
        site_full = k == plan.n_levels - 1
    return reach, site_full


def _saturation_levels(  # noqa: PLR0917 - a private kernel step, called once
    plan: CappingPlan,
    k: int,
    gain: FloatArray,
    holder: NDArray[np.int64],
    saturation: FloatArray,
    binding: BoolArray,
    remaining: FloatArray,
) -> FloatArray:
    """For each binding group, the theta where sum(gain * min(theta, reach)) meets `remaining`.

    Items are the holders below each binding group (weight: their servers' gain; level: their
    saturation) and one item per group for servers never held (level 1), found with one
    bincount keyed by holder (or by "free in group g"). Non-binding groups get 1.
    """
    path = plan.server_path[k]
    n_groups = binding.size
    n_global = saturation.size
    key = np.where(holder >= 0, holder, path + n_global)
    # Servers of non-binding groups weigh nothing; items that weigh nothing are dropped below,
    # so zero weights stand in for compacting the arrays (and add exact zeros to the sums).
    # Gains are never negative.
    server_weight = gain if binding.all() else gain * binding[path]
    weights = np.bincount(key, weights=server_weight, minlength=n_global + n_groups)
    items = np.flatnonzero(weights > 0)
    is_holder = items < n_global
    group = np.where(is_holder, plan.ancestor[k][np.minimum(items, n_global - 1)], items - n_global)
    level = np.where(is_holder, saturation[np.minimum(items, n_global - 1)], 1.0)
    weight = weights[items]
    order = np.lexsort((level, group))
    group, level, weight = group[order], level[order], weight[order]
    first = np.empty(group.size, dtype=np.bool_)
    first[:1] = True
    np.not_equal(group[1:], group[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    seg = np.cumsum(first) - 1  # segment number of each item
    weighted = weight * level
    cum_weighted = np.cumsum(weighted)
    cum_weight = np.cumsum(weight)
    before_weighted = (cum_weighted[starts] - weighted[starts])[seg]
    before_weight = (cum_weight[starts] - weight[starts])[seg]
    ends = np.concatenate((starts[1:], [group.size])) - 1
    seg_weight = (cum_weight[ends] - before_weight[starts])[seg]
    # Items below j are frozen at their own level; item j and above still rise with theta.
    frozen = cum_weighted - weighted - before_weighted
    rising = seg_weight - (cum_weight - weight - before_weight)
    target = remaining[group]
    hit = frozen + level * rising >= target
    prev_hit = np.empty_like(hit)
    prev_hit[:1] = False
    prev_hit[1:] = hit[:-1] & ~first[1:]
    pick = hit & ~prev_hit
    out = np.ones(n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = (target[pick] - frozen[pick]) / rising[pick]
    # Into [0, 1], and 0/0 (a segment with nothing left rising) to 0: fmax drops the NaN.
    out[group[pick]] = np.minimum(np.fmax(theta, 0.0), 1.0)
    return out


def check_tier(tier: NDArray[np.integer], n_gpus: int) -> NDArray[np.int8]:
    """Normalise the per-GPU tier array once at the edge of the decision core."""
    arr = np.asarray(tier)
    if arr.shape != (n_gpus,):
        raise PolicyError(f"tier must have shape ({n_gpus},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_TIERS):
        raise PolicyError(f"tier values must be in 0..{N_TIERS - 1}")
    return arr.astype(np.int8, copy=False)
