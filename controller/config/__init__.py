"""The policy file's schema: frozen pydantic models, one module per section.

A leaf package: it imports pydantic, the standard library and `policies` (the decision core's
settings and GPU catalog), never the daemon's runtime modules, which import their sections from
here. The file is parsed and validated once, at the entry point
(`controller.policy_file.load_policy`), into `PolicyFile`; the daemon never reads YAML or the
environment after that. Units are in every field name.

- `base`: the common model config and unit types;
- `topology`: `site` (name, fleet) and `gpu_models`; `limits`: `limits`, `tiers`;
- `decision`: `capping`, `ramp`, `dvfs` (and a snapshot's `settings`); `control`: `control`;
- `service`: `mqtt`, `metrics`, `logging`; `telemetry`: `telemetry`; `ingest`: `ingest`;
- `ha`: `ha`; `grid`: `demand_response`; `policy`: `PolicyFile`, the whole file.
"""

from controller.config.base import FiniteSection, Fraction, PositiveW, Seconds, Section, Tier
from controller.config.control import ControlSection
from controller.config.decision import (
    CappingSection,
    DecisionSettingsSection,
    DvfsSection,
    LendSection,
    RampSection,
)
from controller.config.grid import DemandResponseSection, OpenAdrSection, ScheduledEvent
from controller.config.ha import MIN_LEASE_TTL_S, EtcdSection, HaSection, KubernetesSection
from controller.config.ingest import GROUP_PATTERN, IngestSection
from controller.config.limits import LimitsSection, TiersSection
from controller.config.policy import PolicyFile
from controller.config.service import (
    DEFAULT_METRICS_PORT,
    LoggingSection,
    MetricsSection,
    MqttSection,
    TlsSection,
)
from controller.config.telemetry import MAX_CLASSES, TelemetrySection
from controller.config.topology import (
    GeneratedTopology,
    InlineTopology,
    RackSpec,
    RowSpec,
    ServerSpec,
    SiteGpuModel,
    SiteSection,
    TopologySection,
)

__all__ = [
    "DEFAULT_METRICS_PORT",
    "GROUP_PATTERN",
    "MAX_CLASSES",
    "MIN_LEASE_TTL_S",
    "CappingSection",
    "ControlSection",
    "DecisionSettingsSection",
    "DemandResponseSection",
    "DvfsSection",
    "EtcdSection",
    "FiniteSection",
    "Fraction",
    "GeneratedTopology",
    "HaSection",
    "IngestSection",
    "InlineTopology",
    "KubernetesSection",
    "LendSection",
    "LimitsSection",
    "LoggingSection",
    "MetricsSection",
    "MqttSection",
    "OpenAdrSection",
    "PolicyFile",
    "PositiveW",
    "RackSpec",
    "RampSection",
    "RowSpec",
    "ScheduledEvent",
    "Seconds",
    "Section",
    "ServerSpec",
    "SiteGpuModel",
    "SiteSection",
    "TelemetrySection",
    "Tier",
    "TiersSection",
    "TlsSection",
    "TopologySection",
]
