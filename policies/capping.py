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


class Scratch:
    """Per-GPU work buffers reused from tick to tick.

    A fresh million-entry array costs its page faults on every tick (an order of magnitude more
    than the arithmetic), so intermediate per-GPU results are written into these buffers in
    place. Buffers are named by slot (w0, w1, ...; b0, ... for masks) and each stage of a tick
    (demand, allocation, smoothing, clocks) uses them only while it runs, so the stages share
    them. Outputs handed to callers are always fresh arrays. A plan, and so a decision state,
    serves one `decide` call at a time.
    """

    def __init__(self, n_gpus: int) -> None:
        self._n = n_gpus
        self._float: dict[str, FloatArray] = {}
        self._bool: dict[str, BoolArray] = {}
        self._int: dict[str, NDArray[np.int64]] = {}

    def f(self, name: str) -> FloatArray:
        """The float buffer called `name` (contents are whatever the last user left)."""
        buf = self._float.get(name)
        if buf is None:
            buf = self._float[name] = np.empty(self._n)
        return buf

    def b(self, name: str) -> BoolArray:
        buf = self._bool.get(name)
        if buf is None:
            buf = self._bool[name] = np.empty(self._n, dtype=np.bool_)
        return buf

    @property
    def names(self) -> set[str]:
        return set(self._float) | set(self._bool) | set(self._int)

    def i(self, name: str) -> NDArray[np.int64]:
        buf = self._int.get(name)
        if buf is None:
            buf = self._int[name] = np.empty(self._n, dtype=np.int64)
        return buf

    @property
    def nbytes(self) -> int:
        buffers = [*self._float.values(), *self._bool.values(), *self._int.values()]
        return sum(a.nbytes for a in buffers)


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
    #: Where each level's groups start in one global numbering of all groups.
    group_offsets: NDArray[np.int64]
    #: `ancestor[k][g]`: the level-k group above global group g (0 when g is not below k).
    ancestor: tuple[IntArray, ...]
    server_offsets: NDArray[np.int64] | None
    overhead_w: tuple[FloatArray, ...]
    usable_w: tuple[FloatArray, ...]
    idle_w: FloatArray
    min_clock_mhz: FloatArray
    max_clock_mhz: FloatArray
    clock_step_mhz: FloatArray
    #: Per-GPU offset of its server's row in the (server, phase) table: server * N_PHASES.
    phase_key: NDArray[np.int64]
    #: GPUs in every server when all servers are equal and in order, else 0.
    gpus_per_server: int
    #: Per-server sum of min caps, the floor when no rack is stale. Units: W.
    min_cap_server_w: FloatArray
    scratch: Scratch

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
        min_cap_server = cls._sums_helper(servers, n_servers, offsets, topology.gpu_min_cap_w)
        return cls(
            topology=topology,
            n_servers=n_servers,
            gpu_server=servers,
            gpu_rack=topology.gpu_group[topology.rack_level],
            server_path=tuple(path),
            group_offsets=np.cumsum([0] + [lv.size for lv in levels]).astype(np.int64),
            ancestor=_ancestors(topology),
            server_offsets=offsets,
            overhead_w=tuple(topology.overhead_under(k) for k in range(len(levels))),
            usable_w=tuple(lv.usable_w for lv in levels),
            idle_w=model_table("idle_w")[model],
            min_clock_mhz=model_table("min_sm_clock_mhz")[model],
            max_clock_mhz=model_table("max_sm_clock_mhz")[model],
            clock_step_mhz=model_table("sm_clock_step_mhz")[model],
            phase_key=servers.astype(np.int64) * N_PHASES,
            gpus_per_server=int(counts[0])
            if offsets is not None and np.all(counts == counts[0])
            else 0,
            min_cap_server_w=min_cap_server,
            scratch=Scratch(topology.n_gpus),
        )

    @staticmethod
    def _sums_helper(
        servers: IntArray,
        n_servers: int,
        offsets: NDArray[np.int64] | None,
        per_gpu: FloatArray,
    ) -> FloatArray:
        if offsets is not None:
            return np.add.reduceat(per_gpu, offsets)
        return np.bincount(servers, weights=per_gpu, minlength=n_servers).astype(np.float64)

    @property
    def n_levels(self) -> int:
        return len(self.server_path)

    @property
    def nbytes(self) -> int:
        arrays: list[NDArray[np.generic]] = [self.gpu_server, self.gpu_rack, *self.server_path]
        arrays += self.overhead_w
        arrays += [*self.usable_w, self.idle_w, self.min_clock_mhz, self.max_clock_mhz]
        arrays += [self.clock_step_mhz, self.phase_key, self.min_cap_server_w]
        if self.server_offsets is not None:
            arrays.append(self.server_offsets)
        return sum(a.nbytes for a in arrays) + self.scratch.nbytes

    def server_sum(self, per_gpu: FloatArray) -> FloatArray:
        """Sum a per-GPU quantity per server. Units: those of the input."""
        if self.gpus_per_server:
            # Equal servers in order: a reshape and a row sum beat reduceat several times over.
            sums: FloatArray = per_gpu.reshape(self.n_servers, self.gpus_per_server).sum(axis=1)
            return sums
        return self._sums_helper(self.gpu_server, self.n_servers, self.server_offsets, per_gpu)

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
    scratch = plan.scratch
    tier_gain = np.subtract(demand_w, floor_w, out=scratch.f("w0"))
    surplus_gain = np.subtract(max_w, demand_w, out=scratch.f("w1"))
    key = np.add(plan.phase_key, tier, out=scratch.i("phase_key"))
    gain_sums = np.bincount(key, weights=tier_gain, minlength=n_servers * N_PHASES)
    gains: FloatArray = gain_sums.astype(np.float64, copy=False).reshape(n_servers, N_PHASES)
    gains[:, N_TIERS] = plan.server_sum(surplus_gain)
    floor_server = (
        plan.min_cap_server_w
        if floor_w is plan.topology.gpu_min_cap_w
        else plan.server_sum(floor_w)
    )
    base = [s + o for s, o in zip(plan.up(floor_server), plan.overhead_w, strict=True)]
    infeasible = tuple(
        b > u + REL_TOL * np.maximum(np.abs(u), 1.0) for b, u in zip(base, usable_w, strict=True)
    )
    remaining = [np.maximum(u - b, 0.0) for u, b in zip(usable_w, base, strict=True)]
    theta = np.ones((n_servers, N_PHASES))
    for phase in range(N_PHASES):
        if not np.any(remaining[-1] > 0):
            # The site is exhausted (the usual state under a binding site or DR limit): this
            # phase and every later one grant nothing anywhere.
            theta[:, phase:] = 0.0
            break
        gain = gains[:, phase]
        level_theta = _fill_phase(plan, gain, remaining)
        if level_theta is None:
            granted = plan.up(gain)
        else:
            theta[:, phase] = level_theta
            granted = plan.up(gain * level_theta)
        remaining = [np.maximum(r - g, 0.0) for r, g in zip(remaining, granted, strict=True)]
    flat = theta.reshape(-1)
    cap_w = np.take(flat, key)  # fresh: the caller keeps it
    np.multiply(cap_w, tier_gain, out=cap_w)
    np.add(cap_w, floor_w, out=cap_w)
    np.add(plan.phase_key, N_TIERS, out=key)
    surplus_theta = np.take(flat, key)  # (take with out= is several times slower)
    np.multiply(surplus_theta, surplus_gain, out=surplus_theta)
    np.add(cap_w, surplus_theta, out=cap_w)
    server_used = floor_server + (gains * theta).sum(axis=1)
    used = tuple(s + o for s, o in zip(plan.up(server_used), plan.overhead_w, strict=True))
    return Allocation(cap_w=cap_w, used_w=used, infeasible=infeasible, theta=theta)


def _fill_phase(
    plan: CappingPlan, gain: FloatArray, remaining: list[FloatArray]
) -> FloatArray | None:
    """Per-server fill level of one phase in [0, 1]; None when no group binds (all at 1).

    Going up the levels, each server remembers the group that last held it back (its holder)
    and that group's saturation level (its reach). A group's saturation only depends on its
    servers' reaches, and servers with one holder share one reach, so each group is solved
    over its holders (plus one item for servers nobody held): a sort over the binding groups
    below, not over servers.
    """
    totals = plan.up(gain)
    if all(np.all(t <= r) for t, r in zip(totals, remaining, strict=True)):
        return None
    reach = np.ones(plan.n_servers)
    holder = np.full(plan.n_servers, -1, dtype=np.int64)  # global group id, -1 = none
    offsets = plan.group_offsets
    saturation = np.ones(int(offsets[-1]))  # per global group id
    for k in range(plan.n_levels):
        path = plan.server_path[k]
        size = plan.topology.levels[k].size
        wanted: FloatArray = (
            totals[0]
            if k == 0
            else np.bincount(path, weights=gain * reach, minlength=size).astype(np.float64)
        )
        binding = wanted > remaining[k]
        if not binding.any():
            continue
        if k == 0:
            level = np.ones(size)
            level[binding] = remaining[0][binding] / gain[binding]
        else:
            level = _saturation_levels(plan, k, gain, holder, saturation, binding, remaining[k])
        saturation[offsets[k] : offsets[k + 1]] = level
        lowered = level[path] < reach
        reach[lowered] = level[path][lowered]
        holder[lowered] = path[lowered] + offsets[k]
    return reach


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
    in_binding = binding[path] & (gain > 0)
    weights = np.bincount(key[in_binding], weights=gain[in_binding], minlength=n_global + n_groups)
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


def _ancestors(topology: Topology) -> tuple[IntArray, ...]:
    levels = topology.levels
    total = sum(lv.size for lv in levels)
    out = []
    for k in range(len(levels)):
        table = np.zeros(total, dtype=np.int32)
        start = 0
        for j, level in enumerate(levels[:k]):
            up_to = np.arange(level.size, dtype=np.int32)
            for m in range(j, k):
                up_to = levels[m].parent[up_to]
            table[start : start + level.size] = up_to
            start += level.size
        out.append(table)
    return tuple(out)


def check_tier(tier: NDArray[np.integer], n_gpus: int) -> NDArray[np.int8]:
    """Normalise the per-GPU tier array once at the edge of the decision core."""
    arr = np.asarray(tier)
    if arr.shape != (n_gpus,):
        raise PolicyError(f"tier must have shape ({n_gpus},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_TIERS):
        raise PolicyError(f"tier values must be in 0..{N_TIERS - 1}")
    return arr.astype(np.int8, copy=False)
