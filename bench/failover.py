"""`rheostat bench failover`: active/standby on real etcd and Mosquitto, daemons as processes.

Each scenario starts its own Mosquitto and etcd, a simulated fleet whose agents speak the wire
protocol from this process, and two `rheostat run` processes (`ctl-a`, `ctl-b`) on one site with
`ha: {backend: etcd}`. A spy subscribed to the command topics records every command's sender
(`ctl`) and `epoch`; the daemons' `/metrics` are read every 0.1 s for `rheostat_ha_leader`.

- `kill`: `ctl-a` leads, `ctl-b` stands by; `kill -9` of `ctl-a`. `failover_s`: from the kill
  until every rack has received a command from the new leader; `racks_safe_caps`: racks that
  fell back to their safe caps (goal 0); `seconds_over_limit`: time any rack drew more than its
  breaker rating or the site more than its contract, watched once control has settled (the
  simulated fleet starts uncapped, above its contract) (goal 0).
- `simultaneous`: both started at once. `non_leader_applied`: commands an agent following the
  wire's acceptance rule (higher epoch wins; same epoch: new `ctl` or higher `seq`) would have
  applied although a newer term had begun or another controller held their epoch (goal 0).
- `cutoff`: etcd stopped under a running pair. The leader must stop commanding by its lease's
  expiry (`stopped_commanding_s <= lease_ttl_s`), nobody else may lead, racks keep their caps
  until their command TTL runs out and only then fall back (`racks_fell_back_early`: goal 0).
`max_leaders_at_once` is the most daemons that reported leading in one sample (goal <= 1).
Needs the `mosquitto` and `etcd` binaries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
import orjson

from bench._ingest_rig import free_port, mosquitto
from bench._procs import Daemon, EtcdProcess
from controller import wire
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario

NAME = "failover"
HELP = "leader kill, simultaneous start and etcd cut-off: failover time, fencing, safe caps"
DEFAULT_ARGS: list[str] = []
SITE = "fo"
SCENARIOS = ("kill", "simultaneous", "cutoff")
SAMPLE_S = 0.05
#: The simulated fleet starts uncapped and above its contract; the first commands take it under
#: within a couple of seconds. Limits are watched from then on. Units: s.
SETTLE_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=SCENARIOS, nargs="+", default=list(SCENARIOS))
    parser.add_argument("--racks", type=int, default=8, help="racks of 32 GPUs")
    parser.add_argument("--tick", type=float, default=0.2, help="control tick, s")
    parser.add_argument("--lease-ttl", type=int, default=2, help="ha.lease_ttl_s, s")
    parser.add_argument("--retry", type=float, default=0.2, help="ha.retry_s, s")
    parser.add_argument("--command-ttl", type=float, default=6.0, help="command TTL, s")
    parser.add_argument("--observe", type=float, default=5.0, help="simultaneous run, s")


def _cluster(racks: int) -> SimCluster:
    gpus = racks * 32
    scenario = Scenario.model_validate(
        {
            "name": "failover",
            "duration_s": 3600,
            "seed": 11,
            "topology": {"gpus": gpus, "a100_share": 0.0, "site_limit_frac": 0.7},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": gpus, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def _policy(
    cluster: SimCluster, args: argparse.Namespace, *, mqtt: int, etcd: str, me: str, metrics: int
) -> str:
    topo = cluster.topology
    site_w = float(topo.levels[-1].limit_w[0])
    rack_w = float(topo.racks.limit_w[0])
    return orjson.dumps(
        {
            "site": {
                "name": SITE,
                "topology": {"generate": {"gpus": topo.n_gpus, "a100_share": 0}},
            },
            "limits": {
                "contract_w": site_w,
                "rack_breaker_w": rack_w,
                "psu_efficiency": cluster.params.psu_efficiency,
            },
            "control": {
                "tick_period_s": args.tick,
                "command_ttl_s": args.command_ttl,
                "stale_after_s": 2,
            },
            "mqtt": {"port": mqtt, "client_id": me},
            "metrics": {"port": metrics},
            "logging": {"level": "warning", "format": "json"},
            "ha": {
                "backend": "etcd",
                "lease_ttl_s": args.lease_ttl,
                "retry_s": args.retry,
                "etcd": {"endpoints": [etcd]},
            },
        }
    ).decode()


@dataclass(eq=False)
class Observed:
    """What the spy and the sampler saw. Times are monotonic seconds."""

    commands: list[tuple[float, int, str, int, int]] = field(default_factory=list)
    max_leaders: int = 0
    over_s: float = 0.0
    #: (monotonic time, "rack" or "site") of each sample over a limit.
    over_at: list[tuple[float, str]] = field(default_factory=list)
    newest_epoch: int = 0
    holder: dict[int, str] = field(default_factory=dict)
    non_leader_sent: int = 0
    non_leader_applied: int = 0
    safe_since: dict[int, float] = field(default_factory=dict)
    racks: set[int] = field(default_factory=set)
    _held: dict[int, tuple[int, str, int]] = field(default_factory=dict)

    def command(self, now: float, rack: int, body: dict[str, Any]) -> None:
        epoch, ctl, seq = int(body.get("epoch", 0)), str(body.get("ctl", "")), int(body["seq"])
        self.commands.append((now, rack, ctl, epoch, seq))
        self.racks.add(rack)
        owner = self.holder.setdefault(epoch, ctl)
        stale = epoch < self.newest_epoch or owner != ctl
        self.newest_epoch = max(self.newest_epoch, epoch)
        held = self._held.get(rack)
        accepted = (
            held is None
            or epoch > held[0]
            or (epoch == held[0] and (ctl != held[1] or seq > held[2]))
        )
        if accepted:
            self._held[rack] = (epoch, ctl, seq)
        if stale:
            self.non_leader_sent += 1
            self.non_leader_applied += int(accepted)

    def from_(self, ctl: str, since: float = 0.0) -> list[tuple[float, int, str, int, int]]:
        return [c for c in self.commands if c[2] == ctl and c[0] >= since]


class Site:
    """One scenario's world: broker, etcd, fleet, agents, spy, sampler and two daemons."""

    def __init__(self, args: argparse.Namespace, port: int, workdir: Path) -> None:
        self.args = args
        self.port = port
        self.etcd = EtcdProcess(workdir)
        self.cluster = _cluster(args.racks)
        safe_w = self.cluster.topology.gpu_max_cap_w * 0.6
        self.agents = RackAgents(cluster=self.cluster, site=SITE, period_s=0.2, safe_cap_w=safe_w)
        self.seen = Observed()
        self.daemons = {name: Daemon(name, "", workdir, free_port()) for name in ("ctl-a", "ctl-b")}
        self.instance: dict[str, str] = {}
        self.leading: dict[str, bool | None] = {}
        self.stop = asyncio.Event()
        #: Limits are watched from here on (monotonic s): once control has settled.
        self.measure_from = float("inf")
        self.rack_index = {r: i for i, r in enumerate(self.cluster.topology.racks.ids)}

    def write_policies(self) -> None:
        for name, daemon in self.daemons.items():
            text = _policy(
                self.cluster,
                self.args,
                mqtt=self.port,
                etcd=self.etcd.url,
                me=name,
                metrics=daemon.metrics_port,
            )
            daemon.config.write_text(text)

    async def spy(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="failover-spy") as client:
            await client.subscribe(wire.command_filter(SITE), qos=1)
            async for message in client.messages:
                rack = self.rack_index.get(wire.rack_from_topic(str(message.topic)))
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, ValueError):
                    if rack is not None:
                        self.seen.command(time.monotonic(), rack, orjson.loads(message.payload))

    async def sample(self) -> None:
        topo = self.cluster.topology
        site_w = float(topo.levels[-1].limit_w[0])
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                for name, daemon in self.daemons.items():
                    state = await daemon.leader(session) if daemon.proc is not None else None
                    self.leading[name] = None if state is None else state[1]
                    if state is not None:
                        self.instance[name] = state[0]
                self.seen.max_leaders = max(
                    self.seen.max_leaders, sum(bool(v) for v in self.leading.values())
                )
                c = self.cluster
                controlled = time.monotonic() >= self.measure_from
                rack_over = bool((c.rack_power_w > topo.racks.limit_w).any())
                site_over = c.site_power_w > site_w
                if controlled and (rack_over or site_over):
                    self.seen.over_s += SAMPLE_S
                    self.seen.over_at.append((time.monotonic(), "rack" if rack_over else "site"))
                now = time.monotonic()
                for rack in np.flatnonzero(self.agents.on_safe_cap).tolist():
                    self.seen.safe_since.setdefault(rack, now)
                await asyncio.sleep(SAMPLE_S)

    async def until(self, predicate: Any, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(SAMPLE_S)

    def commanded_by(self, name: str, since: float = 0.0) -> set[int]:
        ctl = self.instance.get(name, "?")
        return {c[1] for c in self.seen.from_(ctl, since)}


@contextlib.asynccontextmanager
async def site(args: argparse.Namespace) -> AsyncIterator[Site]:
    with mosquitto() as port, tempfile.TemporaryDirectory() as tmp:
        world = Site(args, port, Path(tmp))
        world.etcd.start()
        world.write_policies()
        tasks = [
            asyncio.create_task(
                run_rack_agents(
                    world.cluster, host="127.0.0.1", port=port, site=SITE, stop=world.stop,
                    agents=world.agents,
                )
            ),
            asyncio.create_task(world.spy()),
            asyncio.create_task(world.sample()),
        ]  # fmt: skip
        try:
            yield world
        finally:
            for daemon in world.daemons.values():
                daemon.stop()
            world.stop.set()
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            world.etcd.stop()


async def _pair_running(w: Site) -> tuple[Daemon, Daemon]:
    """ctl-a leading with every rack commanded, ctl-b up as a standby."""
    a, b = w.daemons["ctl-a"], w.daemons["ctl-b"]
    a.start()
    await w.until(lambda: w.leading.get("ctl-a") is True)
    n = w.cluster.topology.n_racks
    await w.until(lambda: len(w.commanded_by("ctl-a")) == n)
    b.start()
    await w.until(lambda: w.leading.get("ctl-b") is False)
    await asyncio.sleep(SETTLE_S)
    w.measure_from = time.monotonic()
    return a, b


async def _kill(args: argparse.Namespace) -> dict[str, Any]:
    async with site(args) as w:
        a, _ = await _pair_running(w)
        n = w.cluster.topology.n_racks
        fallbacks = w.agents.counters.fallbacks.sum()
        killed = time.monotonic()
        a.kill()
        await w.until(lambda: len(w.commanded_by("ctl-b", killed)) == n)
        first = min(c[0] for c in w.seen.from_(w.instance["ctl-b"], killed))
        done = max(
            min(c[0] for c in w.seen.from_(w.instance["ctl-b"], killed) if c[1] == rack)
            for rack in range(n)
        )
        await asyncio.sleep(args.command_ttl)  # any rack left without a command falls back now
        return {
            "failover_s": round(done - killed, 3),
            "first_command_s": round(first - killed, 3),
            "racks_safe_caps": int(w.agents.counters.fallbacks.sum() - fallbacks),
            "seconds_over_limit": round(w.seen.over_s, 2),
            # where it happened, for a reader: (s from the kill, "rack" or "site"), the first few
            "over_at": [(round(t - killed, 2), kind) for t, kind in w.seen.over_at[:10]],
            "breaker_trips": len(w.cluster.trips),
            "max_leaders_at_once": w.seen.max_leaders,
            "non_leader_applied": w.seen.non_leader_applied,
        }


async def _simultaneous(args: argparse.Namespace) -> dict[str, Any]:
    async with site(args) as w:
        for daemon in w.daemons.values():
            daemon.start()
        await w.until(
            lambda: all(v is not None for v in w.leading.values()) and len(w.leading) == 2
        )
        await asyncio.sleep(args.observe)
        return {
            "commanding_controllers": len({c[2] for c in w.seen.commands}),
            "commands": len(w.seen.commands),
            "non_leader_sent": w.seen.non_leader_sent,
            "non_leader_applied": w.seen.non_leader_applied,
            "max_leaders_at_once": w.seen.max_leaders,
            "seconds_over_limit": round(w.seen.over_s, 2),
            "breaker_trips": len(w.cluster.trips),
        }


async def _cutoff(args: argparse.Namespace) -> dict[str, Any]:
    async with site(args) as w:
        await _pair_running(w)
        cut = time.monotonic()
        w.etcd.stop()
        await asyncio.sleep(args.command_ttl + args.lease_ttl + 1.0)
        a_ctl = w.instance["ctl-a"]
        last = {c[1]: c[0] for c in w.seen.commands if c[2] == a_ctl}
        early = [
            r for r, t in w.seen.safe_since.items() if t < last.get(r, 0.0) + args.command_ttl - 0.1
        ]
        return {
            "stopped_commanding_s": round(max(last.values()) - cut, 3),
            "lease_ttl_s": args.lease_ttl,
            "standby_commands": len(w.commanded_by("ctl-b", cut)),
            "max_leaders_at_once": w.seen.max_leaders,
            "racks_safe_caps_after_ttl": len(w.seen.safe_since),
            "racks_fell_back_early": len(early),
            "racks": w.cluster.topology.n_racks,
        }


RUNNERS = {"kill": _kill, "simultaneous": _simultaneous, "cutoff": _cutoff}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    return [{"scenario": s, **asyncio.run(RUNNERS[s](args))} for s in args.scenario]
