"""Random topologies and fleets for the decision-core tests (hypothesis strategies and builders)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from policies.fleet import FleetState
from policies.topology import Level, Topology


def build_topology(
    server_gpus: list[int],
    server_rack: list[int],
    rack_row: list[int],
    *,
    gpu_model: list[int],
    server_limit_w: list[float],
    rack_limit_w: list[float],
    row_limit_w: list[float],
    site_limit_w: float,
    server_overhead_w: list[float],
    rack_derating: list[float],
) -> Topology:
    """A server/rack/row/site topology (rows omitted when `rack_row` is empty)."""
    n_servers, n_racks, n_rows = len(server_gpus), len(rack_limit_w), len(row_limit_w)
    gpu_server = np.repeat(np.arange(n_servers), server_gpus)
    levels = [
        Level(
            name="server",
            ids=tuple(f"s{i}" for i in range(n_servers)),
            parent=np.asarray(server_rack, np.int32),
            limit_w=np.asarray(server_limit_w, np.float64),
            derating=np.ones(n_servers),
            overhead_w=np.asarray(server_overhead_w, np.float64),
        ),
        Level(
            name="rack",
            ids=tuple(f"r{i}" for i in range(n_racks)),
            parent=np.asarray(rack_row if n_rows else [0] * n_racks, np.int32),
            limit_w=np.asarray(rack_limit_w, np.float64),
            derating=np.asarray(rack_derating, np.float64),
            overhead_w=np.zeros(n_racks),
        ),
    ]
    if n_rows:
        levels.append(
            Level(
                name="row",
                ids=tuple(f"row{i}" for i in range(n_rows)),
                parent=np.zeros(n_rows, np.int32),
                limit_w=np.asarray(row_limit_w, np.float64),
                derating=np.ones(n_rows),
                overhead_w=np.zeros(n_rows),
            )
        )
    levels.append(
        Level(
            name="site",
            ids=("site",),
            parent=np.zeros(1, np.int32),
            limit_w=np.array([site_limit_w]),
            derating=np.ones(1),
            overhead_w=np.zeros(1),
        )
    )
    return Topology.create(site="site", gpu_model=gpu_model, gpu_server=gpu_server, levels=levels)


@dataclass
class Instance:
    topology: Topology
    demand_frac: NDArray[np.float64]
    tier: NDArray[np.int8]


LIMITS = [np.inf, 600.0, 1500.0, 2500.0, 4000.0, 8000.0]


@st.composite
def instances(draw: st.DrawFn, max_servers: int = 6, max_gpus_per_server: int = 4) -> Instance:
    """Small random instances: tight, loose and infeasible limits, ties, empty tiers."""
    n_servers = draw(st.integers(1, max_servers))
    server_gpus = draw(
        st.lists(st.integers(1, max_gpus_per_server), min_size=n_servers, max_size=n_servers)
    )
    n_racks = draw(st.integers(1, n_servers))
    cuts = (
        sorted(draw(st.lists(st.integers(1, n_servers - 1), max_size=n_racks - 1, unique=True)))
        if n_servers > 1
        else []
    )
    server_rack = [
        int(r) for r in np.searchsorted(np.asarray(cuts), np.arange(n_servers), side="right")
    ]
    n_racks = len(cuts) + 1
    use_rows = draw(st.booleans()) and n_racks > 1
    n_rows = draw(st.integers(1, n_racks)) if use_rows else 0
    rack_row = (
        sorted(draw(st.lists(st.integers(0, n_rows - 1), min_size=n_racks, max_size=n_racks)))
        if n_rows
        else []
    )
    if n_rows:
        rack_row = [int(r) for r in np.unique(rack_row, return_inverse=True)[1]]
        n_rows = int(max(rack_row)) + 1
    n_gpus = sum(server_gpus)
    limit = st.sampled_from(LIMITS)
    topo = build_topology(
        server_gpus,
        server_rack,
        rack_row,
        gpu_model=draw(st.lists(st.integers(0, 1), min_size=n_gpus, max_size=n_gpus)),
        server_limit_w=draw(st.lists(limit, min_size=n_servers, max_size=n_servers)),
        rack_limit_w=draw(st.lists(limit, min_size=n_racks, max_size=n_racks)),
        row_limit_w=draw(st.lists(limit, min_size=n_rows, max_size=n_rows)),
        site_limit_w=draw(st.sampled_from([*LIMITS, 20000.0])),
        server_overhead_w=draw(
            st.lists(st.sampled_from([0.0, 100.0, 350.0]), min_size=n_servers, max_size=n_servers)
        ),
        rack_derating=draw(
            st.lists(st.sampled_from([1.0, 0.8]), min_size=n_racks, max_size=n_racks)
        ),
    )
    frac = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))
    demand_frac = np.asarray(draw(st.lists(frac, min_size=n_gpus, max_size=n_gpus)))
    tiers = draw(st.lists(st.integers(0, 3), min_size=n_gpus, max_size=n_gpus))
    return Instance(topo, demand_frac, np.asarray(tiers, np.int8))


def busy_fleet(topology: Topology, power_frac: NDArray[np.float64], now_s: float) -> FleetState:
    """A fleet drawing `power_frac` of each GPU's max cap, uncapped, all racks fresh."""
    fleet = FleetState.empty(topology)
    fleet.power_w = topology.gpu_max_cap_w * power_frac
    fleet.util = np.where(power_frac > 0.15, 0.9, 0.0)
    fleet.mem_util = np.full(topology.n_gpus, 0.3)
    fleet.rack_last_seen_s[:] = now_s
    return fleet
