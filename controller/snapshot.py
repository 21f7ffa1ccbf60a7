"""Recorded decision inputs (a snapshot): JSON in, the arrays `policies.pipeline.decide` takes out.

The format is documented in docs/cli.md (`rheostat decide`). Parsing happens once, here, with
pydantic models that forbid unknown keys; every problem names its dotted field (and the file),
so an operator can fix a snapshot without reading code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.config import DecisionSettingsSection
from controller.wire import GPU_FIELD_RANGES
from policies.decision import DecisionState, Limits, PolicySettings
from policies.errors import ConfigError, ConfigErrors, TopologyError
from policies.fleet import FleetState
from policies.gpu_models import MODEL_CODE
from policies.topology import Level, Topology

Watts = Annotated[float, Field(gt=0)]
#: Indices into the snapshot's own arrays: bounded so a huge integer is a field error, not an
#: OverflowError from numpy's int32.
Index = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
#: Per-GPU power and caps within what the wire accepts from a rack.
GpuWatts = Annotated[float, Field(ge=0, le=GPU_FIELD_RANGES["cap_w"][1])]


class _Strict(BaseModel):
    # Attribute docstrings become the JSON schema's descriptions (`rheostat schema snapshot`).
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class LevelSpec(_Strict):
    """One level of the power hierarchy; every list has one entry per group (per id)."""

    name: str
    """The level's name (e.g. server, rack, row, site); `rack_level` names one of them."""
    ids: list[str] = Field(min_length=1)
    """The groups' ids, in index order."""
    parent: list[Index] | None = None
    """Per group, the index of its parent in the next level; required below the top level."""
    limit_w: list[Watts | None]
    """Per group, its rated limit (W); null means no limit at this group."""
    derating: list[Annotated[float, Field(gt=0, le=1)]] | None = None
    """Per group, the usable fraction of its rating, in (0, 1] (absent: 1)."""
    overhead_w: list[Annotated[float, Field(ge=0)]] | None = None
    """Per group, its non-GPU power (CPUs, fans, NICs; W), counted in its budget (absent: 0)."""


class GpuSpec(_Strict):
    """The GPUs, in decision order (by rack); both lists have one entry per GPU."""

    model: list[str] = Field(min_length=1)
    """Per GPU, its model name (e.g. H100-SXM5); at least one GPU: none leaves nothing to decide."""
    server: list[Index]
    """Per GPU, the index of its server in the first (finest) level."""


class TopologySpec(_Strict):
    """The site's power hierarchy, finest level first (at least 3 levels)."""

    site: str
    """The site's name."""
    rack_level: str = "rack"
    """The level whose groups are racks (telemetry, staleness and commands are per rack)."""
    levels: list[LevelSpec] = Field(min_length=3)
    """The levels, finest first (e.g. server, rack, row, site); the last one is the site."""
    gpus: GpuSpec
    """The GPUs and where each one sits."""


class TelemetrySpec(_Strict):
    """The latest reading of every GPU; each list has one entry per GPU."""

    power_w: list[GpuWatts]
    """Per GPU, measured board power (W)."""
    cap_w: list[Annotated[GpuWatts, Field(gt=0)]]
    """Per GPU, the power cap in force (W)."""
    util: list[Fraction]
    """Per GPU, utilisation (share of time a kernel ran), a fraction in [0, 1]."""
    mem_util: list[Fraction]
    """Per GPU, memory utilisation (share of time memory was busy), a fraction in [0, 1]."""


class PreviousSpec(_Strict):
    """The decision before this one, for caps' ramp limits and the site's ramp (absent: first)."""

    cap_w: list[Annotated[GpuWatts, Field(gt=0)]]
    """Per GPU, the caps issued last time (W); any outside a GPU's model range is clamped to it
    by the decision core."""
    now_s: float
    """When that decision was made (s, on the same clock as `now_s`)."""
    site_allowed_w: Watts
    """The site power it allowed (W)."""


class LimitsSpec(_Strict):
    """`policies.decision.Limits` for this tick. Units: W."""

    site_limit_w: Watts | None = None
    """The hard site limit in force (W): the lowest of the contract, a demand-response target and
    the facility's IT budget; null keeps the site level's own rating."""
    site_target_w: Watts | None = None
    """A softer site target (W), e.g. a demand-response level, that the allowed site power
    follows within the ramp rates; null: none."""


class SnapshotSpec(_Strict):
    """Recorded inputs of one decision (`rheostat decide SNAPSHOT`)."""

    version: Annotated[int, Field(ge=1, le=1)] = 1
    """The snapshot format's version; 1 is the only one."""
    now_s: float
    """The decision's time (s); every rack's telemetry is taken as fresh at this time."""
    topology: TopologySpec
    """The power hierarchy and the GPUs."""
    telemetry: TelemetrySpec
    """The latest per-GPU readings."""
    tier: list[Annotated[int, Field(ge=0, le=3)]]
    """Per GPU, its Flex tier: 0 is never slowed unless the hard limits leave no choice, 3
    tolerates the most slowdown."""
    sync_job: list[Annotated[str, Field(min_length=1)] | None] | None = None
    """Per GPU, the synchronous job it belongs to (any label; null: none), or absent."""
    stale_racks: list[str] = Field(default_factory=list)
    """Ids of racks whose telemetry is stale: the decision assumes their worst case."""
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    """This tick's site limit and target beside the topology's own ratings."""
    settings: DecisionSettingsSection = Field(default_factory=DecisionSettingsSection)
    """The policy file's `capping`, `ramp` and `dvfs` sections, with the same bounds."""
    previous: PreviousSpec | None = None
    """The previous decision, or absent for a first one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one `decide` call needs, validated."""

    topology: Topology
    fleet: FleetState
    tier: np.ndarray[Any, np.dtype[np.int8]]
    limits: Limits
    settings: PolicySettings
    state: DecisionState | None
    now_s: float
    stale_rack: np.ndarray[Any, np.dtype[np.bool_]]
    #: Per GPU, its synchronous job's index (-1: none); None when the snapshot names no jobs.
    sync_job: np.ndarray[Any, np.dtype[np.int32]] | None = None


def load_snapshot(path: Path | str) -> Snapshot:
    """Read and validate a snapshot file; raises `ConfigError`/`ConfigErrors` naming the field."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=source) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc}", file=source) from None
    return parse_snapshot(data, source=source)


def parse_snapshot(data: Any, *, source: str = "<snapshot>") -> Snapshot:
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object", file=source)
    try:
        spec = SnapshotSpec.model_validate(data)
    except ValidationError as exc:
        errors = [
            ConfigError(e["msg"], file=source, field=".".join(str(p) for p in e["loc"]))
            for e in exc.errors()
        ]
        raise ConfigErrors(errors) from None
    topology = _topology(spec.topology, source)
    n = topology.n_gpus

    def per_gpu(values: list[Any], field: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        if len(values) != n:
            raise ConfigError(
                f"has {len(values)} entries, expected {n} (one per GPU)", file=source, field=field
            )
        return np.asarray(values, dtype=np.float64)

    fleet = FleetState.empty(topology)
    fleet.power_w = per_gpu(spec.telemetry.power_w, "telemetry.power_w")
    fleet.cap_w = per_gpu(spec.telemetry.cap_w, "telemetry.cap_w")
    fleet.util = per_gpu(spec.telemetry.util, "telemetry.util")
    fleet.mem_util = per_gpu(spec.telemetry.mem_util, "telemetry.mem_util")
    fleet.rack_last_seen_s[:] = spec.now_s
    tier = per_gpu(spec.tier, "tier").astype(np.int8)
    stale = np.zeros(topology.n_racks, dtype=np.bool_)
    for i, rack in enumerate(spec.stale_racks):
        if rack not in topology.rack_index:
            raise ConfigError(f"unknown rack {rack!r}", file=source, field=f"stale_racks.{i}")
        stale[topology.rack_index[rack]] = True
    sync_job = None
    if spec.sync_job is not None:
        if len(spec.sync_job) != n:
            raise ConfigError(
                f"has {len(spec.sync_job)} entries, expected {n} (one per GPU)",
                file=source,
                field="sync_job",
            )
        labels = {name: k for k, name in enumerate(sorted({j for j in spec.sync_job if j}))}
        sync_job = np.array([-1 if j is None else labels[j] for j in spec.sync_job], np.int32)
    state = None
    if spec.previous is not None:
        state = DecisionState(
            cap_w=per_gpu(spec.previous.cap_w, "previous.cap_w"),
            now_s=spec.previous.now_s,
            site_allowed_w=spec.previous.site_allowed_w,
        )
    return Snapshot(
        topology=topology,
        fleet=fleet,
        tier=tier,
        limits=Limits(
            site_limit_w=spec.limits.site_limit_w, site_target_w=spec.limits.site_target_w
        ),
        settings=spec.settings.policy_settings(),
        state=state,
        now_s=spec.now_s,
        stale_rack=stale,
        sync_job=sync_job,
    )


def _topology(spec: TopologySpec, source: str) -> Topology:
    levels = []
    for k, lv in enumerate(spec.levels):
        size = len(lv.ids)
        prefix = f"topology.levels.{k}"
        for name in ("parent", "limit_w", "derating", "overhead_w"):
            values = getattr(lv, name)
            if values is not None and len(values) != size:
                raise ConfigError(
                    f"has {len(values)} entries, expected {size} (one per id)",
                    file=source,
                    field=f"{prefix}.{name}",
                )
        last = k == len(spec.levels) - 1
        if lv.parent is None and not last:
            raise ConfigError(
                "required below the site level", file=source, field=f"{prefix}.parent"
            )
        levels.append(
            Level(
                name=lv.name,
                ids=tuple(lv.ids),
                parent=np.asarray(lv.parent or [0] * size, dtype=np.int32),
                limit_w=np.array([np.inf if v is None else v for v in lv.limit_w]),
                derating=np.asarray(lv.derating or [1.0] * size, dtype=np.float64),
                overhead_w=np.asarray(lv.overhead_w or [0.0] * size, dtype=np.float64),
            )
        )
    models = []
    for i, name in enumerate(spec.gpus.model):
        if name not in MODEL_CODE:
            known = ", ".join(MODEL_CODE)
            raise ConfigError(
                f"unknown GPU model {name!r} (known: {known})",
                file=source,
                field=f"topology.gpus.model.{i}",
            )
        models.append(MODEL_CODE[name])
    try:
        return Topology.create(
            site=spec.site,
            gpu_model=models,
            gpu_server=spec.gpus.server,
            levels=levels,
            rack_level=spec.rack_level,
        )
    except TopologyError as exc:
        raise ConfigError(
            str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc),
            file=source,
            field=_topology_field(spec, exc.field),
        ) from None


def _topology_field(spec: TopologySpec, field: str | None) -> str:
    """Map a `TopologyError` field ("rack.parent", "gpu_server") to the snapshot's own path."""
    if not field:
        return "topology"
    if field == "gpu_server":
        return "topology.gpus.server"
    if field == "gpu_model":
        return "topology.gpus.model"
    name, _, rest = field.partition(".")
    for k, level in enumerate(spec.levels):
        if level.name == name and rest:
            return f"topology.levels.{k}.{rest}"
    return f"topology.{field}"
