"""Scenario sections for the features around the controller: the facility plant and the
carbon-aware schedule of flexible work.

They sit apart from the modules that run them (`simulator.facility`, `simulator.carbon`) so the
scenario model imports only data and those modules may take a `Scenario` without a circle.
Where a field is also a setting of the decision core its default comes from the core's
settings class (`FacilitySettings`, `CarbonSettings`), the one place it is set.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.carbon import CarbonSettings
from policies.errors import PolicyError
from policies.facility import CoolingModel, FacilitySettings


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


_CARBON = CarbonSettings()


class CarbonPolicySpec(_Model):
    """Carbon-aware budgets for flexible work (needs `grid.carbon`).

    `schedule` and `work_target_frac` describe the scenario (what runs, what each job owes);
    the rest are the planner's `CarbonSettings`, defaults included.
    """

    schedule: Literal["carbon", "run_to_target", "even"] = Field(
        default="carbon",
        description="carbon = the carbon-aware plan; run_to_target = the blind twin (full speed "
        "until the daily target is done, then stop); even = the same work spread evenly",
    )
    shift_tiers: tuple[int, ...] = _CARBON.shift_tiers
    work_target_frac: tuple[float, float, float, float] = Field(
        (1.0, 1.0, 0.85, 0.7),
        description="per tier, daily work owed as a fraction of running flat out all day",
    )
    tolerances: tuple[float, ...] = _CARBON.tolerances
    slot_s: float = Field(_CARBON.slot_s, gt=0, description="re-planning period")
    track_s: float = Field(
        _CARBON.track_s, gt=0, description="least span over which measured speed is taken"
    )

    @model_validator(mode="after")
    def _valid(self) -> CarbonPolicySpec:
        if any(not 0 < f <= 1 for f in self.work_target_frac):
            raise ValueError("work_target_frac entries must lie in (0, 1]")
        try:
            self.settings()
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return self

    def settings(self) -> CarbonSettings:
        """The planner's settings for this schedule."""
        return CarbonSettings(
            shift_tiers=self.shift_tiers,
            tolerances=self.tolerances,
            slot_s=self.slot_s,
            track_s=self.track_s,
        )
