"""The daemon's facility edge: the facility-meter topic, the `facility` policy section, metrics.

The contract and demand-response targets apply at the facility meter (IT + cooling + losses +
fixed loads). Each tick `FacilityHook.limits` turns the site limit in force into an IT budget with
`policies.facility.it_budget`: from the last meter reading while it is fresh, from the cooling
model with a widening margin when it is stale or has never come. It also counts facility energy,
emissions (energy x carbon intensity, when a signal file is configured) and energy cost per Flex
tier, which `FacilityCollector` exports as counters.

Facility-meter topic, wire protocol v1 (QoS 0, JSON, from the building-management gateway):
  rheostat/v1/<site>/facility
  {"v": 1, "ts": 1764300000.0, "facility_w": 1520000.0, "it_w": 1180000.0, "outdoor_c": 31.5}
`it_w` (the IT power measured with the same instant's facility reading) and `outdoor_c` are
optional: without them the sum of the racks' reported power and the section's `design_outdoor_c`
stand in.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.config.facility import FacilitySection
from controller.metric_families import describe_families
from controller.wire import MeterReading, decode_meter, facility_topic
from policies.carbon import per_tier_totals
from policies.decision import Limits
from policies.errors import ConfigError, ProtocolError
from policies.facility import FacilityStage, ItBudget, MeterSample
from policies.stages import dc_w, wall_w
from policies.tiers import N_TIERS

__all__ = ["FacilityCollector", "FacilityHook", "FacilitySection", "load_carbon_file"]


def load_carbon_file(path: Path) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(Unix seconds, kg CO2/MWh) from a two-column CSV with a header; times must increase."""
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            rows = [(float(a), float(b)) for a, b in reader]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read carbon signal: {exc}", file=str(path)) from None
    if not rows:
        raise ConfigError("carbon signal has no rows", file=str(path))
    t = np.array([r[0] for r in rows])
    if np.any(np.diff(t) <= 0):
        raise ConfigError("times must increase", file=str(path), field="unix_s")
    return t, np.array([r[1] for r in rows])


@dataclass(eq=False, kw_only=True)
class FacilityHook:
    """The facility meter's topic, accounting and metrics for one running daemon.

    The IT budget itself is `policies.facility.FacilityStage` (`stage`), the same one the
    simulator runs; this hook feeds it the meter's readings. Units: W, s, kg, currency.
    """

    section: FacilitySection
    site: str
    base_dir: Path | None = None
    #: The policy's `limits.psu_efficiency`: the IT budget is wall power, the core's is not.
    psu_efficiency: float = 1.0
    #: The policy's `limits.contract_w`, used when the section sets no contract of its own.
    fallback_contract_w: float | None = None
    last: MeterReading | None = None
    received_at_s: float = -math.inf
    rejected: int = 0
    facility_w: float = math.nan
    it_w: float = math.nan
    tier_co2_kg: NDArray[np.float64] = field(default_factory=lambda: np.zeros(N_TIERS))
    tier_cost: NDArray[np.float64] = field(default_factory=lambda: np.zeros(N_TIERS))
    facility_energy_j: float = 0.0
    stage: FacilityStage = field(init=False)
    _carbon: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None

    def __post_init__(self) -> None:
        self.stage = self.section.stage(fallback_contract_w=self.fallback_contract_w)
        path = self.section.carbon_file
        if path is not None:
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            self._carbon = load_carbon_file(path)

    @property
    def budget(self) -> ItBudget | None:
        """The IT budget of the last tick (wall power), None before the first."""
        return self.stage.budget

    @property
    def topics(self) -> tuple[str, ...]:
        return (facility_topic(self.site),)

    def handle(self, topic: str, payload: bytes, *, now_s: float) -> bool:
        """Take a facility-meter message; False for other topics. Bad messages are counted."""
        if topic != facility_topic(self.site):
            return False
        try:
            reading = decode_meter(payload)
        except ProtocolError:
            self.rejected += 1
            return True
        sample = MeterSample(
            ts=reading.ts,
            facility_w=reading.facility_w,
            it_w=reading.it_w,
            outdoor_c=reading.outdoor_c,
        )
        if self.stage.take(sample):
            self.last, self.received_at_s = reading, now_s
        return True

    def routed(
        self, inner: Callable[[str, bytes], bool], *, clock: Callable[[], float]
    ) -> Callable[[str, bytes], bool]:
        """A message handler that takes facility-meter messages and passes the rest on."""

        def handle(topic: str, payload: bytes) -> bool:
            return self.handle(topic, payload, now_s=clock()) or inner(topic, payload)

        return handle

    def intensity_kg_per_mwh(self, now_s: float) -> float | None:
        if self._carbon is None:
            return None
        t, value = self._carbon
        k = int(np.clip(np.searchsorted(t, now_s, side="right") - 1, 0, value.size - 1))
        return float(value[k])

    def metered_w(self, now_s: float, it_power_w: float) -> float:
        """Facility power now: the meter while it is fresh, else the cooling model's estimate.

        Demand-response baselines and targets are taken at this meter, like the contract.
        """
        return self.stage.metered_w(now_s, it_power_w)

    def limits(
        self, limits: Limits, *, now_s: float, it_power_w: float, fallback_w: float
    ) -> Limits:
        """`limits` with the site limit turned into an IT budget (the core's DC side).

        The facility limit is the lowest of the section's contract (or `fallback_w`) and the
        site limit already in force (DC side, a DR limit say). The daemon's tick runs `stage`
        instead; this is the same budget for a caller holding core-side `Limits`.
        """
        eff = self.psu_efficiency
        contract = self.section.contract_w if self.section.contract_w is not None else fallback_w
        facility_limit = min(
            contract,
            wall_w(limits.site_limit_w, eff) if limits.site_limit_w is not None else math.inf,
        )
        got = self.stage.it_budget(facility_limit, now_s=now_s, it_power_w=it_power_w)
        if not math.isfinite(got.budget_w):
            return limits
        return replace(limits, site_limit_w=dc_w(got.budget_w, eff))

    def account(
        self,
        *,
        now_s: float,
        dt_s: float,
        it_power_w: float,
        gpu_power_w: NDArray[np.float64],
        tier: NDArray[np.int8],
    ) -> None:
        """Count this tick's facility energy, emissions and cost per tier."""
        facility = self.metered_w(now_s, it_power_w)
        self.facility_w, self.it_w = facility, it_power_w
        if dt_s <= 0:
            return
        self.facility_energy_j += facility * dt_s
        co2, cost = per_tier_totals(
            gpu_power_w,
            tier,
            facility_w=facility,
            intensity_kg_per_mwh=self.intensity_kg_per_mwh(now_s) or 0.0,
            price_per_mwh=self.section.price_per_mwh,
            dt_s=dt_s,
        )
        self.tier_co2_kg += co2
        self.tier_cost += cost


GRAMS_PER_KG = 1000.0

#: Every family `FacilityCollector` may yield, with its type (for `describe`).
FACILITY_FAMILIES = (
    ("facility_power_watts", "gauge"),
    ("it_budget_watts", "gauge"),
    ("facility_margin_ratio", "gauge"),
    ("pue", "gauge"),
    ("facility_meter_age_seconds", "gauge"),
    ("energy_cost_info", "gauge"),
    ("facility_meter_rejected", "counter"),
    ("facility_energy_joules", "counter"),
    ("emissions_grams", "counter"),
    ("energy_cost", "counter"),
)


class FacilityCollector(Collector):
    """`rheostat_facility_*`, `rheostat_pue`, `rheostat_it_budget_watts` and per-tier counters."""

    def __init__(self, hook: FacilityHook, *, clock: Callable[[], float]) -> None:
        self.hook = hook
        self.clock = clock
        self.started_s = clock()

    def describe(self) -> list[Metric]:
        return describe_families(FACILITY_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        hook = self.hook
        site = hook.site

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            # NaN (no budget yet, no IT power) and +Inf (no reading yet) leave the series out.
            fam = GaugeMetricFamily(f"rheostat_{name}", doc, labels=["site"])
            if math.isfinite(value):
                fam.add_metric([site], value)
            return fam

        yield gauge("facility_power_watts", "Facility power (meter, else model).", hook.facility_w)
        budget = hook.budget
        yield gauge(
            "it_budget_watts",
            "IT power allowed under the facility limit.",
            budget.budget_w if budget is not None else math.nan,
        )
        yield gauge(
            "facility_margin_ratio",
            "Safety margin of the IT budget (widens while the meter is silent).",
            budget.margin_frac if budget is not None else math.nan,
        )
        reading = hook.last
        pue = hook.facility_w / hook.it_w if hook.it_w > 0 else math.nan
        yield gauge("pue", "Facility power over IT power.", pue)
        # Before any reading the age counts from start-up, so a meter that never spoke still
        # trips the silence alert (an infinite age would be an invalid sample).
        since = reading.ts if reading is not None else self.started_s
        yield gauge(
            "facility_meter_age_seconds",
            "Age of the last facility reading (since start-up while none has come).",
            self.clock() - since,
        )
        rejected = CounterMetricFamily(
            "rheostat_facility_meter_rejected", "Facility messages rejected.", labels=["site"]
        )
        rejected.add_metric([site], float(hook.rejected))
        yield rejected
        energy = CounterMetricFamily(
            "rheostat_facility_energy_joules", "Facility energy counted.", labels=["site"]
        )
        energy.add_metric([site], hook.facility_energy_j)
        yield energy
        # Grams: Prometheus' base unit of mass (the hook counts kg).
        co2 = CounterMetricFamily(
            "rheostat_emissions_grams",
            "CO2 emitted (energy x carbon intensity), by Flex tier. Units: g.",
            labels=["site", "tier"],
        )
        cost = CounterMetricFamily(
            "rheostat_energy_cost",
            "Energy cost (price x energy), by Flex tier.",
            labels=["site", "tier"],
        )
        for t in range(N_TIERS):
            co2.add_metric([site, str(t)], float(hook.tier_co2_kg[t]) * GRAMS_PER_KG)
            cost.add_metric([site, str(t)], float(hook.tier_cost[t]))
        yield co2
        yield cost
        # The currency rides on an info series: join it (`* on (site) group_left (currency)`).
        info = GaugeMetricFamily(
            "rheostat_energy_cost_info",
            "The currency of rheostat_energy_cost_total; the value is always 1.",
            labels=["site", "currency"],
        )
        info.add_metric([site, hook.section.currency], 1.0)
        yield info
