"""What the decision core derives from a topology alone, built once and carried warm.

`CappingPlan` holds index arrays (each server's group at every level, a global numbering of
groups and each group's ancestors) and per-GPU model figures for DVFS; it is immutable (the
per-tick kernels write into a caller's `policies.workspace.DecisionWorkspace`). `decide` keeps it
in `DecisionState.plan` and rebuilds it only when it is handed a different topology object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from policies.gpu_models import model_table
from policies.tiers import N_TIERS
from policies.topology import Topology

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int32]

#: Tier phases then the surplus phase (up to max cap).
N_PHASES = N_TIERS + 1


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
    #: Max cap minus idle power: the model's dynamic power at full activity.
    dynamic_w: FloatArray
    #: Per-GPU offset of its server's row in the (server, phase) table: server * N_PHASES.
    phase_key: NDArray[np.int64]
    #: GPUs in every server when all servers are equal and in order, else 0.
    gpus_per_server: int
    #: Per-server sum of min caps, the floor when no rack is stale. Units: W.
    min_cap_server_w: FloatArray
    #: `children[k]`, k >= 1: how many level k-1 groups each level-k group holds when every one
    #: holds the same number, in order (a row sum is then a reshape), else 0. `children[0]` is 0.
    children: tuple[int, ...]
    #: `group_starts[k]`, k >= 1: where each level-k group's children start when the children
    #: are in group order and no group is empty (sums are then one `np.add.reduceat`), else None.
    group_starts: tuple[NDArray[np.int64] | None, ...]

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
        idle = model_table("idle_w")[model]
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
            idle_w=idle,
            min_clock_mhz=model_table("min_sm_clock_mhz")[model],
            max_clock_mhz=model_table("max_sm_clock_mhz")[model],
            clock_step_mhz=model_table("sm_clock_step_mhz")[model],
            dynamic_w=np.subtract(topology.gpu_max_cap_w, idle),
            phase_key=servers.astype(np.int64) * N_PHASES,
            gpus_per_server=int(counts[0])
            if offsets is not None and np.all(counts == counts[0])
            else 0,
            min_cap_server_w=min_cap_server,
            children=(0, *(_uniform_children(lo.parent, hi.size) for lo, hi in pairwise(levels))),
            group_starts=(None, *(_starts(lo.parent, hi.size) for lo, hi in pairwise(levels))),
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

    def with_overhead(self, overhead_w: tuple[FloatArray, ...]) -> CappingPlan:
        """This plan with each group's non-GPU power at `overhead_w` rather than its peak: the
        allocation budgets measured non-GPU power through it (`policies.non_gpu`). Units: W."""
        return replace(self, overhead_w=overhead_w)

    @property
    def n_levels(self) -> int:
        return len(self.server_path)

    @property
    def nbytes(self) -> int:
        arrays: list[NDArray[np.generic]] = [self.gpu_server, self.gpu_rack, *self.server_path]
        arrays += self.overhead_w
        arrays += [*self.usable_w, self.idle_w, self.min_clock_mhz, self.max_clock_mhz]
        arrays += [self.clock_step_mhz, self.dynamic_w, self.phase_key, self.min_cap_server_w]
        arrays += [self.group_offsets, *self.ancestor]
        if self.server_offsets is not None:
            arrays.append(self.server_offsets)
        return sum(a.nbytes for a in arrays)

    def server_sum(self, per_gpu: FloatArray) -> FloatArray:
        """Sum a per-GPU quantity per server. Units: those of the input."""
        if self.gpus_per_server:
            # Equal servers in order: einsum's row sum beats reduceat and ndarray.sum(axis=1)
            # several times over (and, unlike a BLAS product, starts no threads).
            rows = per_gpu.reshape(self.n_servers, self.gpus_per_server)
            sums: FloatArray = np.einsum("ij->i", rows)
            return sums
        return self._sums_helper(self.gpu_server, self.n_servers, self.server_offsets, per_gpu)

    def group_use(self, cap_w: FloatArray) -> tuple[FloatArray, ...]:
        """Per level, each group's power with every GPU at `cap_w`, overhead included. Units: W."""
        sums = self.up(self.server_sum(cap_w))
        return tuple(s + o for s, o in zip(sums, self.overhead_w, strict=True))

    def up(self, per_server: FloatArray) -> list[FloatArray]:
        """Per-server values summed at every level, finest first.

        `per_server` may have a second axis (one column per phase): every column is summed, so
        all phases cost one pass. Levels of equal groups in order sum as a reshape, the others
        with one small bincount a column.
        """
        sums = [per_server]
        levels = self.topology.levels
        for k in range(1, self.n_levels):
            below = sums[-1]
            size = levels[k].size
            children = self.children[k]
            if children:
                rows = below.reshape(size, children, *below.shape[1:])
                sums.append(np.einsum("ij...->i...", rows))
                continue
            starts = self.group_starts[k]
            if starts is not None:
                # Children in order: one call sums every group (and every column).
                sums.append(np.add.reduceat(below, starts, axis=0))
                continue
            parent = levels[k - 1].parent
            columns = [below] if below.ndim == 1 else list(below.T)
            summed = [
                np.bincount(parent, weights=c, minlength=size).astype(np.float64, copy=False)
                for c in columns
            ]
            sums.append(summed[0] if below.ndim == 1 else np.stack(summed, axis=1))
        return sums


def _uniform_children(parent: IntArray, n_parents: int) -> int:
    """Children per parent when parents are in order and all hold the same number, else 0."""
    if n_parents == 0 or parent.size % n_parents:
        return 0
    children = parent.size // n_parents
    expected = np.repeat(np.arange(n_parents, dtype=parent.dtype), children)
    return children if np.array_equal(parent, expected) else 0


def _starts(parent: IntArray, n_parents: int) -> NDArray[np.int64] | None:
    """First child of each parent when children are sorted by parent and none is childless."""
    counts = np.bincount(parent, minlength=n_parents)
    if parent.size == 0 or np.any(np.diff(parent) < 0) or np.any(counts == 0):
        return None
    starts = np.zeros(n_parents, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


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
