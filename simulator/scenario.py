"""Scenario files: YAML validated by pydantic into frozen models (`rheostat schema scenario`).

A scenario is data: topology, workloads, limits, grid events, faults, duration, tick and seed.
Errors name the file, the line and the dotted field, and every problem is reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from policies.errors import ConfigError, ConfigErrors, yaml_line
from simulator.fault_specs import Fault
from simulator.feature_specs import CarbonPolicySpec, FacilitySpec
from simulator.servers import SERVER_TYPES
from simulator.workloads import TrainingProfileName

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopologySpec(_Model):
    """A regular fleet; limits are fractions of what the hardware draws flat out."""

    gpus: int = Field(gt=0, description="number of GPUs, a multiple of gpus_per_server")
    gpus_per_server: int = Field(8, gt=0)
    servers_per_rack: int = Field(4, gt=0)
    racks_per_row: int = Field(8, gt=0)
    a100_share: float = Field(0.5, ge=0, le=1, description="share of servers with A100s")
    site_limit_frac: float = Field(
        1.0,
        gt=0,
        description="site contract as a fraction of the facility's full-power draw "
        "(every GPU at its max cap, servers' overhead, PSU losses)",
    )
    rack_rating_frac: float = Field(
        1.125, gt=0, description="rack breaker rating as a fraction of the rack's full-power draw"
    )
    rack_derating: float = Field(0.8, gt=0, le=1, description="usable fraction of a breaker")
    gpu_model: str | None = Field(
        None,
        description="GPU model of every server (simulator.servers.SERVER_TYPES: H100-SXM5, "
        "A100-SXM4, H200-SXM, B200, GB200); none = H100/A100 mixed by a100_share",
    )
    rack_models: tuple[str, ...] = Field(
        (), description="GPU model per rack in topology order, repeated when shorter"
    )
    rack_ratings_kw: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (),
        description="rack breaker ratings in topology order, repeated when shorter (replaces "
        "rack_rating_frac). Units: kW",
    )
    row_limit_frac: float | None = Field(
        None, gt=0, description="row limit as a fraction of the row's full-power draw"
    )
    row_limits_kw: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (), description="row limits in topology order, repeated when shorter. Units: kW"
    )
    non_gpu_idle_frac: float | None = Field(
        None,
        ge=0,
        le=1,
        description="servers' non-GPU power with idle GPUs as a fraction of its peak; none = "
        "each server type's (simulator.servers); 1 = fixed at the peak",
    )

    @model_validator(mode="after")
    def _whole_servers(self) -> TopologySpec:
        if self.gpus % self.gpus_per_server:
            raise ValueError("gpus must be a multiple of gpus_per_server")
        if self.row_limit_frac is not None and self.row_limits_kw:
            raise ValueError("give at most one of row_limit_frac and row_limits_kw")
        for name in (self.gpu_model, *self.rack_models):
            _known_model(name)
        return self

    @property
    def n_racks(self) -> int:
        return -(-self.gpus // (self.gpus_per_server * self.servers_per_rack))


def _known_model(name: str | None) -> None:
    """A model the simulator can build servers of (`simulator.servers.SERVER_TYPES`)."""
    if name is not None and name not in SERVER_TYPES:
        raise ValueError(f"unknown GPU model {name!r} (known: {', '.join(SERVER_TYPES)})")


class PhysicsSpec(_Model):
    """Sensor and actuator imperfections and thermal constants (see simulator.physics)."""

    limiter_settle_s: float = Field(0.1, gt=0)
    thermal_tau_s: float = Field(30.0, gt=0)
    inlet_temp_c: float = 25.0
    psu_efficiency: float = Field(0.95, gt=0, le=1)
    sensor_noise_frac: float = Field(0.01, ge=0, lt=0.5)
    telemetry_delay_s: float = Field(1.0, ge=0)
    actuation_lag_s: float = Field(1.0, ge=0)


class _Job(_Model):
    name: str
    gpus: int = Field(gt=0)
    tier: int = Field(1, ge=0, le=3, description="Flex tier: 0 never slowed first, 3 most flexible")
    start_s: float = Field(0.0, ge=0)
    end_s: float | None = Field(None, gt=0, description="departure time; none = runs to the end")
    gpu_model: str | None = Field(
        None, description="GPU model of the job's servers (whole servers); none = the topology's"
    )

    @model_validator(mode="after")
    def _model_known(self) -> _Job:
        _known_model(self.gpu_model)
        return self


class TrainingSpec(_Job):
    """Synchronous data-parallel training: compute, then all-reduce, every iteration."""

    kind: Literal["training"]
    iteration_s: float = Field(6.0, gt=0)
    comm_frac: float = Field(0.3, ge=0, lt=1, description="share of an iteration in communication")
    checkpoint_every_s: float = Field(0.0, ge=0, description="0 = no checkpoints")
    checkpoint_s: float = Field(60.0, ge=0)
    profile: TrainingProfileName = Field(
        "llm-pretrain",
        description="kind of job: sets its uncapped draw and whether it is memory-bound "
        "(simulator.workloads.TRAINING_PROFILES, simulator/data/CALIBRATION.md)",
    )
    uncapped_draw_frac: float | None = Field(
        None,
        gt=0,
        le=1,
        description="compute phase's draw uncapped, as a fraction of TDP; none = the profile's",
    )


class InferenceSpec(_Job):
    """An LLM service whose demand comes from a synthetic diurnal rate or the Azure trace."""

    kind: Literal["inference"]
    source: Literal["diurnal", "trace"] = "diurnal"
    utilization: float = Field(0.6, gt=0, le=2, description="mean demand / capacity at top clock")
    prefill_time_share: float = Field(
        0.3, ge=0, le=1, description="diurnal source: share of GPU time in prefill"
    )
    start_hour: float = Field(12.0, ge=0, lt=24)
    peak_to_trough: float = Field(2.0, ge=1)
    bursts_per_hour: float = Field(2.0, ge=0)
    burst_factor: float = Field(1.6, ge=1)
    trace_time_scale: float = Field(1.0, gt=0, description="trace source: >1 stretches it")
    trace_file: str | None = Field(
        None,
        min_length=1,
        description="trace source: a CSV in the Azure LLM inference format (TIMESTAMP, "
        "ContextTokens, GeneratedTokens), relative to the scenario file; none = the shipped "
        "conversation trace",
    )
    prefill_draw_frac: float | None = Field(
        None, gt=0, le=1, description="prefill's uncapped draw, fraction of TDP; none = default"
    )
    decode_draw_frac: float | None = Field(
        None, gt=0, le=1, description="decode's uncapped draw, fraction of TDP; none = default"
    )

    @model_validator(mode="after")
    def _trace_file_needs_trace(self) -> InferenceSpec:
        if self.trace_file is not None and self.source != "trace":
            raise ValueError("trace_file needs source: trace")
        return self


Workload = Annotated[TrainingSpec | InferenceSpec, Field(discriminator="kind")]


class LimitStep(_Model):
    """A contract change or maintenance window: from `at_s` on, the site limit is this."""

    at_s: float = Field(ge=0)
    site_limit_frac: float | None = Field(None, gt=0, description="of the full-power draw")
    site_limit_w: float | None = Field(None, gt=0)
    notice_s: float = Field(
        0.0,
        ge=0,
        description="how long before at_s the controller is told of the step; 0 = unannounced "
        "(it learns the new limit when it applies)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> LimitStep:
        if (self.site_limit_frac is None) == (self.site_limit_w is None):
            raise ValueError("give exactly one of site_limit_frac and site_limit_w")
        return self


class LimitsSpec(_Model):
    steps: tuple[LimitStep, ...] = ()
    ramp_w_per_s: float | None = Field(
        None, gt=0, description="utility ramp-rate limit on site power, both directions"
    )


class DrEvent(_Model):
    """An OpenADR-style demand-response event (see `policies.dr`, which the loop runs it through).

    The cut is one of: `reduction_frac` of the pre-event baseline, an absolute `limit_kw`, or,
    when neither is given, the reduction of the OpenADR `SIMPLE` `level` (1/2/3 = 10/25/50 %).
    """

    start_s: float = Field(ge=0, description="when the reduced level must be reached")
    notification_s: float = Field(0.0, ge=0, description="notice given before the start")
    ramp_s: float = Field(0.0, ge=0, description="ramp-in lead before the start")
    duration_s: float = Field(gt=0)
    recovery_s: float = Field(300.0, gt=0, description="ramp back to the baseline")
    level: int = Field(2, ge=0, le=3, description="OpenADR SIMPLE level")
    reduction_frac: float | None = Field(None, ge=0, lt=1, description="share of baseline shed")
    limit_kw: float | None = Field(None, gt=0, description="allowed site power. Units: kW")

    @model_validator(mode="after")
    def _at_most_one(self) -> DrEvent:
        if self.reduction_frac is not None and self.limit_kw is not None:
            raise ValueError("give at most one of reduction_frac and limit_kw")
        return self


class GridSpec(_Model):
    dr_events: tuple[DrEvent, ...] = ()
    carbon: Literal["none", "caiso"] = Field("none", description="carbon-intensity signal")
    carbon_start_s: float = Field(0.0, ge=0, description="offset into the carbon trace. Units: s")
    price_per_mwh: float = Field(80.0, ge=0, description="flat energy price. Units: $/MWh")


class ControllerSpec(_Model):
    period_s: float = Field(1.0, gt=0, description="decision period")
    stale_timeout_s: float = Field(5.0, gt=0, description="rack silence before it is stale")
    warmup_s: float = Field(
        60.0,
        ge=0,
        description="the run starts this long before t = 0 with jobs already running, so the "
        "controller is in charge at t = 0; nothing is measured during it",
    )
    command_ttl_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a command's time to live, counted on the rack agent's monotonic clock from "
        "receipt; a rack that hears nothing newer falls back to its safe caps",
    )


class Scenario(_Model):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0)
    tick_s: float = Field(1.0, gt=0)
    seed: int = 0
    topology: TopologySpec
    physics: PhysicsSpec = PhysicsSpec()
    workloads: tuple[Workload, ...] = ()
    limits: LimitsSpec = LimitsSpec()
    grid: GridSpec = GridSpec()
    faults: tuple[Fault, ...] = ()
    controller: ControllerSpec = ControllerSpec()
    facility: FacilitySpec | None = None
    carbon_policy: CarbonPolicySpec | None = None

    @model_validator(mode="after")
    def _fits(self) -> Scenario:
        if self.carbon_policy is not None and self.grid.carbon == "none":
            raise ValueError("carbon_policy needs a carbon signal (grid.carbon)")
        if sum(w.gpus for w in self.workloads) > self.topology.gpus:
            raise ValueError("workloads need more GPUs than the topology has")
        first = 0
        per_server = self.topology.gpus_per_server
        for w in self.workloads:
            if w.gpu_model is not None and (first % per_server or w.gpus % per_server):
                raise ValueError(f"workload {w.name!r} sets gpu_model but not on whole servers")
            first += w.gpus
        n_racks = self.topology.n_racks
        n_rows = -(-n_racks // self.topology.racks_per_row)
        for f in self.faults:
            rack = getattr(f, "rack", None)
            if rack is not None and rack >= n_racks:
                raise ValueError(f"fault names rack {rack}, but there are {n_racks} racks")
            row = getattr(f, "row", None)
            if row is not None and row >= n_rows:
                raise ValueError(f"fault names row {row}, but there are {n_rows} rows")
        return self

    def shortened(self, duration_s: float) -> Scenario:
        """The same scenario cut short (tests use short variants of the shipped ones)."""
        return self.model_copy(update={"duration_s": duration_s})


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A scenario file: a path, or the name of one shipped with Rheostat."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(shipped_scenarios())
    raise ConfigError(f"no such file or shipped scenario (shipped: {known})", file=name_or_path)


def load_scenario(name_or_path: str) -> Scenario:
    """Read and validate a scenario; raises ConfigErrors naming every bad field with its line."""
    path = resolve(name_or_path)
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise ConfigError(f"cannot read YAML: {exc}", file=str(path)) from None
    try:
        return _with_trace_paths(Scenario.model_validate(_plain(doc)), path, doc)
    except ValidationError as exc:
        raise ConfigErrors.from_validation(exc.errors(), doc=doc, source=str(path)) from None


def _with_trace_paths(scenario: Scenario, path: Path, doc: Any) -> Scenario:
    """Trace files made absolute against the scenario's folder; a missing one is an error."""
    workloads = list(scenario.workloads)
    errors: list[ConfigError] = []
    for i, w in enumerate(workloads):
        if not isinstance(w, InferenceSpec) or w.trace_file is None:
            continue
        trace = Path(w.trace_file)
        trace = trace if trace.is_absolute() else (path.parent / trace)
        loc: tuple[int | str, ...] = ("workloads", i, "trace_file")
        if not trace.is_file():
            errors.append(
                ConfigError(
                    f"no such trace file: {trace}",
                    file=str(path),
                    line=yaml_line(doc, loc),
                    field=".".join(str(p) for p in loc),
                )
            )
            continue
        workloads[i] = w.model_copy(update={"trace_file": str(trace.resolve())})
    if errors:
        raise ConfigErrors(errors)
    return scenario.model_copy(update={"workloads": tuple(workloads)})


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers as plain dicts and lists (kept for line numbers)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
