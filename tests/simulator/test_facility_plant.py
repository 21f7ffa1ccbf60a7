"""The facility plant: PUE emerges from load and weather, cooling lags, the meter can go silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.errors import ConfigError
from simulator.facility import FacilityRun, outdoor_c
from simulator.feature_specs import FacilitySpec, MeterOutage, OutdoorSpec
from simulator.scenario import Scenario

BASE = {
    "name": "plant",
    "duration_s": 600,
    "topology": {"gpus": 32},
    "controller": {"warmup_s": 0},
}


def _plant(**facility: object) -> FacilityRun:
    scenario = Scenario.model_validate({**BASE, "facility": facility})
    return FacilityRun.create(scenario, full_power_w=100e3, n_ticks=600)


def test_outdoor_profiles() -> None:
    t = np.array([0.0, 3600.0 * 3, 3600.0 * 15])
    diurnal = outdoor_c(OutdoorSpec(mean_c=20, amplitude_c=8, peak_hour=15), t)
    assert diurnal[2] == pytest.approx(28.0)
    assert diurnal[1] == pytest.approx(12.0)
    ramp = outdoor_c(OutdoorSpec(kind="ramp", start_c=25, end_c=40, from_s=0, to_s=7200), t)
    assert ramp.tolist() == [25.0, 40.0, 40.0]


def test_outdoor_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "temps.csv"
    path.write_text("t_s,temp_c\n0,20\n3600,30\n")
    got = outdoor_c(OutdoorSpec(kind="file", path=str(path)), np.array([0.0, 1800.0, 9999.0]))
    assert got.tolist() == [20.0, 25.0, 30.0]
    path.write_text("t_s,temp_c\n0,20\n0,30\n")
    with pytest.raises(ConfigError, match="increase"):
        outdoor_c(OutdoorSpec(kind="file", path=str(path)), np.array([0.0]))
    with pytest.raises(ConfigError):
        outdoor_c(OutdoorSpec(kind="file", path=str(tmp_path / "none.csv")), np.array([0.0]))


def test_pue_rises_with_outdoor_temperature_and_liquid_is_lower() -> None:
    cool = _plant(cooling="air", outdoor={"kind": "ramp", "start_c": 20, "end_c": 20})
    hot = _plant(cooling="air", outdoor={"kind": "ramp", "start_c": 40, "end_c": 40})
    dlc = _plant(cooling="liquid", outdoor={"kind": "ramp", "start_c": 40, "end_c": 40})
    pue = [p.step(0.0, 80e3) / 80e3 for p in (cool, hot, dlc)]
    assert pue[1] > pue[0] > pue[2] > 1.0
    assert 1.35 < pue[1] < 1.6
    assert pue[2] < 1.2


def test_cooling_follows_a_load_step_with_a_lag() -> None:
    plant = _plant(cooling="air", cooling_tau_s=120.0)
    low = plant.step(0.0, 50e3)
    after_step = plant.step(1.0, 100e3)
    for t in range(2, 600):
        settled = plant.step(float(t), 100e3)
    assert after_step < settled  # cooling still catching up right after the step
    assert low < after_step


def test_meter_delay_and_outage_switch_the_budget_to_the_model() -> None:
    plant = _plant(
        cooling="air",
        meter_period_s=5.0,
        meter_delay_s=2.0,
        meter_outages=[MeterOutage(at_s=100, duration_s=200).model_dump()],
    )
    sources = {}
    budgets = {}
    for t in range(400):
        plant.step(float(t), 80e3)
        budgets[t] = plant.it_budget_w(float(t), 120e3)
        sources[t] = plant.budget_source
    assert sources[1] == "model"  # the first reading has not arrived yet
    assert sources[50] == "meter"
    assert sources[250] == "model"  # silent well past its timeout
    assert sources[399] == "meter"
    assert budgets[250] < budgets[50]  # wider margin without a meter
    assert budgets[299] < budgets[150]  # and wider the longer it lasts


def test_facility_spec_is_validated() -> None:
    with pytest.raises(ValueError, match="path"):
        FacilitySpec.model_validate({"outdoor": {"kind": "file"}})
    with pytest.raises(ValueError, match="carbon signal"):
        Scenario.model_validate({**BASE, "carbon_policy": {}})
