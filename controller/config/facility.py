"""The policy file's `facility` section: the contract at the facility meter and the plant model.

Defaults come from the decision core's `CoolingModel` and `FacilitySettings`, the one place they
are set; the simulator's plant takes the same ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from controller.config.base import Section
from policies.facility import CoolingModel, FacilitySettings, FacilityStage

_MODEL = CoolingModel()
_SETTINGS = FacilitySettings()


class FacilitySection(Section):
    """The policy file's `facility` section (every key optional). Units in names.

    `contract_w` is the utility contract at the facility meter (default: `limits.contract_w`);
    `carbon_file` is a CSV of `unix_s,intensity_kg_per_mwh` read at start-up.
    """

    contract_w: float | None = Field(None, gt=0)
    """The utility contract at the facility meter; unset: limits.contract_w. Units: W."""
    cooling: Literal["air", "liquid"] = _MODEL.kind
    """Cooling plant: air (chillers) or liquid (direct liquid cooling)."""
    cop_ref: float = Field(_MODEL.cop_ref, gt=0)
    """The chiller's coefficient of performance at the reference temperature."""
    cop_slope_per_c: float = Field(_MODEL.cop_slope_per_c, ge=0)
    """How much the COP falls per degree C warmer outdoors."""
    dlc_base_frac: float = Field(_MODEL.dlc_base_frac, ge=0)
    """With liquid cooling, the cooling draw as a share of IT power at the reference temperature."""
    ups_loss_frac: float = Field(_MODEL.ups_loss_frac, ge=0, lt=0.5)
    """UPS and distribution losses as a share of IT power."""
    fixed_w: float = Field(_MODEL.fixed_w, ge=0)
    """Fixed facility draw (lighting, offices). Units: W."""
    design_outdoor_c: float = Field(35.0, description="assumed when the meter sends none")
    """Outdoor temperature assumed when the meter sends none. Units: degrees C."""
    meter_timeout_s: float = Field(_SETTINGS.meter_timeout_s, gt=0)
    """A meter reading older than this is stale. Units: s."""
    fresh_margin_frac: float = Field(_SETTINGS.fresh_margin_frac, ge=0, lt=0.5)
    """Margin kept below the contract while the meter is fresh."""
    stale_margin_frac: float = Field(_SETTINGS.stale_margin_frac, ge=0, lt=0.5)
    """Margin kept below the contract while the meter is stale."""
    max_margin_frac: float = Field(_SETTINGS.max_margin_frac, ge=0, lt=0.5)
    """The widest margin below the contract, which a stale meter's margin grows to."""
    price_per_mwh: float = Field(0.0, ge=0)
    """Energy price, for the cost counters. Units: currency per MWh."""
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    """ISO 4217 code of `price_per_mwh`'s currency; exported as `rheostat_energy_cost_info`."""
    carbon_file: Path | None = None
    """CSV of `unix_s,intensity_kg_per_mwh`, read at start-up."""

    def settings(self) -> FacilitySettings:
        """The decision core's settings for this section."""
        return FacilitySettings(
            model=CoolingModel(
                kind=self.cooling,
                cop_ref=self.cop_ref,
                cop_slope_per_c=self.cop_slope_per_c,
                dlc_base_frac=self.dlc_base_frac,
                ups_loss_frac=self.ups_loss_frac,
                fixed_w=self.fixed_w,
            ),
            meter_timeout_s=self.meter_timeout_s,
            fresh_margin_frac=self.fresh_margin_frac,
            stale_margin_frac=self.stale_margin_frac,
            max_margin_frac=self.max_margin_frac,
        )

    def stage(self, *, fallback_contract_w: float | None) -> FacilityStage:
        """A fresh facility stage; the policy's `limits.contract_w` stands in for an unset one."""
        contract = self.contract_w if self.contract_w is not None else fallback_contract_w
        return FacilityStage(
            settings=self.settings(),
            contract_w=math.inf if contract is None else contract,
            design_outdoor_c=self.design_outdoor_c,
        )
