"""The IT budget under a facility limit: meter when fresh, cooling model with a widening margin."""

from __future__ import annotations

import math

import pytest

from policies.errors import PolicyError
from policies.facility import CoolingModel, FacilitySettings, it_budget, margin_frac

AIR = CoolingModel(kind="air", fixed_w=1000.0)
SETTINGS = FacilitySettings(model=AIR)


def test_air_cooling_share_grows_with_outdoor_temperature() -> None:
    cool = [AIR.cooling_frac(t) for t in (10.0, 20.0, 30.0, 40.0)]
    assert cool == sorted(cool)
    assert 0.15 < AIR.cooling_frac(20.0) < 0.2  # COP 5.5 at 20 C
    assert 0.35 < AIR.cooling_frac(40.0) < 0.45  # ~40 % on a hot afternoon


def test_liquid_cooling_is_smaller_and_flatter_than_air() -> None:
    dlc = CoolingModel(kind="liquid")
    assert dlc.cooling_frac(40.0) < AIR.cooling_frac(20.0)
    air_rise = AIR.cooling_frac(40.0) - AIR.cooling_frac(20.0)
    dlc_rise = dlc.cooling_frac(40.0) - dlc.cooling_frac(20.0)
    assert dlc_rise < air_rise / 4


def test_pue_emerges_from_load_and_weather() -> None:
    assert AIR.pue(100e3, 35.0) > AIR.pue(100e3, 20.0) > 1.0
    # Fixed loads weigh more on a lightly loaded facility.
    assert AIR.pue(10e3, 20.0) > AIR.pue(100e3, 20.0)


def test_fresh_meter_budget_keeps_the_facility_under_its_limit() -> None:
    limit_w = 130e3
    # A plant that matches the model: the meter shows what the model predicts.
    it_w = 90e3
    meter_w = AIR.facility_w(it_w, 35.0)
    got = it_budget(
        limit_w, outdoor_c=35.0, settings=SETTINGS, meter_w=meter_w, meter_it_w=it_w, meter_age_s=3
    )
    assert got.source == "meter"
    assert got.margin_frac == SETTINGS.fresh_margin_frac
    assert AIR.facility_w(got.budget_w, 35.0) == pytest.approx(limit_w * (1 - got.margin_frac))


def test_meter_reading_worse_than_the_model_lowers_the_budget() -> None:
    it_w = 90e3
    nominal = AIR.facility_w(it_w, 30.0)
    kw = {"outdoor_c": 30.0, "settings": SETTINGS, "meter_it_w": it_w, "meter_age_s": 1.0}
    good = it_budget(130e3, meter_w=nominal, **kw)  # type: ignore[arg-type]
    bad = it_budget(130e3, meter_w=nominal * 1.1, **kw)  # type: ignore[arg-type]
    assert bad.budget_w < good.budget_w
    assert bad.overhead_frac > good.overhead_frac


@pytest.mark.parametrize("age_s", [16.0, 60.0, 600.0, math.inf])
def test_stale_or_absent_meter_falls_back_on_the_model_with_a_wider_margin(age_s: float) -> None:
    it_w = 90e3
    fresh = it_budget(
        130e3,
        outdoor_c=30.0,
        settings=SETTINGS,
        meter_w=AIR.facility_w(it_w, 30.0),
        meter_it_w=it_w,
        meter_age_s=5.0,
    )
    stale = it_budget(
        130e3,
        outdoor_c=30.0,
        settings=SETTINGS,
        meter_w=AIR.facility_w(it_w, 30.0),
        meter_it_w=it_w,
        meter_age_s=age_s,
    )
    assert stale.source == "model"
    assert stale.margin_frac > fresh.margin_frac
    assert stale.budget_w < fresh.budget_w


def test_margin_widens_with_meter_silence_up_to_its_maximum() -> None:
    ages = [0.0, 15.0, 16.0, 100.0, 300.0, 1e5, math.inf]
    margins = [margin_frac(SETTINGS, a) for a in ages]
    assert margins == sorted(margins)
    assert margins[0] == SETTINGS.fresh_margin_frac
    assert margins[2] == pytest.approx(SETTINGS.stale_margin_frac, abs=1e-3)
    assert margins[-2] == margins[-1] == SETTINGS.max_margin_frac


def test_no_facility_limit_means_no_it_budget_and_bad_inputs_are_refused() -> None:
    assert it_budget(math.inf, outdoor_c=30.0, settings=SETTINGS).budget_w == math.inf
    with pytest.raises(PolicyError):
        it_budget(-5.0, outdoor_c=30.0, settings=SETTINGS)
    with pytest.raises(PolicyError):
        CoolingModel(kind="steam")  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        FacilitySettings(fresh_margin_frac=0.7)


def test_glitched_meter_showing_no_overhead_is_not_believed() -> None:
    it_w = 90e3
    got = it_budget(
        130e3, outdoor_c=35.0, settings=SETTINGS, meter_w=it_w, meter_it_w=it_w, meter_age_s=1.0
    )
    assert got.overhead_frac >= 0.5 * AIR.overhead_frac(35.0)
