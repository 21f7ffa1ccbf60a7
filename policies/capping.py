"""Hierarchical water-filling of GPU power caps under nested limits, vectorized.

Semantics (exact, so the slow reference in `policies.reference` can be held to them):

1. Every GPU starts at its floor (min cap; a stale GPU is pinned at its reserve). A group whose
   floors and non-GPU overhead already exceed its usable limit is *infeasible*: flagged, and
   nothing under it rises above the floor.
2. Five phases then share what is left, in strict priority: Flex tier 0, 1, 2, 3 (each GPU of
   the tier rises from its floor towards its demand), then a surplus phase (every GPU rises from
   its demand towards its max cap, so an unconstrained fleet runs uncapped).
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

from policies.decision import N_TIERS
from policies.errors import PolicyError
from policies.gpu_models import model_table
from policies.topology import Topology

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

#: Tier phases then the surplus phase (up to max cap).
N_PHASES = N_TIERS + 1
#: Relative slack tolerated when comparing sums to limits (float rounding of large sums).
REL_TOL = 1e-9


@dataclass(frozen=True, eq=False, kw_only=True)
class CappingPlan:
    """Everything the allocation derives from the topology alone, built once and reused warm.

    `server_path[k]` maps each server to its group at level k; `server_offsets` is set when the
    GPUs of each server are contiguous and non-empty, so per-server sums use `np.add.reduceat`.
    Per-GPU model figures for DVFS are gathered here once. Units: W, MHz.
    """

    topology: Topology
    n_servers: int
    gpu_server: IntArray
    gpu_rack: IntArray
    server_path: tuple[IntArray, ...]
    server_offsets: NDArray[np.int64] | None
    overhead_w: tuple[FloatArray, ...]
    usable_w: tuple[FloatArray, ...]
    idle_w: FloatArray
    min_clock_mhz: FloatArray
    max_clock_mhz: FloatArray
    clock_step_mhz: FloatArray

    @classmethod
    def build(cls, topology: Topology) -> CappingPlan:
        levels = topology.levels
        n_servers = levels[0].size
        path: list[IntArray] = [np.arange(n_servers, dtype=np.int32)]
        for level in levels[:-1]:
            path.append(level.parent[path[-1]].astype(np.int32))
        servers = topology.gpu_server
        offsets: NDArray[np.int64] | None = None
        counts = np.bincount(servers, minlength=n_servers)
        if servers.size and np.all(np.diff(servers) >= 0) and np.all(counts > 0):
            offsets = np.zeros(n_servers, dtype=np.int64)
            np.cumsum(counts[:-1], out=offsets[1:])
        model = topology.gpu_model
        return cls(
            topology=topology,
            n_servers=n_servers,
            gpu_server=servers,
            gpu_rack=topology.gpu_group[topology.rack_level],
            server_path=tuple(path),
            server_offsets=offsets,
            overhead_w=tuple(topology.overhead_under(k) for k in range(len(levels))),
            usable_w=tuple(lv.usable_w for lv in levels),
            idle_w=model_table("idle_w")[model],
            min_clock_mhz=model_table("min_sm_clock_mhz")[model],
            max_clock_mhz=model_table("max_sm_clock_mhz")[model],
            clock_step_mhz=model_table("sm_clock_step_mhz")[model],
        )

    @property
    def n_levels(self) -> int:
        return len(self.server_path)

    @property
    def nbytes(self) -> int:
        arrays: list[NDArray[np.generic]] = [self.gpu_server, self.gpu_rack, *self.server_path]
        arrays += self.overhead_w
        arrays += [*self.usable_w, self.idle_w, self.min_clock_mhz, self.max_clock_mhz]
        arrays.append(self.clock_step_mhz)
        if self.server_offsets is not None:
            arrays.append(self.server_offsets)
        return sum(a.nbytes for a in arrays)

    def server_sum(self, per_gpu: FloatArray) -> FloatArray:
        """Sum a per-GPU quantity per server. Units: those of the input."""
        if self.server_offsets is not None:
            return np.add.reduceat(per_gpu, self.server_offsets)
        sums = np.bincount(self.gpu_server, weights=per_gpu, minlength=self.n_servers)
        return sums.astype(np.float64, copy=False)

    def up(self, per_server: FloatArray) -> list[FloatArray]:
        """Per-server values summed at every level, finest first (one small bincount a level)."""
        sums = [per_server]
        for k in range(1, self.n_levels):
            parent = self.topology.levels[k - 1].parent
            size = self.topology.levels[k].size
            sums.append(np.bincount(parent, weights=sums[-1], minlength=size).astype(np.float64))
        return sums


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
) -> Allocation:
    """Fill caps from `floor_w` to `demand_w` by tier, then to `max_w`, under `usable_w` limits.

    Requires floor <= demand <= max per GPU (a reserved GPU has all three equal). `usable_w` is
    per level, overhead not yet subtracted. Units: W.
    """
    n_servers = plan.n_servers
    tier_gain = demand_w - floor_w
    surplus_gain = max_w - demand_w
    key = plan.gpu_server.astype(np.int64) * N_TIERS + tier
    gains = np.empty((n_servers, N_PHASES))
    gains[:, :N_TIERS] = np.bincount(key, weights=tier_gain, minlength=n_servers * N_TIERS).reshape(
        n_servers, N_TIERS
    )
    gains[:, N_TIERS] = plan.server_sum(surplus_gain)
    floor_server = plan.server_sum(floor_w)
    base = [s + o for s, o in zip(plan.up(floor_server), plan.overhead_w, strict=True)]
    infeasible = tuple(
        b > u + REL_TOL * np.maximum(np.abs(u), 1.0) for b, u in zip(base, usable_w, strict=True)
    )
    remaining = [np.maximum(u - b, 0.0) for u, b in zip(usable_w, base, strict=True)]
    theta = np.ones((n_servers, N_PHASES))
    for phase in range(N_PHASES):
        gain = gains[:, phase]
        level_theta = _fill_phase(plan, gain, remaining)
        if level_theta is None:
            granted = plan.up(gain)
        else:
            theta[:, phase] = level_theta
            granted = plan.up(gain * level_theta)
        remaining = [np.maximum(r - g, 0.0) for r, g in zip(remaining, granted, strict=True)]
    tier_theta = theta[:, :N_TIERS].reshape(-1)[key]
    surplus_theta = theta[:, N_TIERS][plan.gpu_server]
    cap_w = floor_w + tier_theta * tier_gain + surplus_theta * surplus_gain
    server_used = floor_server + (gains * theta).sum(axis=1)
    used = tuple(s + o for s, o in zip(plan.up(server_used), plan.overhead_w, strict=True))
    return Allocation(cap_w=cap_w, used_w=used, infeasible=infeasible, theta=theta)


def _fill_phase(
    plan: CappingPlan, gain: FloatArray, remaining: list[FloatArray]
) -> FloatArray | None:
    """Per-server fill level of one phase in [0, 1]; None when no group binds (all at 1)."""
    totals = plan.up(gain)
    if all(np.all(t <= r) for t, r in zip(totals, remaining, strict=True)):
        return None
    reach = np.ones(plan.n_servers)  # level at which each server's subtree-so-far saturates
    for k in range(plan.n_levels):
        path = plan.server_path[k]
        wanted = totals[k] if k == 0 else plan.up(gain * reach)[k]
        binding = wanted > remaining[k]
        if not binding.any():
            continue
        if k == 0:
            level = np.ones(plan.n_servers)
            level[binding] = remaining[0][binding] / gain[binding]
            np.minimum(reach, level, out=reach)
            continue
        group_level = _saturation_levels(path, gain, reach, binding, remaining[k])
        np.minimum(reach, group_level[path], out=reach)
    return reach


def _saturation_levels(
    path: IntArray,
    gain: FloatArray,
    reach: FloatArray,
    binding: BoolArray,
    remaining: FloatArray,
) -> FloatArray:
    """For each binding group, the theta where sum(gain * min(theta, reach)) meets `remaining`.

    Servers whose subtree never saturates (reach 1) are merged into one item per group, so the
    sort only sees servers already held back below. Non-binding groups get 1.
    """
    in_binding = binding[path] & (gain > 0)
    held = in_binding & (reach < 1.0)
    free = in_binding & ~held
    n_groups = binding.size
    free_gain = np.bincount(path[free], weights=gain[free], minlength=n_groups)
    free_groups = np.flatnonzero(free_gain > 0)
    group = np.concatenate([path[held], free_groups.astype(np.int32)])
    level = np.concatenate([reach[held], np.ones(free_groups.size)])
    weight = np.concatenate([gain[held], free_gain[free_groups]])
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
    ends = np.r_[starts[1:], group.size] - 1
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
    out[group[pick]] = np.clip(np.nan_to_num(theta, nan=0.0), 0.0, 1.0)
    return out


def check_tier(tier: NDArray[np.integer], n_gpus: int) -> NDArray[np.int8]:
    """Normalise the per-GPU tier array once at the edge of the decision core."""
    arr = np.asarray(tier)
    if arr.shape != (n_gpus,):
        raise PolicyError(f"tier must have shape ({n_gpus},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_TIERS):
        raise PolicyError(f"tier values must be in 0..{N_TIERS - 1}")
    return arr.astype(np.int8, copy=False)
