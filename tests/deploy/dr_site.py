"""A controller with a demand-response event in force, for the live dashboard check.

`rheostat demo` has no demand-response source, so the dashboards' demand-response panels would
never see data from it. This runs the real daemon (`rheostat run`) with a policy file whose
`demand_response` section schedules an event a few seconds after start, and the simulator's rack
agents (in their own process: `python -m tests.deploy.dr_site AGENTS...`) against a real
Mosquitto, so Prometheus can scrape demand-response series while the event holds.
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

from tests.services import Mosquitto, free_port, require_binary, wait_for_port

SITE = "drsite"
#: The fleet both the daemon (policy `generate`) and the agents (scenario topology) build.
TOPOLOGY = {"gpus": 64, "a100_share": 0.0, "racks_per_row": 1}
#: The event starts this long after the daemon, once a baseline window of telemetry exists.
#: Units: s.
EVENT_LEAD_S = 6.0
BASELINE_WINDOW_S = 3.0


def policy(
    broker_port: int, metrics_port: int, store: Path, event_start_s: float
) -> dict[str, object]:
    return {
        "site": {"name": SITE, "topology": {"generate": TOPOLOGY}},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "protocol": "5"},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "control": {"tick_period_s": 1.0, "command_ttl_s": 10.0},
        "logging": {"format": "json", "level": "warning"},
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
        ["-m", "controller", "run", "--config", str(config)],
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
    from simulator.scenario import Scenario

    scenario = Scenario.model_validate(
        {
            "name": "dr-site",
            "duration_s": 3600,
            "seed": 5,
            "topology": TOPOLOGY,
            "workloads": [{"kind": "training", "name": "t", "gpus": 48, "iteration_s": 4.0}],
        }
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_rack_agents(
        build_cluster(scenario, site=SITE), host="127.0.0.1", port=port, site=SITE, stop=stop
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="simulated rack agents for the DR site")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_run_agents(parser.parse_args().port))
