"""A controller with a demand-response event, a facility meter and flexible work, for dashboards.

`rheostat demo` has no demand-response source, facility meter or scheduler, so those dashboards'
panels would never see data from it. This runs the real daemon (`rheostat run`) with a policy
file whose `demand_response` section schedules an event a few seconds after start, whose
`facility` section meters the site (with a carbon-intensity file) and whose `carbon` section
shifts flexible work; in a second process (`python -m tests.deploy.dr_site ...`) the simulator's
rack agents, its facility meter, and a scheduler and an energy-management system that report a
Flex 3 sweep and publish a forecast, all against a real Mosquitto, so Prometheus can scrape those
series while the event holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.services import Mosquitto, free_port, require_binary, wait_for_port

SITE = "drsite"
#: The fleet both the daemon (policy `generate`) and the agents (scenario topology) build.
TOPOLOGY = {"gpus": 64, "a100_share": 0.0, "racks_per_row": 1}
#: The flexible job: the last rack's 32 GPUs, a Flex 3 sweep. Units: s.
SWEEP_GPUS = 32
SWEEP_HORIZON_S = 3600.0
#: Slot of the forecast the energy-management system publishes. Units: s.
SIGNAL_SLOT_S = 5.0
#: The event starts this long after the daemon, once a baseline window of telemetry exists.
#: Units: s.
EVENT_LEAD_S = 6.0
BASELINE_WINDOW_S = 3.0


def policy(
    broker_port: int, metrics_port: int, store: Path, event_start_s: float
) -> dict[str, object]:
    carbon_file = store.parent / "carbon.csv"
    now = time.time()
    carbon_file.write_text(
        "unix_s,kg_per_mwh\n"
        + "".join(f"{now + 600 * k},{300 + 40 * (k % 3)}\n" for k in range(-1, 12))
    )
    return {
        "site": {"name": SITE, "topology": {"generate": TOPOLOGY}},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "protocol": "5"},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "control": {"tick_period_s": 1.0, "command_ttl_s": 10.0},
        "logging": {"format": "json", "level": "warning"},
        "facility": {
            "contract_w": 1.0e6,
            "cooling": "air",
            "carbon_file": str(carbon_file),
            "price_per_mwh": 80.0,
        },
        "carbon": {"slot_s": SIGNAL_SLOT_S, "track_s": 2.0, "job_timeout_s": 30.0},
        "demand_response": {
            "store_path": str(store),
            "baseline_window_s": BASELINE_WINDOW_S,
            "default_ramp_s": 1.0,
            "default_recovery_s": 30.0,
            "events": [
                {"id": "peak-1", "start": event_start_s, "duration_s": 600, "reduction_frac": 0.2}
            ],
        },
    }


@contextlib.contextmanager
def running_dr_site(workdir: Path) -> Iterator[str]:
    """Broker, daemon and agents; yields the daemon's metrics host:port."""
    broker = Mosquitto(require_binary("mosquitto"), workdir)
    broker.start()
    metrics_port = free_port()
    config = workdir / "policy.yaml"  # JSON is YAML
    config.write_text(
        json.dumps(
            policy(broker.port, metrics_port, workdir / "events.sqlite", time.time() + EVENT_LEAD_S)
        )
    )
    commands = (
        ["-m", "controller", "run", "--policy", str(config)],
        ["-m", "tests.deploy.dr_site", "--port", str(broker.port)],
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (workdir / "dr-site.log").open("wb") as log:
            procs.extend(
                subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT)
                for argv in commands
            )
        wait_for_port(metrics_port, timeout_s=30.0)
        yield f"127.0.0.1:{metrics_port}"
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        broker.stop()


async def _run_agents(port: int) -> None:
    # Imported here: only the agents' process needs the simulator.
    from simulator.agents import run_rack_agents
    from simulator.build import build_cluster
    from simulator.meter import FacilityMeter, run_facility_meter
    from simulator.scenario import Scenario

    scenario = Scenario.model_validate(
        {
            "name": "dr-site",
            "duration_s": 3600,
            "seed": 5,
            "topology": TOPOLOGY,
            "workloads": [
                {"kind": "training", "name": "t", "gpus": 32, "iteration_s": 4.0},
                {"kind": "training", "name": "sweep", "gpus": SWEEP_GPUS, "tier": 3},
            ],
            "facility": {"cooling": "air", "outdoor": {"mean_c": 30.0}},
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    meter = FacilityMeter.for_scenario(cluster, scenario, site=SITE)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(run_rack_agents(cluster, host="127.0.0.1", port=port, site=SITE, stop=stop))
        tg.create_task(run_facility_meter(meter, host="127.0.0.1", port=port, stop=stop))
        tg.create_task(_scheduler(cluster, port, stop))


async def _scheduler(cluster: Any, port: int, stop: asyncio.Event) -> None:
    """The scheduler's job reports and the energy-management system's forecast, every second."""
    import aiomqtt

    from controller.wire import (
        GpuRange,
        JobReport,
        SignalMessage,
        encode_job,
        encode_signal,
        job_topic,
        signal_topic,
    )

    sweep = cluster.workloads.training[1]
    rack = cluster.topology.racks.ids[-1]
    start, done0 = time.time(), float(cluster.workloads.work[1]) * sweep.iteration_s
    deadline = start + SWEEP_HORIZON_S
    async with aiomqtt.Client("127.0.0.1", port, identifier="dr-site-scheduler") as client:
        while not stop.is_set():
            now = time.time()
            n = int((deadline - now) / SIGNAL_SLOT_S) + 2
            values = tuple(400.0 + 150.0 * ((k // 4) % 2) for k in range(n))
            forecast = SignalMessage(ts=now, start_ts=now, slot_s=SIGNAL_SLOT_S, values=values)
            await client.publish(signal_topic(SITE), encode_signal(forecast), qos=1)
            done = float(cluster.workloads.work[1]) * sweep.iteration_s - done0
            report = JobReport(
                job="sweep",
                ts=now,
                tier=3,
                deadline_ts=deadline,
                owed_s=max(0.6 * SWEEP_HORIZON_S - done, 0.0),
                gpus=(GpuRange(rack=rack, first=0, count=SWEEP_GPUS),),
                sync=True,
            )
            await client.publish(job_topic(SITE, "sweep"), encode_job(report), qos=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="simulated rack agents for the DR site")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_run_agents(parser.parse_args().port))
