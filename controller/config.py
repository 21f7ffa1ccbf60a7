"""The policy file's schema: frozen pydantic models, one sub-model per section.

The file is parsed and validated once, at the entry point (`controller.policy_file.load_policy`),
into these models; the daemon never reads YAML or the environment after that. Sections are
separate models so later work (demand response, facility budgets) adds a section without touching
the others. Units are in every field name.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from controller.carbon import CarbonSection
from controller.facility import FacilitySection
from controller.grid.config import DemandResponseSection, Fraction
from controller.ha.config import HaSection
from controller.ingest import TelemetrySection
from controller.shard.config import IngestSection
from policies.decision import (
    DEFAULT_FLEX_TOLERANCES,
    N_TIERS,
    CappingSettings,
    DvfsSettings,
    PolicySettings,
)
from policies.errors import TopologyError
from policies.gpu_models import MODEL_CODE, GpuModel, match_model, register_model

PositiveW = Annotated[float, Field(gt=0)]
Tier = Annotated[int, Field(ge=0, le=N_TIERS - 1)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class _Finite(_Section):
    """A section of plain numbers: infinity and NaN are refused as well as values out of range."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GeneratedTopology(_Section):
    """A regular fleet (`policies.topology.generate_topology`): demos, tests and benchmarks."""

    gpus: Annotated[int, Field(gt=0)]
    """Total GPUs in the fleet; a multiple of gpus_per_server."""
    gpus_per_server: Annotated[int, Field(gt=0)] = 8
    """GPUs in each server."""
    servers_per_rack: Annotated[int, Field(gt=0)] = 4
    """Servers in each rack."""
    racks_per_row: Annotated[int, Field(gt=0)] = 20
    """Racks in each row (the last row may hold fewer)."""
    a100_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Share of servers with A100 GPUs; the rest are H100 (0 to 1)."""

    @model_validator(mode="after")
    def _whole_servers(self) -> Self:
        if self.gpus % self.gpus_per_server:
            raise ValueError("gpus must be a multiple of gpus_per_server")
        return self


class ServerSpec(_Section):
    """One server: its GPU model (as `nvidia-smi` names it), GPU count and non-GPU draw (W)."""

    model: str
    """GPU model, e.g. H100-SXM5 or A100-SXM4."""
    gpus: Annotated[int, Field(gt=0)] = 8
    """GPUs in this server."""
    overhead_w: Annotated[float, Field(ge=0)] = 2800.0
    """The server's non-GPU draw (CPUs, fans, NICs, PSU losses). Units: W."""
    limit_w: PositiveW | None = None
    """The server's own power limit, if any. Units: W at the wall."""

    @model_validator(mode="after")
    def _known_model(self) -> Self:
        if match_model(self.model) is None:
            raise ValueError(
                f"unknown GPU model {self.model!r} (known: {', '.join(MODEL_CODE)}, their NVML "
                "names, or a model in the policy's gpu_models)"
            )
        return self


class SiteGpuModel(_Section):
    """A GPU model the catalog lacks, added by a site. Units: W, MHz, degrees C."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    """The model's key, as servers in this file may name it."""
    nvml_names: tuple[Annotated[str, Field(min_length=1, max_length=96)], ...] = ()
    """Names NVML reports for it (`nvidia-smi --query-gpu=name`)."""
    min_cap_w: PositiveW
    """Lowest power limit the GPU accepts. Units: W."""
    max_cap_w: PositiveW
    """Highest power limit (its TDP). Units: W."""
    idle_w: Annotated[float, Field(ge=0)]
    """Power drawn idle. Units: W."""
    min_sm_clock_mhz: PositiveW
    """Lowest supported SM clock. Units: MHz."""
    max_sm_clock_mhz: PositiveW
    """Highest (boost) SM clock. Units: MHz."""
    sm_clock_step_mhz: PositiveW = 15.0
    """Step between supported SM clocks. Units: MHz."""
    memory_clock_mhz: PositiveW
    """Memory clock. Units: MHz."""
    slowdown_temp_c: float = 87.0
    """Temperature at which the GPU slows itself. Units: degrees C."""
    shutdown_temp_c: float = 92.0
    """Temperature at which it shuts down. Units: degrees C."""
    source: str = "site policy"
    """Where the figures come from (a datasheet, your own nvidia-smi -q)."""

    def model(self) -> GpuModel:
        return GpuModel(**self.model_dump())


class RackSpec(_Section):
    """A rack: its breaker (PDU) rating in W and its servers, in GPU order."""

    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """Rack id, as its agent names itself in topics (letters, digits, '_', '.', '-')."""
    breaker_w: PositiveW
    """The rack breaker's (PDU's) rating. Units: W."""
    servers: Annotated[list[ServerSpec], Field(min_length=1)]
    """The rack's servers, in GPU order."""


class RowSpec(_Section):
    id: Annotated[str, Field(min_length=1)]
    """Row id."""
    limit_w: PositiveW | None = None
    """The row's power limit (its busway or PDU feed), if any. Units: W."""
    racks: Annotated[list[RackSpec], Field(min_length=1)]
    """The row's racks."""


class InlineTopology(_Section):
    """An explicit inventory: rows of racks of servers (inline, or in `inventory` as a file)."""

    rows: Annotated[list[RowSpec], Field(min_length=1)]
    """Rows of racks of servers."""


class TopologySection(_Section):
    """Exactly one of: `generate` (a regular fleet), `rows` (inline) or `inventory` (a file).

    A relative inventory path is resolved against the policy file's directory.
    """

    generate: GeneratedTopology | None = None
    """A regular fleet generated from a few counts (demos, tests, benchmarks)."""
    rows: list[RowSpec] | None = None
    """An explicit inventory: rows of racks of servers."""
    inventory: Path | None = None
    """A YAML file holding `rows`, resolved against the policy file's directory."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("generate", "rows", "inventory") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of generate, rows or inventory")
        return self


class SiteSection(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """Site name, the second level of every MQTT topic (letters, digits, '_', '.', '-')."""
    topology: TopologySection
    """The fleet: exactly one of generate, rows or inventory."""


class LimitsSection(_Section):
    """Hard limits. `contract_w` is the site's utility contract (the site limit before DR).

    `rack_breaker_w` overrides every rack's rating; `rack_derating` is the usable fraction of a
    breaker's rating (NEC plans continuous load at 0.8 of it).
    """

    contract_w: PositiveW | None = None
    """The site's utility contract, the site limit before demand response. Units: W at the wall."""
    rack_breaker_w: PositiveW | None = None
    """Overrides every rack's breaker rating. Units: W."""
    rack_derating: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Usable fraction of a breaker's rating (NEC plans continuous load at 0.8)."""
    row_limit_w: PositiveW | None = None
    """Overrides every row's limit. Units: W."""
    #: Share of wall power that reaches GPUs and server loads. Ratings, the contract, DR targets
    #: and the facility budget are wall power; they are scaled by this before the core compares
    #: them with GPU power plus `overhead_w`. 1.0: `overhead_w` already includes PSU losses (as
    #: the DGX H100 default, measured at the wall, does).
    psu_efficiency: Annotated[float, Field(gt=0.5, le=1)] = 1.0
    """Share of wall power that reaches GPUs and server loads; 1.0 when overhead_w already
    includes PSU losses.
    """


class TiersSection(_Section):
    """Workload class (as telemetry names it) → flex tier, 0 = never slowed first, 3 = most.

    A class not listed, and a GPU nobody has reported yet, gets `default`.
    """

    default: Tier = 1
    """Flex tier of a workload class not listed, and of a GPU nobody has reported yet (0 to 3)."""
    classes: dict[str, Tier] = Field(default_factory=dict)
    """Workload class (as telemetry names it) to flex tier: 0 is slowed last, 3 first."""


class CappingSection(_Finite):
    deadband_w: Annotated[float, Field(ge=0)] = 10.0
    """Cap changes smaller than this are not sent, so caps do not chatter. Units: W."""
    raise_rate_w_per_s: PositiveW = 200.0
    """How fast one GPU's cap may rise; lowering is immediate. Units: W/s."""
    demand_headroom_frac: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Headroom granted over a GPU's recent draw, so a capped GPU's rising demand becomes
    visible.
    """
    demand_headroom_min_w: Annotated[float, Field(ge=0)] = 20.0
    """The least such headroom. Units: W."""
    pinned_frac: Annotated[float, Field(gt=0, le=1)] = 0.97
    """A GPU drawing within this fraction of its cap is treated as pinned (it wants more)."""
    demand_hold_s: Annotated[float, Field(ge=0)] = 3.0
    """Time constant of the demand peak-hold, so a synchronous job's communication dips do not
    hand its power away; 0 disables it. Units: s.
    """
    site_margin_frac: Annotated[float, Field(ge=0, lt=0.5)] = 0.002
    """Share of the site limit kept free for surges the caps cannot stop (a GPU's limiter takes
    about 0.1 s).
    """
    flex_tolerances: tuple[Fraction, Fraction, Fraction, Fraction] = DEFAULT_FLEX_TOLERANCES
    """Slowdown each Flex tier tolerates, Flex 0 to 3 (fractions in [0, 1), not falling with the
    tier). Every GPU is first kept at the cap where the policy's model puts its speed at
    (1 - tolerance) of uncapped, Flex 0 first; the rest goes in strict tier order. All zeros is
    plain strict tiers.
    """

    @model_validator(mode="after")
    def _tolerances_rise(self) -> Self:
        t = self.flex_tolerances
        if any(b < a for a, b in pairwise(t)):
            raise ValueError("flex_tolerances must not fall from Flex 0 to Flex 3")
        return self


class RampSection(_Finite):
    """Limits on how fast the allowed site power moves (W/s); unset means unlimited."""

    site_up_w_per_s: PositiveW | None = None
    """Fastest rise of the allowed site power; unset: unlimited. Units: W/s."""
    site_down_w_per_s: PositiveW | None = None
    """Fastest fall of the allowed site power; unset: unlimited. Units: W/s."""


class DvfsSection(_Finite):
    enabled: bool = True
    """Set SM-clock ceilings as well as power caps."""
    max_loss_frac: Annotated[float, Field(ge=0, lt=1)] = 0.02
    """Throughput a memory-bound GPU may lose to its clock ceiling."""
    memory_bound_ratio: Annotated[float, Field(gt=0)] = 0.6
    """SM activity over memory activity below which work is treated as memory-bound."""
    fit_compute_bound: bool = True
    """Also lock compute-bound GPUs under a binding cap to the clock whose power fits the cap."""
    activity_hold_s: Annotated[float, Field(ge=0)] = 10.0
    """Time constant of the peak-held SM activity the cap-fitting clock is sized for. Units: s."""
    fit_min_swing: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The cap-fitting clock applies only where held activity exceeds the current one by this
    much; 0 fits everywhere.
    """


class DecisionSettingsSection(_Section):
    """The decision core's settings, bounded once for every file that carries them: the policy
    file's `capping`, `ramp` and `dvfs` sections, and a snapshot's `settings` (`rheostat decide`).
    """

    capping: CappingSection = CappingSection()
    """How power caps move (the policy file's `capping`)."""
    ramp: RampSection = RampSection()
    """Limits on how fast the allowed site power moves (the policy file's `ramp`)."""
    dvfs: DvfsSection = DvfsSection()
    """SM-clock ceilings (the policy file's `dvfs`)."""

    def policy_settings(self) -> PolicySettings:
        """The decision core's settings (`policies.decision.PolicySettings`)."""
        capping = CappingSettings(
            deadband_w=self.capping.deadband_w,
            raise_rate_w_per_s=self.capping.raise_rate_w_per_s,
            demand_headroom_frac=self.capping.demand_headroom_frac,
            demand_headroom_min_w=self.capping.demand_headroom_min_w,
            pinned_frac=self.capping.pinned_frac,
            demand_hold_s=self.capping.demand_hold_s,
            site_margin_frac=self.capping.site_margin_frac,
            flex_tolerances=self.capping.flex_tolerances,
            site_ramp_up_w_per_s=self.ramp.site_up_w_per_s,
            site_ramp_down_w_per_s=self.ramp.site_down_w_per_s,
        )
        dvfs = DvfsSettings(
            enabled=self.dvfs.enabled,
            max_loss_frac=self.dvfs.max_loss_frac,
            memory_bound_ratio=self.dvfs.memory_bound_ratio,
            fit_compute_bound=self.dvfs.fit_compute_bound,
            activity_hold_s=self.dvfs.activity_hold_s,
            fit_min_swing=self.dvfs.fit_min_swing,
        )
        return PolicySettings(capping=capping, dvfs=dvfs)


class ControlSection(_Section):
    """Timing of the loop. Units: s.

    Commands are refreshed once `refresh_frac` of their TTL has passed, so one lost refresh never
    lets a rack fall back to its safe caps. Those safe caps travel in every command: unset
    `safe_cap_frac` derives them from the topology (every GPU at the same fraction of its range,
    as high as every limit allows with all racks on them at once); set, it is the share of each
    GPU's max cap, refused unless all racks on it at once fit every limit.
    """

    tick_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Period of the control loop. Units: s."""
    command_ttl_s: Annotated[float, Field(gt=0)] = 30.0
    """Lifetime of a command on the rack agent's clock; past it the rack applies its safe caps.
    Units: s.
    """
    refresh_frac: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """Share of the TTL after which a rack's command is resent, so one lost refresh never
    expires it.
    """
    stale_after_s: Annotated[float, Field(gt=0)] = 5.0
    """A rack with no telemetry for this long is stale: budgeted at its caps, not its draw.
    Units: s.
    """
    restart_gap_s: Annotated[float, Field(ge=0)] = 1.0
    """A telemetry message with an old seq is still accepted when its timestamp is this much
    newer than the last one: the agent restarted. Units: s.
    """
    safe_cap_frac: Annotated[float, Field(gt=0, le=1)] | None = None
    """Share of each GPU's maximum cap that rack agents fall back to when a command expires;
    unset (the default) derives the safe caps from the topology so that every rack on them at once
    fits every limit. A set value is refused where it does not fit.
    """
    ready_fresh_frac: Annotated[float, Field(ge=0, le=1)] = 0.9
    """Share of racks that must report before /readyz says ready."""
    livez_max_age_ticks: Annotated[float, Field(gt=1)] = 10.0
    """/livez fails when no tick has completed for this many periods."""
    #: Poll the policy file this often and reload it on a change; None: reload on SIGHUP only.
    watch_policy_s: PositiveW | None = None
    """Poll the policy file this often and reload it when it changes; unset: reload on SIGHUP
    only. Units: s.
    """

    @model_validator(mode="after")
    def _ttl_covers_ticks(self) -> Self:
        if self.command_ttl_s * self.refresh_frac < self.tick_period_s:
            raise ValueError("command_ttl_s * refresh_frac must be at least tick_period_s")
        return self


class TlsSection(_Section):
    ca_file: Path | None = None
    """CA certificate(s) the broker's certificate is checked against (PEM)."""
    cert_file: Path | None = None
    """Client certificate for the broker (PEM)."""
    key_file: Path | None = None
    """Private key of the client certificate (PEM)."""
    insecure: bool = False
    """Skip the check of the broker's certificate host name (tests only)."""


class MqttSection(_Section):
    """Broker connection. The password belongs in the environment or a secrets directory
    (`RHEOSTAT_MQTT_PASSWORD`, see `controller.settings`), not in the file.
    """

    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    """Broker port."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT version: '5' or '3.1.1'."""
    client_id: Annotated[str, Field(min_length=1)] = "rheostat-controller"
    """MQTT client id of the controller."""
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    """MQTT keepalive interval. Units: s."""
    username: str | None = None
    """Broker user name, if the broker asks for one."""
    password: SecretStr | None = None
    """Broker password written in the file; prefer RHEOSTAT_MQTT_PASSWORD or a secrets directory
    (rheostat check warns).
    """
    password_env: str | None = None
    """Deprecated: an environment variable holding the password; set RHEOSTAT_MQTT_PASSWORD
    instead.
    """
    password_file: Path | None = None
    """Deprecated: a file holding the password; use a secrets directory file named
    rheostat_mqtt_password.
    """
    tls: TlsSection | None = None
    """TLS to the broker; unset: plain TCP."""
    timeout_s: PositiveW = 10.0
    """Timeout for connecting and for acknowledgements. Units: s."""

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env and password_file")
        return self


#: Default metrics port. Prometheus' list of exporter ports (9100-9999) has been full since 2023
#: and 9464 is OpenTelemetry's Prometheus exporter; this one clashes with no well-known exporter,
#: sits below Linux's ephemeral range (32768+) and keeps the old number recognisable.
DEFAULT_METRICS_PORT = 19464


class MetricsSection(_Section):
    host: str = "127.0.0.1"
    """Address the /metrics, /livez and /readyz endpoint listens on."""
    port: Annotated[int, Field(ge=0, lt=65536)] = DEFAULT_METRICS_PORT
    """Port of that endpoint; 0 picks a free one."""
    per_gpu: bool = False
    """Also export per-GPU series (high cardinality on large fleets)."""


class LoggingSection(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    """json, console, or auto: JSON lines unless stderr is a terminal."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level logged; per-tick detail is at debug, a periodic summary at info."""
    summary_period_s: Annotated[float, Field(gt=0)] = 60.0
    """How often the daemon logs a summary of its ticks at info. Units: s."""


class PolicyFile(_Section):
    """The whole policy file. Only `site` is required."""

    gpu_models: tuple[SiteGpuModel, ...] = ()
    """GPU models the catalog lacks; validated (and registered) before `site`, which names them."""
    site: SiteSection
    """The site's name and its fleet."""
    limits: LimitsSection = LimitsSection()
    """Hard limits: contract, breakers, rows, PSU efficiency."""
    tiers: TiersSection = TiersSection()
    """Workload classes to flex tiers."""
    capping: CappingSection = CappingSection()
    """How power caps move."""
    ramp: RampSection = RampSection()
    """Limits on how fast the allowed site power moves."""
    dvfs: DvfsSection = DvfsSection()
    """SM-clock ceilings."""
    control: ControlSection = ControlSection()
    """Timing of the control loop and of commands."""
    mqtt: MqttSection = MqttSection()
    """The broker connection."""
    metrics: MetricsSection = MetricsSection()
    """The Prometheus and health endpoint."""
    logging: LoggingSection = LoggingSection()
    """Log format and level."""
    telemetry: TelemetrySection = TelemetrySection()
    """Bounds on network input: clock skew, workload classes, jobs."""
    demand_response: DemandResponseSection | None = None
    """Demand response: grid events over MQTT, OpenADR or in this file; unset: none."""
    #: The contract at the facility meter (cooling and losses included); None: IT power only.
    facility: FacilitySection | None = None
    """The contract at the facility meter (cooling and losses included); unset: IT power only."""
    #: Flexible jobs planned against a carbon or price signal; None: no shifting.
    carbon: CarbonSection | None = None
    """Flexible jobs planned against a carbon or price signal; unset: no shifting."""
    nodes: Path | None = None
    """The node inventory file (hostnames to racks), relative to the policy file: node agents'
    telemetry is assembled into racks through it. Unset: rack-level agents only."""
    ha: HaSection = HaSection()
    """Leader election and fencing between a site's controllers; `none`: a lone controller."""
    ingest: IngestSection = IngestSection()
    """Telemetry ingest in worker processes on an MQTT 5 shared subscription; 0: in-process."""

    @model_validator(mode="after")
    def _failover_inside_ttl(self) -> Self:
        c = self.control
        error = self.ha.failover_budget_error(
            command_ttl_s=c.command_ttl_s,
            refresh_frac=c.refresh_frac,
            tick_period_s=c.tick_period_s,
        )
        if error is not None:
            raise ValueError(error)
        return self

    @field_validator("gpu_models", mode="after")
    @classmethod
    def _register_models(cls, models: tuple[SiteGpuModel, ...]) -> tuple[SiteGpuModel, ...]:
        for spec in models:
            try:
                register_model(spec.model())
            except TopologyError as exc:
                raise ValueError(str(exc)) from None
        return models

    def policy_settings(self) -> PolicySettings:
        """The decision core's settings, from the capping, ramp and DVFS sections."""
        return DecisionSettingsSection(
            capping=self.capping, ramp=self.ramp, dvfs=self.dvfs
        ).policy_settings()
