"""The policy file's schema: frozen pydantic models, one sub-model per section.

The file is parsed and validated once, at the entry point (`controller.policy_file.load_policy`),
into these models; the daemon never reads YAML or the environment after that. Sections are
separate models so later work (demand response, facility budgets) adds a section without touching
the others. Units are in every field name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.carbon import CarbonSection
from controller.facility import FacilitySection
from controller.grid.config import DemandResponseSection
from controller.ha.config import HaSection
from controller.shard.config import IngestSection
from policies.decision import N_TIERS, CappingSettings, DvfsSettings, PolicySettings
from policies.gpu_models import MODEL_CODE

PositiveW = Annotated[float, Field(gt=0)]
Tier = Annotated[int, Field(ge=0, le=N_TIERS - 1)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GeneratedTopology(_Section):
    """A regular fleet (`policies.topology.generate_topology`): demos, tests and benchmarks."""

    gpus: Annotated[int, Field(gt=0)]
    gpus_per_server: Annotated[int, Field(gt=0)] = 8
    servers_per_rack: Annotated[int, Field(gt=0)] = 4
    racks_per_row: Annotated[int, Field(gt=0)] = 20
    a100_share: Annotated[float, Field(ge=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _whole_servers(self) -> Self:
        if self.gpus % self.gpus_per_server:
            raise ValueError("gpus must be a multiple of gpus_per_server")
        return self


class ServerSpec(_Section):
    """One server: its GPU model (as `nvidia-smi` names it), GPU count and non-GPU draw (W)."""

    model: str
    gpus: Annotated[int, Field(gt=0)] = 8
    overhead_w: Annotated[float, Field(ge=0)] = 2800.0
    limit_w: PositiveW | None = None

    @model_validator(mode="after")
    def _known_model(self) -> Self:
        if self.model not in MODEL_CODE:
            raise ValueError(f"unknown GPU model {self.model!r} (known: {', '.join(MODEL_CODE)})")
        return self


class RackSpec(_Section):
    """A rack: its breaker (PDU) rating in W and its servers, in GPU order."""

    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    breaker_w: PositiveW
    servers: Annotated[list[ServerSpec], Field(min_length=1)]


class RowSpec(_Section):
    id: Annotated[str, Field(min_length=1)]
    limit_w: PositiveW | None = None
    racks: Annotated[list[RackSpec], Field(min_length=1)]


class InlineTopology(_Section):
    """An explicit inventory: rows of racks of servers (inline, or in `inventory` as a file)."""

    rows: Annotated[list[RowSpec], Field(min_length=1)]


class TopologySection(_Section):
    """Exactly one of: `generate` (a regular fleet), `rows` (inline) or `inventory` (a file).

    A relative inventory path is resolved against the policy file's directory.
    """

    generate: GeneratedTopology | None = None
    rows: list[RowSpec] | None = None
    inventory: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("generate", "rows", "inventory") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of generate, rows or inventory")
        return self


class SiteSection(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    topology: TopologySection


class LimitsSection(_Section):
    """Hard limits. `contract_w` is the site's utility contract (the site limit before DR).

    `rack_breaker_w` overrides every rack's rating; `rack_derating` is the usable fraction of a
    breaker's rating (NEC plans continuous load at 0.8 of it).
    """

    contract_w: PositiveW | None = None
    rack_breaker_w: PositiveW | None = None
    rack_derating: Annotated[float, Field(gt=0, le=1)] = 0.8
    row_limit_w: PositiveW | None = None
    #: Share of wall power that reaches GPUs and server loads. Ratings, the contract, DR targets
    #: and the facility budget are wall power; they are scaled by this before the core compares
    #: them with GPU power plus `overhead_w`. 1.0: `overhead_w` already includes PSU losses (as
    #: the DGX H100 default, measured at the wall, does).
    psu_efficiency: Annotated[float, Field(gt=0.5, le=1)] = 1.0


class TiersSection(_Section):
    """Workload class (as telemetry names it) → flex tier, 0 = never slowed first, 3 = most.

    A class not listed, and a GPU nobody has reported yet, gets `default`.
    """

    default: Tier = 1
    classes: dict[str, Tier] = Field(default_factory=dict)


class CappingSection(_Section):
    deadband_w: Annotated[float, Field(ge=0)] = 10.0
    raise_rate_w_per_s: PositiveW = 200.0
    demand_headroom_frac: Annotated[float, Field(ge=0, le=1)] = 0.10
    demand_headroom_min_w: Annotated[float, Field(ge=0)] = 20.0
    pinned_frac: Annotated[float, Field(gt=0, le=1)] = 0.97
    demand_hold_s: Annotated[float, Field(ge=0)] = 3.0
    site_margin_frac: Annotated[float, Field(ge=0, lt=0.5)] = 0.002


class RampSection(_Section):
    """Limits on how fast the allowed site power moves (W/s); unset means unlimited."""

    site_up_w_per_s: PositiveW | None = None
    site_down_w_per_s: PositiveW | None = None


class DvfsSection(_Section):
    enabled: bool = True
    max_loss_frac: Annotated[float, Field(ge=0, lt=1)] = 0.02
    memory_bound_ratio: Annotated[float, Field(gt=0)] = 0.6
    fit_compute_bound: bool = True
    activity_hold_s: Annotated[float, Field(ge=0)] = 10.0
    fit_min_swing: Annotated[float, Field(ge=0, le=1)] = 0.05


class ControlSection(_Section):
    """Timing of the loop. Units: s.

    Commands are refreshed once `refresh_frac` of their TTL has passed, so one lost refresh never
    lets a rack fall back to its safe caps. `safe_cap_frac` is the share of each GPU's max cap that
    rack agents fall back to when a command expires (configured on the agents; here so the demo
    and the documentation agree with the fleet).
    """

    tick_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    command_ttl_s: Annotated[float, Field(gt=0)] = 30.0
    refresh_frac: Annotated[float, Field(gt=0, lt=1)] = 0.5
    stale_after_s: Annotated[float, Field(gt=0)] = 5.0
    restart_gap_s: Annotated[float, Field(ge=0)] = 1.0
    safe_cap_frac: Annotated[float, Field(gt=0, le=1)] = 0.6
    ready_fresh_frac: Annotated[float, Field(ge=0, le=1)] = 0.9
    livez_max_age_ticks: Annotated[float, Field(gt=1)] = 10.0
    #: Poll the policy file this often and reload it on a change; None: reload on SIGHUP only.
    watch_policy_s: PositiveW | None = None

    @model_validator(mode="after")
    def _ttl_covers_ticks(self) -> Self:
        if self.command_ttl_s * self.refresh_frac < self.tick_period_s:
            raise ValueError("command_ttl_s * refresh_frac must be at least tick_period_s")
        return self


class TlsSection(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class MqttSection(_Section):
    """Broker connection. The password comes from an environment variable or a file, not inline."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: Annotated[str, Field(min_length=1)] = "rheostat-controller"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: TlsSection | None = None
    timeout_s: PositiveW = 10.0

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env and password_file")
        return self


class MetricsSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, lt=65536)] = 9464
    per_gpu: bool = False


class LoggingSection(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class PolicyFile(_Section):
    """The whole policy file. Only `site` is required."""

    site: SiteSection
    limits: LimitsSection = LimitsSection()
    tiers: TiersSection = TiersSection()
    capping: CappingSection = CappingSection()
    ramp: RampSection = RampSection()
    dvfs: DvfsSection = DvfsSection()
    control: ControlSection = ControlSection()
    mqtt: MqttSection = MqttSection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()
    demand_response: DemandResponseSection | None = None
    #: The contract at the facility meter (cooling and losses included); None: IT power only.
    facility: FacilitySection | None = None
    #: Flexible jobs planned against a carbon or price signal; None: no shifting.
    carbon: CarbonSection | None = None
    #: Leader election and fencing between a site's controllers; `none`: a lone controller.
    ha: HaSection = HaSection()
    #: Telemetry ingest in worker processes on an MQTT 5 shared subscription; 0: in-process.
    ingest: IngestSection = IngestSection()

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

    def policy_settings(self) -> PolicySettings:
        """The decision core's settings, from the capping, ramp and DVFS sections."""
        capping = CappingSettings(
            deadband_w=self.capping.deadband_w,
            raise_rate_w_per_s=self.capping.raise_rate_w_per_s,
            demand_headroom_frac=self.capping.demand_headroom_frac,
            demand_headroom_min_w=self.capping.demand_headroom_min_w,
            pinned_frac=self.capping.pinned_frac,
            demand_hold_s=self.capping.demand_hold_s,
            site_margin_frac=self.capping.site_margin_frac,
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
