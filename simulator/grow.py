"""More GPUs under the same breakers and contract: the scenarios `rheostat bench capacity` runs.

A scenario states its limits as fractions of what its hardware draws flat out, so adding servers
to it as written would raise every limit with them. `grow` first freezes the limits in watts (each
rack's breaker rating, each row's limit, the site contract and any contract step), then adds
servers, so the grown site is the same power infrastructure hosting more GPUs.

The new servers fill new racks, appended in topology order and spread over the existing rows (the
row count is kept, each row taking more racks), each with the breaker of the base rack at the
same position in the rating pattern: racks to rows, as a site adds racks under a row's feed and
the contract. Whole racks of 72 GPUs (NVL72) cannot take another tray, and a rack's own breaker
rating is a property of its feed, so racks are added rather than servers squeezed into racks.

The new GPUs run more of the same work: each class of workload (same kind, tier and settings),
and the idle pool, grows by its share of the base scenario's servers (largest remainder, in whole
servers), as new jobs and services of that class listed after the base's work. The base's jobs
keep their GPUs, their models and their random demand, so a grown run differs from the base only
by what was added.

A negative share shrinks the site the same way: the last racks go, and each class of work (and
the idle pool) gives up servers by its share, its last-listed workloads first. The capacity
benchmark uses it where the base scenario already holds more than its limits can serve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.build import build_topology, full_power_w, server_models
from simulator.scenario import Scenario

#: Suffix of the jobs and services `grow` adds (`NAME+grow`, `NAME+grow2`, ...).
GROWN_SUFFIX = "+grow"


def extra_servers(scenario: Scenario, extra_frac: float) -> int:
    """Whole servers to add (negative: remove) so the fleet has at least `1 + extra_frac` times
    the base's GPUs, always keeping a server."""
    n_servers = scenario.topology.gpus // scenario.topology.gpus_per_server
    add = math.ceil(round(extra_frac * n_servers, 9))
    if add <= -n_servers:
        raise ValueError(f"extra_frac {extra_frac} leaves no server")
    return add


def grow(scenario: Scenario, extra_frac: float) -> Scenario:
    """`scenario` with at least `extra_frac` more GPUs under the same limits in watts (module
    doc); named `NAME+P%` with P the GPUs actually added, in percent of the base's."""
    if scenario.facility is not None or scenario.carbon_policy is not None:
        raise ValueError("grow does not handle scenarios with a facility meter or carbon policy")
    spec = scenario.topology
    add = extra_servers(scenario, extra_frac)
    doc = scenario.model_dump()
    doc["topology"] = _frozen_topology(scenario, add)
    doc["limits"]["steps"] = _frozen_steps(scenario)
    if add >= 0:
        doc["workloads"] = [*doc["workloads"], *_added_workloads(scenario, add)]
    else:
        doc["workloads"] = _fewer_workloads(scenario, -add)
    # The contract in watts: the grown fleet's full draw times the fraction that keeps it.
    full_w = full_power_w(_base_topology(Scenario.model_validate(doc)), 1.0)
    base_full_w = full_power_w(_base_topology(scenario), 1.0)
    doc["topology"]["site_limit_frac"] = spec.site_limit_frac * base_full_w / full_w
    added_pct = 100.0 * add * spec.gpus_per_server / spec.gpus
    doc["name"] = f"{scenario.name}{added_pct:+.3g}%"
    return Scenario.model_validate(doc)


def _base_topology(scenario: Scenario) -> Any:
    return build_topology(
        scenario.topology,
        scenario.physics.psu_efficiency,
        server_model=server_models(scenario),
    )


def _frozen_topology(scenario: Scenario, add: int) -> dict[str, Any]:
    """The topology with `add` more servers and every limit given in kW or as the base's watts."""
    spec = scenario.topology
    base = _base_topology(scenario)
    rack_level = base.levels[base.rack_level]
    row_level = base.levels[base.rack_level + 1]
    n_racks, n_rows = rack_level.limit_w.size, row_level.limit_w.size
    gpus = spec.gpus + add * spec.gpus_per_server
    racks = -(-(gpus // spec.gpus_per_server) // spec.servers_per_rack)
    ratings_kw = rack_level.limit_w[np.arange(racks) % n_racks] / 1e3
    topo = spec.model_dump()
    topo |= {
        "gpus": gpus,
        "racks_per_row": -(-racks // n_rows),
        "rack_ratings_kw": tuple(float(r) for r in ratings_kw),
        "row_limit_frac": None,
        "row_limits_kw": (),
    }
    if np.all(np.isfinite(row_level.limit_w)):
        topo["row_limits_kw"] = tuple(float(r) / 1e3 for r in row_level.limit_w)
    elif np.any(np.isfinite(row_level.limit_w)):
        raise ValueError("grow needs every row limited or none")
    return topo


def _frozen_steps(scenario: Scenario) -> list[dict[str, Any]]:
    """Contract steps with every fraction of the base's full draw turned into watts."""
    topo = _base_topology(scenario)
    full_w = full_power_w(topo, scenario.physics.psu_efficiency)
    steps = []
    for step in scenario.limits.steps:
        doc = step.model_dump()
        if step.site_limit_frac is not None:
            doc |= {"site_limit_frac": None, "site_limit_w": full_w * step.site_limit_frac}
        steps.append(doc)
    return steps


def _class_key(workload: dict[str, Any]) -> str:
    """Workloads alike but for name and size are one class."""
    return repr(sorted((k, v) for k, v in workload.items() if k not in ("name", "gpus")))


def _classes(scenario: Scenario) -> tuple[dict[str, list[dict[str, Any]]], NDArray[np.float64]]:
    """Workloads by class (in first-listed order) and each class's servers, the idle pool's
    last."""
    classes: dict[str, list[dict[str, Any]]] = {}
    for w in scenario.workloads:
        doc = w.model_dump()
        classes.setdefault(_class_key(doc), []).append(doc)
    idle = scenario.topology.gpus - sum(w.gpus for w in scenario.workloads)
    gpus = [sum(d["gpus"] for d in docs) for docs in classes.values()]
    return classes, np.array([*gpus, idle], dtype=np.float64) / scenario.topology.gpus_per_server


def _apportion(n: int, servers: NDArray[np.float64]) -> NDArray[np.int64]:
    """`n` servers over the classes by their shares of `servers` (largest remainder)."""
    shares = n * servers / servers.sum()
    counts: NDArray[np.int64] = np.floor(shares).astype(np.int64)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _fewer_workloads(scenario: Scenario, remove: int) -> list[dict[str, Any]]:
    """The base's work less `remove` servers, each class by its share: a class gives up the
    servers of its last-listed workloads first (a workload left with none is dropped)."""
    per_server = scenario.topology.gpus_per_server
    classes, servers = _classes(scenario)
    cut = dict(zip(classes, _apportion(remove, servers)[:-1].tolist(), strict=True))
    kept: dict[str, int] = {}
    for key, docs in classes.items():
        left = cut[key]
        for doc in reversed(docs):
            take = min(left, doc["gpus"] // per_server)
            kept[doc["name"]] = doc["gpus"] - take * per_server
            left -= take
    return [w.model_dump() | {"gpus": kept[w.name]} for w in scenario.workloads if kept[w.name] > 0]


def _added_workloads(scenario: Scenario, add: int) -> list[dict[str, Any]]:
    """New jobs and services for `add` servers, each class by its share of the base's servers.

    The idle pool is a class too (its share stays idle, after the added work)."""
    per_server = scenario.topology.gpus_per_server
    classes, servers = _classes(scenario)
    counts = _apportion(add, servers)
    out: list[dict[str, Any]] = []
    for docs, n in zip(classes.values(), counts[:-1], strict=True):
        if n == 0:
            continue
        first = docs[0]
        name = f"{first['name']}{GROWN_SUFFIX}"
        out.append(first | {"name": name, "gpus": int(n) * per_server})
    return out
