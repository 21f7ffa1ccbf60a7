"""From a facility contract to an IT budget: the utility meters cooling and losses, not just GPUs.

A site contract (and a demand-response target) applies at the facility meter: IT power plus
cooling plus UPS/distribution losses plus fixed loads such as lighting. Cooling grows with outdoor
temperature (an air-cooled chiller's efficiency falls as the air it rejects heat into gets
hotter), so a limit enforced on IT power alone overshoots on a hot afternoon. Each tick the
controller turns the facility limit into the IT power it may grant:

- meter fresh: from the measured non-IT share, `(limit x (1 - margin) - fixed) / (1 + overhead)`
  with `overhead = (meter - fixed) / IT - 1` (no worse than the cooling model says), and a small
  margin for the meter's lag behind IT changes;
- meter stale or absent: from the cooling model alone, with a margin that starts wider and widens
  the longer the meter stays silent (the model's error is unchecked meanwhile).

Pure: numbers in, numbers out. Units in names (W, degrees C, s, fractions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from policies.errors import PolicyError
from policies.stages import Idle, Tick

CoolingKind = Literal["air", "liquid"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoolingModel:
    """Non-IT power per watt of IT power, as a function of outdoor temperature.

    Air: a chiller whose coefficient of performance (heat moved per watt) falls linearly with
    outdoor temperature, `cop = cop_ref - cop_slope_per_c x (T - t_ref_c)`, floored at `cop_min`;
    cooling power is IT heat / COP. The defaults (*estimates*: COP about 5.5 at 20 C, 3 at 37 C,
    typical of air-cooled chillers with fans and pumps included) give cooling ~18 % of IT at 20 C
    and ~40 % at 40 C, the share the issue cites for hot days.
    Liquid: direct liquid cooling (warm-water loops, dry coolers, few chillers) takes a smaller,
    flatter share, `dlc_base_frac + dlc_slope_per_c x (T - t_ref_c)` (*estimate*: ~6 % at 20 C).
    Both add `ups_loss_frac` of IT for UPS and distribution losses (*estimate*: 4 %, a
    double-conversion UPS at ~96 % efficiency) and `fixed_w` for lighting and offices.
    """

    kind: CoolingKind = "air"
    t_ref_c: float = 20.0
    cop_ref: float = 5.5
    cop_slope_per_c: float = 0.14
    cop_min: float = 1.5
    dlc_base_frac: float = 0.06
    dlc_slope_per_c: float = 0.002
    ups_loss_frac: float = 0.04
    fixed_w: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("air", "liquid"):
            raise PolicyError(f"cooling kind must be 'air' or 'liquid', not {self.kind!r}")
        if self.cop_min <= 0 or self.cop_ref < self.cop_min:
            raise PolicyError("need cop_ref >= cop_min > 0")
        if min(self.dlc_base_frac, self.ups_loss_frac, self.fixed_w, self.cop_slope_per_c) < 0:
            raise PolicyError("cooling shares, losses, slopes and fixed load must be >= 0")

    def cooling_frac(self, outdoor_c: float) -> float:
        """Cooling power per watt of IT heat at this outdoor temperature. Units: W/W."""
        dt_c = outdoor_c - self.t_ref_c
        if self.kind == "air":
            cop = max(self.cop_ref - self.cop_slope_per_c * dt_c, self.cop_min)
            return 1.0 / cop
        return max(self.dlc_base_frac + self.dlc_slope_per_c * dt_c, 0.0)

    def overhead_frac(self, outdoor_c: float) -> float:
        """Cooling plus UPS/distribution losses per watt of IT (excludes `fixed_w`). Units: W/W."""
        return self.cooling_frac(outdoor_c) * (1.0 + self.ups_loss_frac) + self.ups_loss_frac

    def facility_w(self, it_w: float, outdoor_c: float) -> float:
        """Facility power the model expects for this IT power. Units: W."""
        return it_w * (1.0 + self.overhead_frac(outdoor_c)) + self.fixed_w

    def pue(self, it_w: float, outdoor_c: float) -> float:
        return self.facility_w(it_w, outdoor_c) / it_w if it_w > 0 else math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class FacilitySettings:
    """How cautious the IT budget is. Units: fractions of the facility limit, s.

    `fresh_margin_frac` covers the meter's lag (cooling follows IT load with a delay) and its
    accuracy; `stale_margin_frac` covers the cooling model's error once the meter is silent, and
    grows by `margin_growth_per_s` each second past `meter_timeout_s` up to `max_margin_frac`
    (an absent meter gets the maximum at once).
    """

    model: CoolingModel = CoolingModel()
    meter_timeout_s: float = 15.0
    fresh_margin_frac: float = 0.015
    stale_margin_frac: float = 0.04
    margin_growth_per_s: float = 1e-4
    max_margin_frac: float = 0.10

    def __post_init__(self) -> None:
        margins = (self.fresh_margin_frac, self.stale_margin_frac, self.max_margin_frac)
        if min(margins) < 0 or max(margins) >= 0.5 or self.margin_growth_per_s < 0:
            raise PolicyError("facility margins must lie in [0, 0.5) and grow at >= 0 per s")
        if self.meter_timeout_s <= 0:
            raise PolicyError("meter_timeout_s must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ItBudget:
    """The IT power granted under a facility limit, and how it was derived. Units: W, fractions.

    `source` is 'meter' (fresh facility meter), 'model' (stale or absent meter) or 'none' (no
    facility limit: the budget is unlimited). `pue` is the facility/IT ratio the budget assumes.
    """

    budget_w: float
    source: Literal["meter", "model", "none"]
    margin_frac: float
    overhead_frac: float
    pue: float


def margin_frac(settings: FacilitySettings, meter_age_s: float) -> float:
    """Safety margin for a meter last heard `meter_age_s` ago (inf = never). Units: fraction."""
    if meter_age_s <= settings.meter_timeout_s:
        return settings.fresh_margin_frac
    if not math.isfinite(meter_age_s):
        return settings.max_margin_frac
    grown = settings.stale_margin_frac + settings.margin_growth_per_s * (
        meter_age_s - settings.meter_timeout_s
    )
    return min(max(grown, settings.stale_margin_frac), settings.max_margin_frac)


def it_budget(
    facility_limit_w: float,
    *,
    outdoor_c: float,
    settings: FacilitySettings,
    meter_w: float | None = None,
    meter_it_w: float | None = None,
    meter_age_s: float = math.inf,
) -> ItBudget:
    """IT power allowed so that the facility meter stays under `facility_limit_w`. Units: W.

    `meter_w` is the last facility reading and `meter_it_w` the IT power measured at the same
    instant (the sum of rack feeds); `meter_age_s` is how old they are. A non-finite limit gives
    an unlimited budget.
    """
    model = settings.model
    modelled = model.overhead_frac(outdoor_c)
    if not math.isfinite(facility_limit_w):
        return ItBudget(
            budget_w=math.inf,
            source="none",
            margin_frac=0.0,
            overhead_frac=modelled,
            pue=math.inf,
        )
    if facility_limit_w <= 0:
        raise PolicyError(f"facility limit must be > 0 W, got {facility_limit_w}")
    margin = margin_frac(settings, meter_age_s)
    fresh = (
        meter_w is not None
        and meter_it_w is not None
        and meter_it_w > 0
        and math.isfinite(meter_w)
        and meter_age_s <= settings.meter_timeout_s
    )
    if fresh and meter_w is not None and meter_it_w is not None:
        measured = (meter_w - model.fixed_w) / meter_it_w - 1.0
        # A reading showing under half the modelled overhead is a glitch (or the IT and
        # facility samples straddle a load step), not a cooler afternoon: floor it there.
        overhead = max(measured, 0.5 * modelled)
        source: Literal["meter", "model"] = "meter"
    else:
        overhead = modelled
        source = "model"
    budget = (facility_limit_w * (1.0 - margin) - model.fixed_w) / (1.0 + overhead)
    budget = max(budget, 0.0)
    pue = 1.0 + overhead + model.fixed_w / budget if budget > 0 else math.inf
    return ItBudget(
        budget_w=budget, source=source, margin_frac=margin, overhead_frac=overhead, pue=pue
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSample:
    """One facility-meter reading as it reached the controller. Units: s, W, degrees C.

    `it_w` is the IT power measured at the same instant (None: the racks' sum stands in),
    `outdoor_c` the outdoor temperature sent with it (None: the design value stands in).
    """

    ts: float
    facility_w: float
    it_w: float | None = None
    outdoor_c: float | None = None


@dataclass(eq=False, kw_only=True)
class FacilityStage(Idle):
    """The facility IT budget as a stage: one algorithm for the daemon and the simulator.

    Observes the facility meter (its last reading while fresh, else the cooling model's estimate
    from the racks' power) into `Tick.metered_w`, where demand-response baselines are taken,
    and turns the site limit in force at the facility meter (the lower of `contract_w` and any
    limit an earlier stage set, a DR limit say) into the IT power the racks may draw. Units: W.
    """

    settings: FacilitySettings = field(default_factory=FacilitySettings)
    #: The contract at the facility meter; inf: only the limits other stages set.
    contract_w: float = math.inf
    #: Outdoor temperature assumed while the meter sends none. Units: degrees C.
    design_outdoor_c: float = 35.0
    last: MeterSample | None = None
    #: The latest outdoor temperature known (the meter's, or a weather feed's); None: design.
    outdoor_now_c: float | None = None
    #: This tick's IT budget and how it was derived (for metrics and reports).
    budget: ItBudget | None = None

    def take(self, sample: MeterSample) -> bool:
        """A meter reading arrived; an older one than the last is ignored (False)."""
        if self.last is not None and sample.ts < self.last.ts:
            return False
        self.last = sample
        self.outdoor_now_c = sample.outdoor_c
        return True

    def outdoor_c(self) -> float:
        """The outdoor temperature the budget assumes now. Units: degrees C."""
        return self.design_outdoor_c if self.outdoor_now_c is None else self.outdoor_now_c

    def metered_w(self, now_s: float, it_power_w: float) -> float:
        """Facility power now: the meter while it is fresh, else the cooling model's estimate."""
        reading = self.last
        if reading is not None and now_s - reading.ts <= self.settings.meter_timeout_s:
            return reading.facility_w
        return float(self.settings.model.facility_w(it_power_w, self.outdoor_c()))

    def it_budget(self, facility_limit_w: float, *, now_s: float, it_power_w: float) -> ItBudget:
        """The IT power allowed under `facility_limit_w` from the meter or the model. Units: W."""
        reading = self.last
        if reading is None:
            got = it_budget(facility_limit_w, outdoor_c=self.outdoor_c(), settings=self.settings)
        else:
            got = it_budget(
                facility_limit_w,
                outdoor_c=self.outdoor_c(),
                settings=self.settings,
                meter_w=reading.facility_w,
                meter_it_w=reading.it_w if reading.it_w is not None else it_power_w,
                meter_age_s=max(now_s - reading.ts, 0.0),
            )
        self.budget = got
        return got

    def observe(self, tick: Tick) -> None:
        tick.metered_w = self.metered_w(tick.now_s, tick.site_power_w)

    def limits(self, tick: Tick) -> None:
        limit = min(self.contract_w, tick.site_limit_w)
        got = self.it_budget(limit, now_s=tick.now_s, it_power_w=tick.site_power_w)
        if math.isfinite(got.budget_w):
            tick.site_limit_w = got.budget_w
