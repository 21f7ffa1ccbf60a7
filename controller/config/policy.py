"""The whole policy file (`PolicyFile`): one field per section, and the checks across sections.

The file is parsed and validated once, at the entry point (`controller.policy_file.load_policy`),
into these models; the daemon never reads YAML or the environment after that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import field_validator, model_validator

from controller.config.base import Section
from controller.config.carbon import CarbonSection
from controller.config.control import ControlSection
from controller.config.decision import (
    CappingSection,
    DecisionSettingsSection,
    DvfsSection,
    RampSection,
)
from controller.config.facility import FacilitySection
from controller.config.grid import DemandResponseSection
from controller.config.ha import HaSection
from controller.config.ingest import IngestSection
from controller.config.limits import LimitsSection, TiersSection
from controller.config.service import LoggingSection, MetricsSection, MqttSection
from controller.config.telemetry import TelemetrySection
from controller.config.topology import SiteGpuModel, SiteSection
from policies.decision import PolicySettings
from policies.errors import TopologyError
from policies.gpu_models import register_model


class PolicyFile(Section):
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
        ).policy_settings(self.limits.psu_efficiency)
