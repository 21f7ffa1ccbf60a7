"""Demand response in the running daemon: an MQTT grid event cuts a simulated fleet's power in the
closed loop, a cancellation recovers, and a restart mid-event keeps honouring it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.config import OpenAdrSection
from controller.daemon import Controller
from controller.metrics.rheostat import RheostatCollector
from controller.policy_file import Policy
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario
from tests.integration.harness import agents_running, fleet_policy, running, wait_until
from tests.integration.test_openadr_ven import VEN_ID, start_vtn
from tests.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

SITE = "drtest"


def cluster_and_policy(port: int, store: Path) -> tuple[SimCluster, Policy]:
    scenario = Scenario.model_validate(
        {
            "name": "dr",
            "duration_s": 600,
            "seed": 3,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 64, "iteration_s": 4.0}],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    sections = (
        f"demand_response: {{store_path: '{store}', baseline_window_s: 2.0, default_ramp_s: 0.5,"
        " default_recovery_s: 2.0, grid_first: true}\n"
    )
    return cluster, fleet_policy(
        cluster, site=SITE, port=port, client_id="ctl-dr", sections=sections
    )


def event(event_id: str, start_s: float, reduction: float) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "action": "create",
            "event_id": event_id,
            "start": start_s,
            "duration_s": 60,
            "reduction_frac": reduction,
        }
    )


async def test_grid_event_in_the_closed_loop(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite"
    cluster, policy = cluster_and_policy(mosquitto.port, store)
    controller = Controller(policy)
    rt = controller.runtime
    assert controller.grid is not None

    def site_w() -> float:
        return float(rt.fleet.rack_power_w.sum())

    topic = f"rheostat/v1/{SITE}/grid/event"
    async with (
        agents_running(cluster, mosquitto.port, site=SITE),
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ems") as ems,
    ):
        async with running(controller):
            await wait_until(
                lambda: (
                    rt.decision is not None and not rt.fleet.stale_racks(time.monotonic(), 2).any()
                )
            )
            await asyncio.sleep(2.5)  # a full baseline window of telemetry
            before_w = site_w()
            await ems.publish(f"{topic}/cut", event("cut", time.time() + 1.0, 0.2), qos=1)
            await wait_until(lambda: rt.demand_response is not None and rt.demand_response.active)
            dr = rt.demand_response
            assert dr is not None
            assert dr.baseline_w is not None
            assert dr.target_w == pytest.approx(0.8 * dr.baseline_w)
            assert dr.baseline_w == pytest.approx(before_w, rel=0.15)
            target_w = dr.target_w
            # The fleet follows the ramped limit down to the target.
            await wait_until(lambda: site_w() <= target_w)
            # So do the safe caps every command carries: all racks falling back to them at once
            # during the event would fit its level (DC side, as the caps are budgeted).
            carried = rt.book.safe_cap_w
            assert carried is not None
            topo = policy.topology
            overhead_w = float(topo.overhead_under(len(topo.levels) - 1)[0])
            assert float(carried.sum()) < float(policy.safe_cap_w.sum())
            eff = policy.config.limits.psu_efficiency
            assert float(carried.sum()) + overhead_w <= target_w * eff
            registry = CollectorRegistry()
            registry.register(RheostatCollector(rt))
            scraped = generate_latest(registry).decode()
            assert f'rheostat_dr_active{{site="{SITE}"}} 1.0' in scraped
            assert "rheostat_dr_target_watts" in scraped
            assert 'rheostat_dr_compliance_ratio{event="cut"' in scraped

            await ems.publish(
                f"{topic}/cut", orjson.dumps({"v": 1, "action": "cancel", "event_id": "cut"}), qos=1
            )
            await wait_until(
                lambda: controller.grid is not None and not controller.grid.status().active
            )
            await wait_until(lambda: site_w() > target_w * 1.05)
            await wait_until(lambda: np.array_equal(rt.book.safe_cap_w, policy.safe_cap_w))

            # A second event; the controller restarts in the middle of it.
            await ems.publish(f"{topic}/again", event("again", time.time() + 0.5, 0.2), qos=1)
            await wait_until(lambda: rt.demand_response is not None and rt.demand_response.active)
        restarted = Controller(policy)
        assert restarted.grid is not None
        kept = restarted.grid.events.events["again"]
        assert kept.baseline_w is not None
        async with running(restarted):
            await wait_until(
                lambda: (
                    restarted.runtime.demand_response is not None
                    and restarted.runtime.demand_response.active
                )
            )
            assert restarted.runtime.demand_response.target_w == pytest.approx(
                0.8 * kept.baseline_w
            )
    assert np.isfinite(site_w())


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_openadr_event_in_the_closed_loop(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    reports: list[float] = []
    vtn = await start_vtn(port, reports)
    opts: dict[str, str] = {}
    try:
        cluster, base = cluster_and_policy(mosquitto.port, tmp_path / "events.sqlite")
        section = base.config.demand_response
        assert section is not None
        dr = section.model_copy(
            update={
                "openadr": OpenAdrSection(
                    vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
                    ven_name="site-a",
                    report_interval_s=1.0,
                )
            }
        )
        config = base.config.model_copy(update={"demand_response": dr})
        controller = Controller(Policy(config=config, topology=base.topology, source="t"))
        rt = controller.runtime
        async with agents_running(cluster, mosquitto.port, site=SITE), running(controller):
            await wait_until(
                lambda: (
                    rt.decision is not None and not rt.fleet.stale_racks(time.monotonic(), 2).any()
                )
            )
            await asyncio.sleep(2.5)
            vtn.add_event(
                ven_id=VEN_ID,
                signal_name="SIMPLE",
                signal_type="level",
                intervals=[
                    {
                        "dtstart": datetime.now(UTC) + timedelta(seconds=1),
                        "duration": timedelta(minutes=10),
                        "signal_payload": 2,
                    }
                ],
                callback=lambda ven_id, event_id, opt_type: opts.update({event_id: opt_type}),
                event_id="vtn-peak",
            )
            await wait_until(lambda: rt.demand_response is not None and rt.demand_response.active)
            assert opts == {"vtn-peak": "optIn"}
            target_w = rt.demand_response.target_w
            assert target_w is not None
            assert rt.demand_response.baseline_w is not None
            assert target_w == pytest.approx(0.75 * rt.demand_response.baseline_w)
            await wait_until(lambda: float(rt.fleet.rack_power_w.sum()) <= target_w)
            await wait_until(lambda: any(0 < r <= target_w * 1.02 for r in reports))
    finally:
        await vtn.stop()
    capsys.readouterr()
