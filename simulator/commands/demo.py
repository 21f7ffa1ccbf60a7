"""`rheostat demo`: the whole loop on one machine, with no external service.

An MQTT broker (embedded amqtt in a child process, or `--broker URL`), one simulated
rack agent per rack speaking wire protocol v1, the controller daemon with its metrics endpoint, a
live status line, and at the end the summary `rheostat simulate --json` prints (measured here on
the live cluster) plus `telemetry_messages`, `commands_sent` and `sync_jobs` (the demo hands the
controller its training jobs as a scheduler would report them). The fleet is oversubscribed like
the shipped `oversubscribed` scenario (site contract at 1/1.3 of full power, racks rated below
their full draw), so capping is visible: uncontrolled, breakers would trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any
from urllib.parse import urlparse

import numpy as np
import orjson

from controller.commands._args import add_duration
from controller.commands._text import key_values
from controller.config import DEFAULT_METRICS_PORT
from controller.embedded_broker import embedded_broker
from controller.logs import configure_logging
from controller.policy_file import Policy, default_policy_text, parse_policy
from controller.runtime import Runtime
from controller.service import serving
from controller.wire import GpuRange, JobReport, encode_job, job_topic
from policies.errors import ConfigError
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.controllers import controller_topology
from simulator.scenario import Scenario

GPUS_PER_RACK = 32
#: A rack whose granted budget is within this share of its limit is held at it.
BINDING_FRAC = 0.01
#: A GPU whose cap is this far below its demand is capped. Units: W.
CAPPED_W = 1.0
SITE = "demo"
#: How often the status line and the summary's samples are taken. Units: s.
SAMPLE_PERIOD_S = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="closed-loop demo: embedded broker, simulated racks, controller, metrics"
    )
    parser.add_argument("--racks", type=int, default=16, help="racks of 32 GPUs (default 16)")
    add_duration(parser, "how long to run", 120.0)
    parser.add_argument("--broker", help="use this broker (mqtt://host:port), e.g. Mosquitto")
    parser.add_argument(
        "--protocol", choices=["5", "3.1.1"], help="MQTT version (default: 3.1.1 embedded, else 5)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="0 picks a free port"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    parser.set_defaults(func=_run)


def demo_scenario(racks: int, duration_s: float) -> Scenario:
    gpus = racks * GPUS_PER_RACK
    chat, embeddings, batch = gpus // 4, gpus // 16, gpus * 3 // 16
    pretrain = gpus - chat - embeddings - batch
    workloads: list[dict[str, Any]] = [
        {"kind": "inference", "name": "chat", "gpus": chat, "tier": 0, "utilization": 0.7},
        {"kind": "training", "name": "llm-pretrain", "gpus": pretrain, "tier": 1,
         "iteration_s": 6.0, "comm_frac": 0.25},
        {"kind": "training", "name": "batch", "gpus": batch, "tier": 3, "iteration_s": 2.0},
        {"kind": "inference", "name": "embeddings", "gpus": embeddings, "tier": 2,
         "utilization": 0.9},
    ]  # fmt: skip
    return Scenario.model_validate(
        {
            "name": "demo",
            "duration_s": max(duration_s, 1.0),
            "tick_s": 0.25,
            "seed": 7,
            "topology": {
                "gpus": gpus,
                "a100_share": 0.5,
                "site_limit_frac": 0.769,
                "rack_rating_frac": 0.75,
            },
            "workloads": [w for w in workloads if w["gpus"] > 0],
        }
    )


def scheduler_reports(cluster: SimCluster, *, ts: float) -> list[tuple[str, bytes]]:
    """Each simulated training job as its scheduler reports it: synchronous, by rack ranges."""
    topo = cluster.topology
    out = []
    for job in cluster.workloads.training:
        first, last = job.start_gpu, job.start_gpu + job.n_gpus
        ranges = []
        for rack in range(topo.n_racks):
            rows = topo.rack_slice(rack)
            lo, hi = max(first, rows.start), min(last, rows.stop)
            if lo < hi:
                ranges.append(
                    GpuRange(rack=topo.racks.ids[rack], first=lo - rows.start, count=hi - lo)
                )
        report = JobReport(
            job=job.name, ts=ts, tier=job.tier, gpus=tuple(ranges), flexible=False, sync=True
        )
        out.append((job_topic(SITE, job.name), encode_job(report)))
    return out


def _policy(cluster: SimCluster, host: str, port: int, protocol: str) -> Policy:
    base = parse_policy(default_policy_text(), source="<embedded default policy>")
    data = base.config.model_dump()
    data["site"]["name"] = SITE
    data["mqtt"] |= {"host": host, "port": port, "protocol": protocol}
    # The simulated servers' overhead is after the PSUs: metrics then show wall-side limits.
    data["limits"]["psu_efficiency"] = cluster.params.psu_efficiency
    config = type(base.config).model_validate(data)
    topology = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    return Policy(config=config, topology=topology, source="<demo>")


def _run(args: argparse.Namespace) -> int:
    if args.racks <= 0 or args.duration <= 0:
        raise ConfigError("--racks and --duration must be positive")
    configure_logging("console", "warning")
    # paho reports amqtt's duplicate PUBACKs as warnings; they change nothing here
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    return asyncio.run(_demo(args))


class LiveTracker:
    """The simulator's summary figures, measured on the live cluster every sample.

    Facility-side powers (after PSU losses) against the site contract and each rack's breaker
    rating, the same sides the simulator's own checks use. Units: W, s, J.
    """

    def __init__(self, cluster: SimCluster, scenario: Scenario) -> None:
        self.cluster = cluster
        self.scenario = scenario
        topo = cluster.topology
        self.site_limit_w = float(topo.levels[-1].limit_w[0])
        self.rack_rating_w = topo.racks.limit_w
        self.seconds_over = {"rack": 0.0, "site": 0.0}
        self.max_overshoot_frac = 0.0
        self.energy_j = 0.0
        self.peak_w = 0.0
        self.max_ramp_w_per_s = 0.0
        self._last: tuple[float, float] | None = None

    def sample(self, now_s: float) -> None:
        site_w = float(self.cluster.site_power_w)
        rack_w = self.cluster.rack_power_w
        if self._last is not None:
            dt = now_s - self._last[0]
            self.energy_j += site_w * dt
            if dt > 0:
                self.max_ramp_w_per_s = max(self.max_ramp_w_per_s, abs(site_w - self._last[1]) / dt)
            if site_w > self.site_limit_w:
                self.seconds_over["site"] += dt
            if bool(np.any(rack_w > self.rack_rating_w)):
                self.seconds_over["rack"] += dt
        over = max(site_w / self.site_limit_w, float(np.max(rack_w / self.rack_rating_w))) - 1
        self.max_overshoot_frac = max(self.max_overshoot_frac, over)
        self.peak_w = max(self.peak_w, site_w)
        self._last = (now_s, site_w)

    def summary(self, duration_s: float) -> dict[str, Any]:
        """The keys of `simulator.summary.summarize`; throughput needs a reference run: empty."""
        energy_kwh = self.energy_j / 3.6e6
        trips = self.cluster.trips
        return {
            "scenario": self.scenario.name,
            "controller": "rheostat",
            "duration_s": round(duration_s, 3),
            "gpus": self.cluster.topology.n_gpus,
            "breaker_trips": len(trips),
            "tripped_racks": [rack for _, rack in trips],
            "seconds_over_limit": {k: round(v, 3) for k, v in self.seconds_over.items()},
            "max_overshoot_pct": round(max(self.max_overshoot_frac, 0.0) * 100.0, 3),
            "time_to_cap_s": [],
            "throughput_retained": {},
            "energy_kwh": round(energy_kwh, 3),
            "energy_cost_usd": round(energy_kwh / 1000.0 * self.scenario.grid.price_per_mwh, 2),
            "carbon_kg": None,
            "peak_site_power_kw": round(self.peak_w / 1e3, 3),
            "max_ramp_kw_per_s": round(self.max_ramp_w_per_s / 1e3, 3),
            "ramp_violation_s": 0.0,
            "realtime_factor": 1.0,
            "dr": [],
        }


async def _demo(args: argparse.Namespace) -> int:
    scenario = demo_scenario(args.racks, args.duration)
    cluster = build_cluster(scenario, site=SITE)
    with contextlib.ExitStack() as stack:
        if args.broker:
            url = urlparse(args.broker)
            if url.scheme not in ("mqtt", "tcp") or not url.hostname:
                raise ConfigError("--broker must look like mqtt://host:port")
            host, port, protocol = url.hostname, url.port or 1883, args.protocol or "5"
        else:
            host, port = "127.0.0.1", stack.enter_context(embedded_broker())
            protocol = args.protocol or "3.1.1"
        policy = _policy(cluster, host, port, protocol)
        tracker = LiveTracker(cluster, scenario)
        safe_w = policy.safe_cap_w
        agents = RackAgents(
            cluster=cluster,
            site=SITE,
            period_s=1.0,
            safe_cap_w=safe_w,
            protocol="5" if protocol == "5" else "3.1.1",
        )
        # agents boot on their safe caps, in force before the first tick, until commanded
        cluster.cap_w[:] = safe_w
        agents.start_on_safe_caps()
        # The GPUs' own limiters settle onto those caps before the clock starts, as they have by
        # the time a real rack's agent first reports.
        cluster.run_boot(seconds=5.0)
        stop_agents, stop_controller = asyncio.Event(), asyncio.Event()
        metrics_port = args.metrics_port
        try:
            ctx = serving(policy, metrics_port=metrics_port)
            controller, bound = await ctx.__aenter__()
        except OSError:
            ctx = serving(policy, metrics_port=0)
            controller, bound = await ctx.__aenter__()
        try:
            if not args.json:
                print(f"rheostat demo: {cluster.topology.n_racks} racks, {cluster.topology.n_gpus}"
                      f" GPUs, broker {host}:{port} (MQTT {protocol}), metrics "
                      f"http://127.0.0.1:{bound}/metrics", file=sys.stderr)  # fmt: skip
            # The demo plays the cluster scheduler too: its training jobs are reported as
            # synchronous, as they would arrive on rheostat/v1/<site>/jobs/<job>.
            for topic, payload in scheduler_reports(cluster, ts=time.time()):
                controller.jobs.handle(topic, payload)
            ctl_task = asyncio.create_task(controller.run(stop_controller), name="controller")
            agents_task = asyncio.create_task(
                run_rack_agents(
                    cluster, host=host, port=port, site=SITE, stop=stop_agents, agents=agents
                ),
                name="agents",
            )
            started = time.monotonic()
            await _watch(args, controller, tracker, started)
            elapsed = time.monotonic() - started
            stop_controller.set()
            await ctl_task
            stop_agents.set()
            await agents_task
        finally:
            await ctx.__aexit__(None, None, None)
    summary = tracker.summary(elapsed)
    summary["telemetry_messages"] = controller.runtime.ingest.counters.messages
    summary["commands_sent"] = controller.runtime.book.sent_total
    summary["sync_jobs"] = len(controller.jobs.reports)
    _print_summary(summary, as_json=args.json)
    return 0 if not cluster.trips else 1


async def _watch(
    args: argparse.Namespace, controller: Any, tracker: LiveTracker, t0: float
) -> None:
    """Sample until the duration is up, drawing the status line (a line per 10 s off a tty)."""
    tty = sys.stderr.isatty() and not args.json
    next_line_s = 0.0
    while (elapsed := time.monotonic() - t0) < args.duration:
        tracker.sample(elapsed)
        if not args.json and (tty or elapsed >= next_line_s):
            line = f"[{elapsed:5.0f}/{args.duration:.0f} s] " + status_line(
                controller.runtime, tracker, now_s=controller.monotonic()
            )
            print(("\r\x1b[2K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr)
            next_line_s = elapsed + 10.0
        await asyncio.sleep(min(SAMPLE_PERIOD_S, max(args.duration - elapsed, 0.01)))
    if tty:
        print(file=sys.stderr)


def status_line(rt: Runtime, tracker: LiveTracker, *, now_s: float) -> str:
    """What binds right now: the site against its contract, the hottest rack against its
    breaker, and how many racks the controller holds at their limit and GPUs it caps.

    Powers are measured on the simulated cluster (facility side); nothing is shown until a rack
    has reported, since the controller knows nothing before that.
    """
    n_racks = rt.policy.topology.n_racks
    fresh = round(rt.fresh_share(now_s) * n_racks)
    trips = len(tracker.cluster.trips)
    if fresh == 0:
        return f"waiting for the racks to report (0/{n_racks})  trips {trips}"
    site_w, site_limit_w = float(tracker.cluster.site_power_w), tracker.site_limit_w
    rack_frac = tracker.cluster.rack_power_w / tracker.cluster.topology.racks.usable_w
    hottest = int(np.argmax(rack_frac))
    hottest_id = rt.policy.topology.racks.ids[hottest]
    parts = [
        f"racks reporting {fresh}/{n_racks}",
        f"site {site_w / 1e3:.1f} of {site_limit_w / 1e3:.1f} kW ({site_w / site_limit_w:.0%})",
        f"hottest rack {hottest_id} at {rack_frac[hottest]:.0%} of its usable rating",
    ]
    decision = rt.decision
    if decision is not None:
        level = rt.policy.topology.rack_level
        budget, limit = decision.budget_w[level], decision.limit_w[level]
        at_limit = int(np.count_nonzero(budget >= limit * (1.0 - BINDING_FRAC)))
        capped = int(np.count_nonzero(decision.cap_w < decision.demand_w - CAPPED_W))
        parts += [
            f"racks at their limit {at_limit}/{n_racks}",
            f"GPUs capped {capped}/{decision.cap_w.size}",
        ]
    parts += [f"commands {rt.book.sent_total}", f"trips {trips}"]
    return "  ".join(parts)


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    # figures the live demo has no reference run for are left out of the text
    shown = {k: v for k, v in summary.items() if k == "tripped_racks" or v not in (None, [], {})}
    print(key_values(shown))
