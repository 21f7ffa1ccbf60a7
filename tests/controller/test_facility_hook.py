"""The daemon's facility edge: meter messages, the IT budget each tick, per-tier counters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.facility import FacilityCollector, FacilityHook, FacilitySection
from controller.wire import MeterReading, decode_meter, encode_meter, facility_topic
from policies.decision import Limits
from policies.errors import ConfigError, ProtocolError

TOPIC = facility_topic("lab")


def _hook(**section: object) -> FacilityHook:
    return FacilityHook(section=FacilitySection.model_validate(section), site="lab")


def test_meter_message_round_trip() -> None:
    reading = MeterReading(ts=100.0, facility_w=1.3e6, it_w=1.0e6, outdoor_c=31.5)
    assert decode_meter(encode_meter(reading)) == reading
    bare = decode_meter(b'{"v": 1, "ts": 5, "facility_w": 1000}')
    assert bare.it_w is None
    assert bare.outdoor_c is None


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "object"),
        (b'{"v": 2, "ts": 1, "facility_w": 1}', "expected 1"),
        (b'{"v": 1, "ts": 1, "facility_w": 1, "extra": 0}', "unknown"),
        (b'{"v": 1, "ts": 1, "facility_w": -5}', "outside"),
        (b'{"v": 1, "ts": 1, "facility_w": true}', "number"),
        (b'{"v": 1, "ts": 1, "facility_w": 1, "outdoor_c": 300}', "outdoor_c"),
        (b'{"v": 1, "facility_w": 1}', "ts"),
    ],
)
def test_bad_meter_messages_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_meter(payload)


def test_hook_takes_its_topic_counts_rejects_and_ignores_older_readings() -> None:
    hook = _hook(contract_w=1.2e6)
    assert not hook.handle("rheostat/v1/lab/telemetry/r1", b"{}", now_s=0.0)
    assert hook.handle(TOPIC, b"garbage", now_s=0.0)
    assert hook.rejected == 1
    hook.handle(TOPIC, encode_meter(MeterReading(ts=10.0, facility_w=9e5)), now_s=10.0)
    hook.handle(TOPIC, encode_meter(MeterReading(ts=5.0, facility_w=1e5)), now_s=11.0)
    assert hook.last is not None
    assert hook.last.facility_w == 9e5


def test_it_budget_from_fresh_meter_then_model_with_wider_margin() -> None:
    hook = _hook(contract_w=1.2e6, fixed_w=0.0)
    reading = MeterReading(ts=100.0, facility_w=1.1e6, it_w=0.85e6, outdoor_c=30.0)
    hook.handle(TOPIC, encode_meter(reading), now_s=100.0)
    fresh = hook.limits(Limits(), now_s=102.0, it_power_w=0.85e6, fallback_w=math.inf)
    assert hook.budget is not None
    assert hook.budget.source == "meter"
    assert fresh.site_limit_w == pytest.approx(1.2e6 * (1 - 0.015) / (1.1 / 0.85))
    stale = hook.limits(Limits(), now_s=400.0, it_power_w=0.85e6, fallback_w=math.inf)
    assert hook.budget.source == "model"
    assert stale.site_limit_w is not None
    assert fresh.site_limit_w is not None
    assert stale.site_limit_w < fresh.site_limit_w


def test_dr_limit_below_the_contract_is_met_at_the_facility_meter() -> None:
    hook = _hook(fixed_w=0.0)  # contract from the policy's limits
    plain = hook.limits(Limits(), now_s=0.0, it_power_w=5e5, fallback_w=1e6)
    cut = hook.limits(Limits(site_limit_w=7.5e5), now_s=0.0, it_power_w=5e5, fallback_w=1e6)
    assert plain.site_limit_w is not None
    assert cut.site_limit_w is not None
    assert cut.site_limit_w == pytest.approx(plain.site_limit_w * 0.75)
    assert plain.site_limit_w < 1e6  # cooling counted against the contract
    unlimited = hook.limits(Limits(), now_s=0.0, it_power_w=5e5, fallback_w=math.inf)
    assert unlimited.site_limit_w is None


def test_counters_per_tier_on_a_fresh_registry(tmp_path: Path) -> None:
    carbon = tmp_path / "carbon.csv"
    carbon.write_text("unix_s,kg_per_mwh\n0,400\n3600,50\n")
    hook = FacilityHook(
        section=FacilitySection(carbon_file=Path("carbon.csv"), price_per_mwh=100.0),
        site="lab",
        base_dir=tmp_path,
    )
    hook.handle(TOPIC, encode_meter(MeterReading(ts=0.0, facility_w=2e6, it_w=1.6e6)), now_s=0.0)
    gpu = np.array([500.0, 500.0, 0.0, 1000.0])
    tier = np.array([0, 1, 2, 3], dtype=np.int8)
    hook.account(now_s=1.0, dt_s=3600.0, it_power_w=1.6e6, gpu_power_w=gpu, tier=tier)
    np.testing.assert_allclose(hook.tier_co2_kg, [200.0, 200.0, 0.0, 400.0])
    np.testing.assert_allclose(hook.tier_cost, [50.0, 50.0, 0.0, 100.0])
    registry = CollectorRegistry()
    registry.register(FacilityCollector(hook, clock=lambda: 5.0))
    text = generate_latest(registry).decode()
    assert 'rheostat_emissions_grams_total{site="lab",tier="3"} 400000.0' in text
    assert 'rheostat_energy_cost_total{site="lab",tier="0"} 50.0' in text
    assert 'rheostat_pue{site="lab"} 1.25' in text
    assert 'rheostat_facility_meter_age_seconds{site="lab"} 5.0' in text
    assert "rheostat_it_budget_watts" in text


def test_bad_carbon_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("unix_s,kg\n10,1\n5,2\n")
    with pytest.raises(ConfigError, match="increase"):
        FacilityHook(section=FacilitySection(carbon_file=bad), site="lab")
    with pytest.raises(ConfigError):
        FacilityHook(section=FacilitySection(carbon_file=tmp_path / "missing.csv"), site="lab")


def test_routed_handler_takes_meter_messages_and_passes_the_rest_on() -> None:
    hook = _hook()
    passed: list[str] = []

    def inner(topic: str, payload: bytes) -> bool:
        del payload
        passed.append(topic)
        return True

    handle = hook.routed(inner, clock=lambda: 42.0)
    handle(TOPIC, encode_meter(MeterReading(ts=40.0, facility_w=1e6)))
    handle("rheostat/v1/lab/telemetry/r1", b"{}")
    assert passed == ["rheostat/v1/lab/telemetry/r1"]
    assert hook.received_at_s == 42.0


def test_psu_efficiency_turns_the_wall_it_budget_into_core_watts() -> None:
    section = FacilitySection.model_validate({"fixed_w": 0.0})
    wall = FacilityHook(section=section, site="lab")
    dc = FacilityHook(section=section, site="lab", psu_efficiency=0.95)
    got_wall = wall.limits(Limits(), now_s=0.0, it_power_w=5e5, fallback_w=1e6)
    got_dc = dc.limits(Limits(), now_s=0.0, it_power_w=5e5, fallback_w=1e6)
    assert got_wall.site_limit_w is not None
    assert got_dc.site_limit_w == pytest.approx(got_wall.site_limit_w * 0.95)
    # A limit already in core units (a DR limit) comes back to wall power before the budget.
    cut = dc.limits(Limits(site_limit_w=0.75e6 * 0.95), now_s=0.0, it_power_w=5e5, fallback_w=1e6)
    assert cut.site_limit_w == pytest.approx(got_dc.site_limit_w * 0.75)


def test_metered_power_is_the_meter_while_fresh_then_the_model() -> None:
    hook = _hook(fixed_w=0.0, meter_timeout_s=15.0)
    assert hook.metered_w(0.0, 5e5) > 5e5  # no meter yet: IT plus modelled cooling and losses
    reading = MeterReading(ts=100.0, facility_w=7.1e5, it_w=5e5, outdoor_c=38.0)
    hook.handle(TOPIC, encode_meter(reading), now_s=100.0)
    assert hook.metered_w(110.0, 5e5) == 7.1e5
    hot = hook.metered_w(200.0, 5e5)  # stale: the model, at the meter's last outdoor reading
    cool = _hook(fixed_w=0.0, design_outdoor_c=20.0).metered_w(200.0, 5e5)
    assert hot > cool > 5e5
