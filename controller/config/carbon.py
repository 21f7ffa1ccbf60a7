"""The policy file's `carbon` section: flexible jobs planned against a carbon or price signal.

The planning settings' defaults come from the decision core's `CarbonSettings`, the one place
they are set; `settings()` builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from controller.config.base import Section
from policies.carbon import CarbonSettings
from policies.dr.flex import check_tolerances
from policies.errors import ConfigError, PolicyError
from policies.tiers import N_TIERS

_DEFAULTS = CarbonSettings()


class CarbonSection(Section):
    """The policy file's `carbon` section. Units in names; tolerances are slowdown fractions.

    `signal_file` is a CSV `unix_s,value` (a day-ahead forecast), relative to the policy file;
    `mqtt_signal` also takes forecasts from the signal topic. `job_timeout_s`: a job not reported
    for this long runs unshaped, since its progress can no longer be measured.
    """

    enabled: bool = True
    """Shift flexible jobs against the signal."""
    signal: Literal["carbon", "price"] = "carbon"
    """What the forecast measures: carbon intensity or price."""
    signal_file: Path | None = None
    """A CSV forecast `unix_s,value`, relative to the policy file."""
    mqtt_signal: bool = True
    """Also take forecasts from the signal topic."""
    slot_s: Annotated[float, Field(gt=0)] = 300.0
    """Length of a planning slot. Units: s."""
    shift_tiers: tuple[int, ...] = _DEFAULTS.shift_tiers
    """Flex tiers whose jobs are shifted."""
    tolerances: tuple[float, ...] = _DEFAULTS.tolerances
    """Slowdown each flex tier tolerates, by tier."""
    gamma: Annotated[float, Field(gt=1)] = _DEFAULTS.gamma
    """Exponent of the power law power ~ speed^gamma used without a measured curve."""
    track_s: Annotated[float, Field(gt=0)] = 60.0
    """Least time between a job's reports over which its measured speed is taken. Units: s."""
    target_margin_frac: Annotated[float, Field(ge=0, lt=0.5)] = _DEFAULTS.target_margin_frac
    """Plan this much more work than owed, so noise in measured progress never misses a deadline."""
    job_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    """A job not reported for this long runs unshaped. Units: s."""

    @field_validator("shift_tiers")
    @classmethod
    def _tiers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 <= t < N_TIERS for t in value):
            raise ValueError(f"tiers must be in 0..{N_TIERS - 1}")
        return value

    @field_validator("tolerances")
    @classmethod
    def _tolerances(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        try:
            check_tolerances(value)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return value

    def settings(self) -> CarbonSettings:
        try:
            return CarbonSettings(
                shift_tiers=self.shift_tiers,
                tolerances=self.tolerances,
                gamma=self.gamma,
                target_margin_frac=self.target_margin_frac,
            )
        except PolicyError as exc:
            raise ConfigError(str(exc), field="carbon") from None
