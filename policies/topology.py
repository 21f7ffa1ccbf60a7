"""The power hierarchy as index arrays: GPU -> server -> rack -> row -> site, any depth >= 3.

Every group sum in the decision core is one `np.bincount` over a precomputed per-GPU group index,
so no code path loops over GPUs or racks in Python. GPUs are ordered so each rack owns a contiguous
row range: ingesting one rack's telemetry is then a single slice assignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from policies.errors import TopologyError
from policies.gpu_models import GPU_MODELS, model_table

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int32]


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Level:
    """One level of the hierarchy (servers, racks, rows, site...).

    `parent[g]` is the index of group g's parent in the next coarser level (ignored on the last
    level). `limit_w` is the rated limit (inf when a level has none), `derating` the usable
    fraction of it (NEC plans continuous load at 0.8 of a breaker's rating), and `overhead_w` the
    non-GPU power drawn directly by the group (CPUs, fans, NICs of a server; a rack's switch),
    which counts against this group's limit and every ancestor's. Units: W.
    """

    name: str
    ids: tuple[str, ...]
    parent: IntArray
    limit_w: FloatArray
    derating: FloatArray
    overhead_w: FloatArray

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def usable_w(self) -> FloatArray:
        """Limit after derating: the figure no allocation may exceed. Units: W."""
        return self.limit_w * self.derating


@dataclass(frozen=True, eq=False, kw_only=True)
class Topology:
    """A site's static power hierarchy. Build with `Topology.create`, which validates and derives.

    `levels` runs from the finest (servers) to the coarsest (the site, one group). `rack_level`
    names the level whose groups exchange telemetry and commands over the wire.
    """

    site: str
    gpu_model: NDArray[np.int8]
    gpu_server: IntArray
    levels: tuple[Level, ...]
    rack_level: int
    # Derived by `create`; never passed in.
    gpu_group: tuple[IntArray, ...] = field(default=())
    rack_offsets: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    gpu_min_cap_w: FloatArray = field(default_factory=lambda: np.zeros(0))
    gpu_max_cap_w: FloatArray = field(default_factory=lambda: np.zeros(0))
    rack_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        site: str,
        gpu_model: NDArray[np.integer] | list[int],
        gpu_server: NDArray[np.integer] | list[int],
        levels: tuple[Level, ...] | list[Level],
        rack_level: int | str = "rack",
    ) -> Topology:
        """Validate the arrays and derive per-GPU group indices and rack row ranges."""
        models = np.asarray(gpu_model, dtype=np.int8)
        servers = np.asarray(gpu_server, dtype=np.int32)
        levels = tuple(levels)
        if models.ndim != 1 or servers.shape != models.shape:
            raise TopologyError("must be 1-D and as long as gpu_model", field="gpu_server")
        if len(levels) < 2:
            raise TopologyError("need at least a server level and a site level", field="levels")
        if levels[-1].size != 1:
            raise TopologyError(
                "the coarsest level must be the site, with one group", field="levels"
            )
        if np.any((models < 0) | (models >= len(GPU_MODELS))):
            raise TopologyError("unknown model code", field="gpu_model")
        _check_index(servers, levels[0].size, "gpu_server")
        for k, level in enumerate(levels):
            for name in ("parent", "limit_w", "derating", "overhead_w"):
                arr = getattr(level, name)
                if arr.shape != (level.size,):
                    raise TopologyError(
                        f"must have {level.size} entries", field=f"{level.name}.{name}"
                    )
            if np.any(np.isnan(level.limit_w)) or np.any(level.limit_w <= 0):
                raise TopologyError(
                    "limits must be positive (inf for none)", field=f"{level.name}.limit_w"
                )
            if np.any(~((level.derating > 0) & (level.derating <= 1))):
                raise TopologyError("derating must be in (0, 1]", field=f"{level.name}.derating")
            if np.any(~np.isfinite(level.overhead_w)) or np.any(level.overhead_w < 0):
                raise TopologyError(
                    "overhead must be finite and >= 0", field=f"{level.name}.overhead_w"
                )
            if k + 1 < len(levels):
                _check_index(level.parent, levels[k + 1].size, f"{level.name}.parent")
        if len({lv.name for lv in levels}) != len(levels):
            raise TopologyError("level names must be unique", field="levels")
        if isinstance(rack_level, str):
            names = [lv.name for lv in levels]
            if rack_level not in names:
                raise TopologyError(f"no level named {rack_level!r}", field="rack_level")
            rack_level = names.index(rack_level)
        if not 0 <= rack_level < len(levels) - 1:
            raise TopologyError("the rack level must be below the site level", field="rack_level")

        groups: list[IntArray] = [servers]
        for level in levels[:-1]:
            groups.append(level.parent[groups[-1]].astype(np.int32))
        rack_of_gpu = groups[rack_level]
        if rack_of_gpu.size and np.any(np.diff(rack_of_gpu) < 0):
            raise TopologyError(
                "GPUs must be ordered by rack (contiguous rows)", field="gpu_server"
            )
        counts = np.bincount(rack_of_gpu, minlength=levels[rack_level].size)
        offsets = np.zeros(levels[rack_level].size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rack_ids = levels[rack_level].ids
        if len(set(rack_ids)) != len(rack_ids):
            raise TopologyError("rack ids must be unique", field=f"{levels[rack_level].name}.ids")
        return cls(
            site=site,
            gpu_model=models,
            gpu_server=servers,
            levels=levels,
            rack_level=rack_level,
            gpu_group=tuple(groups),
            rack_offsets=offsets,
            gpu_min_cap_w=model_table("min_cap_w")[models],
            gpu_max_cap_w=model_table("max_cap_w")[models],
            rack_index={rid: i for i, rid in enumerate(rack_ids)},
        )

    @property
    def n_gpus(self) -> int:
        return int(self.gpu_model.size)

    @property
    def racks(self) -> Level:
        return self.levels[self.rack_level]

    @property
    def n_racks(self) -> int:
        return self.racks.size

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise TopologyError(f"no level named {name!r}", field="levels")

    def level_index(self, name: str) -> int:
        return [lv.name for lv in self.levels].index(self.level(name).name)

    def rack_slice(self, rack: int) -> slice:
        """Row range of one rack's GPUs in every per-GPU array."""
        return slice(int(self.rack_offsets[rack]), int(self.rack_offsets[rack + 1]))

    def rack_sizes(self) -> NDArray[np.int64]:
        return np.diff(self.rack_offsets).astype(np.int64)

    def group_sum(self, level: int, per_gpu: FloatArray) -> FloatArray:
        """Sum a per-GPU quantity over the groups of one level."""
        sums = np.bincount(
            self.gpu_group[level], weights=per_gpu, minlength=self.levels[level].size
        )
        return sums.astype(np.float64, copy=False)

    def overhead_under(self, level: int) -> FloatArray:
        """Non-GPU power inside each group of `level`: its own plus every descendant's. Units: W."""
        total = self.levels[0].overhead_w.astype(np.float64, copy=True)
        for k in range(1, level + 1):
            child = self.levels[k - 1]
            summed = np.bincount(child.parent, weights=total, minlength=self.levels[k].size)
            total = summed.astype(np.float64, copy=False) + self.levels[k].overhead_w
        return total


def dc_side(topology: Topology, psu_efficiency: float) -> Topology:
    """The topology with every rating scaled from the wall to the power supplies' outputs.

    Breakers, row feeds and the contract carry wall power (PSU losses included), while the core
    budgets what GPUs and server loads draw after the PSUs. Scaling the ratings once keeps every
    comparison in one unit; 1.0 returns the topology unchanged (overheads already wall-side).
    """
    if not 0.5 < psu_efficiency <= 1.0:
        raise TopologyError("must be in (0.5, 1]", field="psu_efficiency")
    if psu_efficiency == 1.0:
        return topology
    levels = tuple(replace(lv, limit_w=lv.limit_w * psu_efficiency) for lv in topology.levels)
    return Topology.create(
        site=topology.site,
        gpu_model=topology.gpu_model,
        gpu_server=topology.gpu_server,
        levels=levels,
        rack_level=topology.rack_level,
    )


def _check_index(idx: NDArray[np.integer], bound: int, name: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= bound):
        raise TopologyError(f"index out of range [0, {bound})", field=name)


def generate_topology(
    n_gpus: int,
    *,
    site: str = "site",
    gpus_per_server: int = 8,
    servers_per_rack: int = 4,
    racks_per_row: int = 20,
    a100_share: float = 0.5,
    server_overhead_w: float | None = None,
    rack_limit_w: float | None = None,
    rack_derating: float = 0.8,
    row_limit_w: float | None = None,
    site_limit_w: float | None = None,
    server_limit_w: float | None = None,
) -> Topology:
    """A regular fleet for benchmarks, tests and demos: servers of one model, racks of servers.

    Whole servers alternate between H100 and A100 in blocks so racks are mixed. Unset limits
    default to sizes that bind under full load, the way real sites are provisioned: racks rated
    for ~90 % of their nameplate, rows and the site at ~85 % of the sum below them.
    """
    if n_gpus <= 0 or n_gpus % gpus_per_server:
        raise TopologyError("must be a positive multiple of gpus_per_server", field="n_gpus")
    n_servers = n_gpus // gpus_per_server
    n_racks = -(-n_servers // servers_per_rack)
    n_rows = -(-n_racks // racks_per_row)
    server_ids = np.arange(n_servers)
    a100_every = 0 if a100_share <= 0 else max(1, round(1 / a100_share))
    server_is_a100 = (
        (server_ids % a100_every == a100_every - 1) if a100_every else np.zeros(n_servers, bool)
    )
    server_model = np.where(server_is_a100, 1, 0).astype(np.int8)
    gpu_server = np.repeat(server_ids, gpus_per_server).astype(np.int32)
    gpu_model = server_model[gpu_server]
    max_cap = model_table("max_cap_w")[server_model] * gpus_per_server
    overhead = (
        np.where(server_is_a100, 1500.0, 2800.0)
        if server_overhead_w is None
        else np.full(n_servers, server_overhead_w)
    )
    server_nameplate = max_cap + overhead
    server_rack = (server_ids // servers_per_rack).astype(np.int32)
    rack_nameplate = np.bincount(server_rack, weights=server_nameplate, minlength=n_racks)
    rack_row = (np.arange(n_racks) // racks_per_row).astype(np.int32)
    rack_limit = (
        np.full(n_racks, rack_limit_w)
        if rack_limit_w is not None
        else np.ceil(rack_nameplate * 0.9 / rack_derating / 1000.0) * 1000.0
    )
    row_nameplate = np.bincount(rack_row, weights=rack_nameplate, minlength=n_rows)
    row_limit = np.full(n_rows, row_limit_w) if row_limit_w is not None else row_nameplate * 0.85
    site_limit = site_limit_w if site_limit_w is not None else float(rack_nameplate.sum() * 0.8)
    levels = standard_levels(
        site=site,
        server_rack=server_rack,
        rack_row=rack_row,
        server_limit_w=np.full(n_servers, server_limit_w or np.inf),
        server_overhead_w=overhead.astype(np.float64),
        rack_limit_w=rack_limit.astype(np.float64),
        rack_derating=rack_derating,
        row_limit_w=row_limit.astype(np.float64),
        site_limit_w=site_limit,
    )
    return Topology.create(
        site=site, gpu_model=gpu_model, gpu_server=gpu_server, levels=levels, rack_level="rack"
    )


def standard_levels(
    *,
    site: str,
    server_rack: NDArray[np.int32],
    rack_row: NDArray[np.int32],
    server_limit_w: NDArray[np.float64],
    server_overhead_w: NDArray[np.float64],
    rack_limit_w: NDArray[np.float64],
    rack_derating: float,
    row_limit_w: NDArray[np.float64],
    site_limit_w: float,
) -> tuple[Level, ...]:
    """Server -> rack -> row -> site with the generated fleets' ids (`s000000`, `r00000`,
    `row000`): the one hierarchy a generated fleet and a simulated scenario both build. Units: W.
    """
    n_servers, n_racks, n_rows = server_rack.size, rack_row.size, int(rack_row.max(initial=-1)) + 1
    return (
        Level(
            name="server",
            ids=tuple(f"s{i:06d}" for i in range(n_servers)),
            parent=server_rack,
            limit_w=server_limit_w,
            derating=np.ones(n_servers),
            overhead_w=server_overhead_w,
        ),
        Level(
            name="rack",
            ids=tuple(f"r{i:05d}" for i in range(n_racks)),
            parent=rack_row,
            limit_w=rack_limit_w,
            derating=np.full(n_racks, rack_derating),
            overhead_w=np.zeros(n_racks),
        ),
        Level(
            name="row",
            ids=tuple(f"row{i:03d}" for i in range(n_rows)),
            parent=np.zeros(n_rows, np.int32),
            limit_w=row_limit_w,
            derating=np.ones(n_rows),
            overhead_w=np.zeros(n_rows),
        ),
        Level(
            name="site",
            ids=(site,),
            parent=np.zeros(1, np.int32),
            limit_w=np.array([site_limit_w], dtype=np.float64),
            derating=np.ones(1),
            overhead_w=np.zeros(1),
        ),
    )
