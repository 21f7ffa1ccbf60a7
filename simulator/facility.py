"""The facility around the IT load: cooling plant, UPS losses, fixed loads, outdoor air, a meter.

The utility meters the whole facility. Each tick the plant turns IT power (the rack feeds, after
PSU losses) and the outdoor temperature into facility power: UPS/distribution losses at once,
cooling through a first-order lag (chillers and pumps follow heat load over minutes), and fixed
loads. PUE is what falls out, never a constant. The plant's true overhead is the cooling model's
times `true_overhead_scale`, so the controller's model (which it falls back on when the meter is
stale) is wrong by a known amount, as a real one is.

The facility meter samples every `meter_period_s`, arrives `meter_delay_s` late, and loses its
samples during `meter_outages`. The closed loop asks this module for the IT budget the
controller would compute (`policies.facility.it_budget`) and records compliance against the
facility limit, energy, emissions, cost and PUE (`FacilityRun`).
"""

from __future__ import annotations

import csv
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.carbon import per_tier_totals
from policies.errors import ConfigError
from policies.facility import CoolingModel, FacilitySettings, FacilityStage, MeterSample
from policies.tiers import N_TIERS
from simulator.tolerance import is_over

if TYPE_CHECKING:
    from simulator.scenario import Scenario

FloatArray = NDArray[np.float64]
#: Pounds to kilograms (the CAISO trace is in lbs CO2/MWh).
KG_PER_LB = 0.45359237


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutdoorSpec(_Model):
    """Outdoor dry-bulb temperature over the run. Units: degrees C, s, hours.

    `diurnal`: a daily sine around `mean_c` peaking at `peak_hour`, the run starting at
    `start_hour`; `ramp`: `start_c` until `from_s`, rising smoothly to `end_c` at `to_s`;
    `file`: a CSV with columns `t_s,temp_c` (seconds from the run's start), interpolated.
    """

    kind: Literal["diurnal", "ramp", "file"] = "diurnal"
    mean_c: float = 24.0
    amplitude_c: float = Field(6.0, ge=0)
    peak_hour: float = Field(15.0, ge=0, lt=24)
    start_hour: float = Field(0.0, ge=0, lt=24)
    start_c: float = 25.0
    end_c: float = 40.0
    from_s: float = Field(0.0, ge=0)
    to_s: float = Field(14_400.0, gt=0)
    path: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OutdoorSpec:
        if self.kind == "file" and not self.path:
            raise ValueError("outdoor kind 'file' needs a path")
        if self.kind == "ramp" and self.to_s <= self.from_s:
            raise ValueError("ramp needs to_s > from_s")
        return self


class MeterOutage(_Model):
    """A window in which the facility meter's readings never reach the controller."""

    at_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


_MODEL = CoolingModel()
_SETTINGS = FacilitySettings()


class FacilitySpec(_Model):
    """The plant around the IT load; the scenario's site contract applies at its meter.

    The controller's margins and meter timeout default to the decision core's
    `FacilitySettings`, as the daemon's `facility` section does.
    """

    cooling: Literal["air", "liquid"] = _MODEL.kind
    outdoor: OutdoorSpec = OutdoorSpec()
    ups_loss_frac: float = Field(_MODEL.ups_loss_frac, ge=0, lt=0.5)
    fixed_frac: float = Field(
        0.01, ge=0, lt=0.5, description="lighting and offices, of the IT full-power draw"
    )
    true_overhead_scale: float = Field(
        1.05, gt=0, description="the plant's cooling overhead over the controller's model"
    )
    cooling_tau_s: float = Field(120.0, gt=0, description="lag of cooling power behind IT heat")
    meter_period_s: float = Field(5.0, gt=0)
    meter_delay_s: float = Field(2.0, ge=0)
    meter_timeout_s: float = Field(_SETTINGS.meter_timeout_s, gt=0)
    meter_outages: tuple[MeterOutage, ...] = ()
    fresh_margin_frac: float = Field(_SETTINGS.fresh_margin_frac, ge=0, lt=0.5)
    stale_margin_frac: float = Field(_SETTINGS.stale_margin_frac, ge=0, lt=0.5)
    max_margin_frac: float = Field(_SETTINGS.max_margin_frac, ge=0, lt=0.5)


def outdoor_c(spec: OutdoorSpec, t_s: FloatArray, *, base_dir: Path | None = None) -> FloatArray:
    """Outdoor temperature at each time in `t_s` (seconds from the run's start). Units: C."""
    if spec.kind == "diurnal":
        hours = spec.start_hour + t_s / 3600.0
        out: FloatArray = spec.mean_c + spec.amplitude_c * np.cos(
            2.0 * np.pi * (hours - spec.peak_hour) / 24.0
        )
        return out
    if spec.kind == "ramp":
        x = np.clip((t_s - spec.from_s) / (spec.to_s - spec.from_s), 0.0, 1.0)
        smooth = x * x * (3.0 - 2.0 * x)
        ramp: FloatArray = spec.start_c + (spec.end_c - spec.start_c) * smooth
        return ramp
    path = Path(spec.path or "")
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    try:
        with path.open(newline="") as fh:
            rows = [(float(r["t_s"]), float(r["temp_c"])) for r in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read outdoor temperatures: {exc}", file=str(path)) from None
    if not rows:
        raise ConfigError("no outdoor temperature rows", file=str(path))
    times = np.array([r[0] for r in rows])
    if np.any(np.diff(times) <= 0):
        raise ConfigError("t_s must increase", file=str(path), field="t_s")
    interp: FloatArray = np.interp(t_s, times, np.array([r[1] for r in rows]))
    return interp


def settings_for(spec: FacilitySpec, *, fixed_w: float) -> FacilitySettings:
    """The controller's view of the plant: the nominal cooling model and the spec's margins."""
    return FacilitySettings(
        model=CoolingModel(kind=spec.cooling, ups_loss_frac=spec.ups_loss_frac, fixed_w=fixed_w),
        meter_timeout_s=spec.meter_timeout_s,
        fresh_margin_frac=spec.fresh_margin_frac,
        stale_margin_frac=spec.stale_margin_frac,
        max_margin_frac=spec.max_margin_frac,
    )


@dataclass(eq=False, kw_only=True)
class FacilityRun:
    """Plant state, the meter, and what a run accumulates at the facility meter.

    Built by the closed loop when a scenario has a `facility` section or a carbon signal. Without
    a `facility` section the meter is the IT feed itself (PUE 1, no cooling modelled).
    """

    spec: FacilitySpec | None
    settings: FacilitySettings
    tick_s: float
    warmup_s: float
    outdoor_by_tick: FloatArray
    intensity_kg_per_mwh: FloatArray | None
    price_per_mwh: float
    cooling_w: float = 0.0
    facility_w: float = 0.0
    it_w: float = 0.0
    #: The controller's facility stage (`policies.facility`), the daemon's algorithm; None
    #: without a `facility` section (the IT feed is the meter: the limit is the budget).
    stage: FacilityStage | None = None
    _passed_w: float = math.inf
    _passed_source: str = "none"
    _samples: deque[tuple[float, float, float]] = field(default_factory=deque)
    seconds_over: float = 0.0
    max_overshoot_frac: float = 0.0
    energy_j: float = 0.0
    co2_kg: float = 0.0
    cost: float = 0.0
    pue_sum: float = 0.0
    pue_n: int = 0
    tier_co2_kg: FloatArray = field(default_factory=lambda: np.zeros(N_TIERS))
    tier_cost: FloatArray = field(default_factory=lambda: np.zeros(N_TIERS))
    budget_sources_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, scenario: Scenario, *, full_power_w: float, n_ticks: int) -> FacilityRun:
        from simulator.rates import carbon_per_tick  # noqa: PLC0415 - rates reads data files

        spec: FacilitySpec | None = scenario.facility
        warm = scenario.controller.warmup_s
        warm_ticks = round(warm / scenario.tick_s)
        t = (np.arange(-warm_ticks, n_ticks) * scenario.tick_s).astype(np.float64)
        fixed_w = 0.0 if spec is None else spec.fixed_frac * full_power_w
        if spec is None:
            settings = FacilitySettings(model=CoolingModel(kind="liquid", dlc_base_frac=0.0))
            temps = np.full(t.size, 20.0)
        else:
            settings = settings_for(spec, fixed_w=fixed_w)
            temps = outdoor_c(spec.outdoor, t)
        intensity = None
        if scenario.grid.carbon == "caiso":
            lbs = carbon_per_tick(n_ticks, scenario.tick_s, start_s=scenario.grid.carbon_start_s)
            intensity = lbs * KG_PER_LB
        return cls(
            spec=spec,
            settings=settings,
            stage=None if spec is None else FacilityStage(settings=settings),
            tick_s=scenario.tick_s,
            warmup_s=warm_ticks * scenario.tick_s,
            outdoor_by_tick=temps,
            intensity_kg_per_mwh=intensity,
            price_per_mwh=scenario.grid.price_per_mwh,
        )

    def outdoor_at(self, now_s: float) -> float:
        k = round((now_s + self.warmup_s) / self.tick_s)
        return float(self.outdoor_by_tick[min(max(k, 0), self.outdoor_by_tick.size - 1)])

    def step(self, now_s: float, it_w: float) -> float:
        """Advance the plant one tick with this IT power; return facility power. Units: W."""
        self.it_w = it_w
        if self.spec is None:
            self.facility_w = it_w
            return it_w
        spec = self.spec
        model = self.settings.model
        temp = self.outdoor_at(now_s)
        target = it_w * model.cooling_frac(temp) * spec.true_overhead_scale
        if self.facility_w == 0.0:
            self.cooling_w = target  # the plant starts in its steady state
        else:
            self.cooling_w += (target - self.cooling_w) * (
                1.0 - math.exp(-self.tick_s / spec.cooling_tau_s)
            )
        losses = (it_w + self.cooling_w) * model.ups_loss_frac
        self.facility_w = it_w + self.cooling_w + losses + model.fixed_w
        period = max(1, round(spec.meter_period_s / self.tick_s))
        if round(now_s / self.tick_s) % period == 0 and not self.in_outage(now_s):
            self._samples.append((now_s, self.facility_w, it_w))
            while len(self._samples) > 64:
                self._samples.popleft()
        return self.facility_w

    def in_outage(self, now_s: float) -> bool:
        """True while the scenario has the meter silent (its readings never arrive)."""
        if self.spec is None:
            return False
        return any(o.at_s <= now_s < o.at_s + o.duration_s for o in self.spec.meter_outages)

    def meter(self, now_s: float) -> tuple[float, float, float] | None:
        """The newest reading that has arrived by `now_s`: (taken at, facility W, IT W)."""
        delay = 0.0 if self.spec is None else self.spec.meter_delay_s
        for sample in reversed(self._samples):
            if sample[0] <= now_s - delay:
                return sample
        return None

    @property
    def budget_w(self) -> float:
        """The IT budget the controller computed at its last decision. Units: W."""
        if self.stage is None or self.stage.budget is None:
            return self._passed_w
        return self.stage.budget.budget_w

    @property
    def budget_source(self) -> str:
        """How that budget was derived: 'meter', 'model' or 'none' (none computed yet)."""
        if self.stage is None or self.stage.budget is None:
            return self._passed_source
        return self.stage.budget.source

    def feed(self, now_s: float) -> None:
        """What reaches the controller's facility stage by `now_s`: the newest meter reading
        that has arrived, and the outdoor temperature (a weather feed, exact)."""
        if self.stage is None:
            return
        reading = self.meter(now_s)
        if reading is not None:
            taken, fac_w, it_w = reading
            self.stage.take(MeterSample(ts=taken, facility_w=fac_w, it_w=it_w))
        self.stage.outdoor_now_c = self.outdoor_at(now_s)

    def pass_through(self, facility_limit_w: float) -> None:
        """Without a plant the limit at the IT feed is the budget (the meter is the feed)."""
        self._passed_w, self._passed_source = facility_limit_w, "meter"

    def it_budget_w(self, now_s: float, facility_limit_w: float) -> float:
        """The IT budget the controller computes this tick from meter or model. Units: W."""
        if self.stage is None:
            self.pass_through(facility_limit_w)
            return facility_limit_w
        self.feed(now_s)
        return self.stage.it_budget(facility_limit_w, now_s=now_s, it_power_w=self.it_w).budget_w

    def account(
        self,
        k: int,
        *,
        facility_limit_w: float,
        gpu_power_w: FloatArray,
        tier: NDArray[np.int8],
        check: bool,
    ) -> None:
        """Record tick `k` (from 0): compliance at the facility meter, energy, CO2, cost, PUE."""
        dt = self.tick_s
        if check and is_over(self.facility_w, facility_limit_w):
            self.seconds_over += dt
            self.max_overshoot_frac = max(
                self.max_overshoot_frac, self.facility_w / facility_limit_w - 1.0
            )
        self.energy_j += self.facility_w * dt
        intensity = (
            0.0 if self.intensity_kg_per_mwh is None else float(self.intensity_kg_per_mwh[k])
        )
        co2, cost = per_tier_totals(
            gpu_power_w,
            tier,
            facility_w=self.facility_w,
            intensity_kg_per_mwh=intensity,
            price_per_mwh=self.price_per_mwh,
            dt_s=dt,
        )
        self.tier_co2_kg += co2
        self.tier_cost += cost
        self.co2_kg += float(co2.sum())
        self.cost += float(cost.sum())
        if self.it_w > 0:
            self.pue_sum += self.facility_w / self.it_w
            self.pue_n += 1
        self.budget_sources_s[self.budget_source] = (
            self.budget_sources_s.get(self.budget_source, 0.0) + dt
        )

    def summary(self) -> dict[str, object]:
        """The facility figures of `rheostat simulate --json`."""
        has_co2 = self.intensity_kg_per_mwh is not None
        return {
            "co2_kg": round(self.co2_kg, 3) if has_co2 else None,
            "energy_cost": round(self.cost, 2),
            "pue_mean": (
                round(self.pue_sum / self.pue_n, 4)
                if self.pue_n and self.spec is not None
                else None
            ),
            "facility": {
                "energy_kwh": round(self.energy_j / 3.6e6, 3),
                "max_overshoot_pct": round(self.max_overshoot_frac * 100.0, 3),
                "co2_kg_by_tier": [round(float(x), 3) for x in self.tier_co2_kg]
                if has_co2
                else None,
                "energy_cost_by_tier": [round(float(x), 2) for x in self.tier_cost],
                "it_budget_source_s": {k: round(v, 1) for k, v in self.budget_sources_s.items()},
            },
        }
