"""Sharded ingest: worker processes on an MQTT 5 shared subscription (real Mosquitto) writing the
fleet arrays in shared memory, read by the decision process."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from pathlib import Path

import aiomqtt
import numpy as np
import orjson
import pytest

from controller import wire
from controller.config.service import TlsSection
from controller.daemon import Controller
from controller.ingest import ClassTable
from controller.policy_file import parse_policy
from controller.shard.pool import IngestPool
from controller.shard.shared_fleet import COUNTERS, SharedFleet
from controller.shard.worker import tls_context, worker_username
from policies.fleet import FleetState
from tests.deploy.test_deploy_mosquitto_acl import (
    CONTROLLER,
    SecuredBroker,
    first_message,
    nothing_arrives,
)
from tests.deploy.test_deploy_mosquitto_acl import SITE as ACL_SITE
from tests.deploy.test_deploy_mosquitto_acl import secured as secured  # noqa: PLC0414 - fixture
from tests.deploy.test_deploy_mosquitto_acl import tls_files as tls_files  # noqa: PLC0414
from tests.integration.harness import agents_running, policy_for, running, wait_until
from tests.integration.test_ctl_daemon import SITE, small_cluster
from tests.services import Mosquitto

pytestmark = pytest.mark.integration
RACKS, GPUS = 6, 32


def _policy(port: int, workers: int = 2, protocol: str = "3.1.1") -> str:
    return (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {RACKS * GPUS}, a100_share: 0}}}}}}\n"
        "tiers: {classes: {training: 1, inference: 0}}\n"
        f"mqtt: {{port: {port}, client_id: shard}}\n"
        f'ingest: {{workers: {workers}, share_group: g1, protocol: "{protocol}"}}\n'
    )


def _telemetry(rack: str, seq: int, cls: str = "training") -> bytes:
    n = GPUS
    return wire.encode_telemetry(
        wire.Telemetry(
            rack=rack,
            seq=seq,
            ts_s=time.time(),
            power_w=np.full(n, 300.0 + seq),
            sm_clock_mhz=np.full(n, 1500.0),
            util=np.full(n, 0.5),
            mem_util=np.full(n, 0.2),
            temp_c=np.full(n, 55.0),
            cap_w=np.full(n, 700.0),
            classes=(cls,),
            class_idx=np.zeros(n, np.int64),
            rack_power_w=5000.0,
        )
    )


def test_a_worker_writes_what_the_owner_reads() -> None:
    policy = parse_policy(_policy(1883), source="t")
    owner = SharedFleet.create(FleetState.empty(policy.topology), workers=2)
    try:
        topo = policy.topology
        other = SharedFleet.attach(owner.name, n_gpus=topo.n_gpus, n_racks=topo.n_racks, workers=2)
        other.fleet.power_w[3] = 123.0
        other.counters[1, 0] = 7
        other.close()
        assert owner.fleet.power_w[3] == 123.0
        assert owner.counters[:, 0].tolist() == [0, 7]
        assert owner.counters.shape == (2, len(COUNTERS))
        assert np.isneginf(owner.fleet.rack_last_seen_s).all()  # the empty fleet was copied in
    finally:
        owner.close()


def test_a_frozen_class_table_gives_every_process_the_same_codes() -> None:
    a = ClassTable(("inference", "training"), frozen=True)
    b = ClassTable(("inference", "training"), frozen=True)
    assert a.code("training") == b.code("training") == 2
    assert a.code("never-heard-of") == 0  # unknown: the default tier, never a new code
    assert a.names == ("<unknown>", "inference", "training")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_workers_share_the_subscription_and_restart_after_a_kill(
    mosquitto: Mosquitto, protocol: str
) -> None:
    """Over MQTT 3.1.1 (the default) and MQTT 5 alike, Mosquitto shares the subscription."""
    policy = parse_policy(_policy(mosquitto.port, protocol=protocol), source="t")
    classes = ClassTable(sorted(policy.config.tiers.classes))
    pool = IngestPool(
        policy, initial=FleetState.empty(policy.topology), classes=classes.names[1:], password=None
    )
    ids = policy.topology.racks.ids
    try:
        pool.start()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="pub") as pub:
            seq = 0

            async def publish_round() -> None:
                nonlocal seq
                seq += 1
                for rack in ids:
                    await pub.publish(wire.telemetry_topic(SITE, rack), _telemetry(rack, seq))

            async def all_at(expected: int) -> None:
                async with asyncio.timeout(30):
                    while not (pool.fleet.rack_seq == expected).all():
                        if seq < expected:
                            await publish_round()
                        await asyncio.sleep(0.05)

            async with asyncio.timeout(30):  # workers connect in their own time
                while pool.subscribed() < 2:
                    await asyncio.sleep(0.05)
            while not (pool.fleet.rack_seq >= 1).all():
                await publish_round()
                await asyncio.sleep(0.2)
                assert seq < 150, "workers never ingested"
            per_worker = pool.shared.counters[:, COUNTERS.index("accepted")]
            assert (per_worker > 0).all(), "the broker gave every worker a share"
            assert pool.fleet.power_w[0] >= 301.0
            assert pool.fleet.workload_class[0] == classes.code("training")
            fenced = orjson.dumps(
                orjson.loads(_telemetry(ids[1], seq + 1)) | {"cmd_rejected": {"stale_epoch": 3}}
            )
            await pub.publish(wire.telemetry_topic(SITE, ids[1]), fenced)
            async with asyncio.timeout(10):
                while pool.shared.cmd_rejected[1, 0] != 3:  # stale_epoch, from shared memory
                    await asyncio.sleep(0.05)
            await pub.publish(wire.telemetry_topic(SITE, ids[0]), b"{not json")
            await pub.publish(wire.telemetry_topic(SITE, "nope"), _telemetry("nope", 1))
            async with asyncio.timeout(10):
                while pool.counters()[0].rejected["unknown_rack"] < 1:
                    await asyncio.sleep(0.05)
            counters, _ = pool.counters()
            assert counters.rejected["malformed"] == 1
            procs = [p for p in pool._procs if p is not None]
            assert procs[0].pid is not None
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].join(5)
            assert pool.check() == 1
            assert pool.restarts == 1
            target = seq + 3
            await all_at(target)
            assert pool.fleet.rack_power_w[0] == 5000.0
    finally:
        pool.close()


async def test_daemon_with_ingest_workers_closes_the_loop(mosquitto: Mosquitto) -> None:
    cluster = small_cluster()
    text = (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 96, a100_share: 0}}}}}}\n"
        "control: {tick_period_s: 0.2, command_ttl_s: 3.0, stale_after_s: 2}\n"
        f"mqtt: {{port: {mosquitto.port}, client_id: shard-ctl}}\n"
        "metrics: {port: 0}\n"
        "ingest: {workers: 2}\n"
    )
    controller = Controller(policy_for(cluster, text))
    rt = controller.runtime
    assert controller.pool is not None
    assert rt.fleet is controller.pool.fleet
    async with agents_running(cluster, mosquitto.port, site=SITE) as agents, running(controller):
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied >= 2)), 30)
        # the workers stamp receive times on the daemon's monotonic clock, not the wall clock
        await wait_until(lambda: not rt.fleet.stale_racks(time.monotonic(), 2.0).any())
        assert np.all(rt.fleet.rack_last_seen_s <= time.monotonic())
        assert rt.ingest.counters.accepted > 0
        assert sum(rt.ingest.counters.rejected.values()) == 0
    assert agents.counters.fallbacks.sum() == 0


def test_ingest_benchmark_reports_each_worker_count_and_the_plain_loop() -> None:
    import argparse

    from bench import ingest as bench_ingest

    parser = argparse.ArgumentParser()
    bench_ingest.add_arguments(parser)
    args = parser.parse_args(
        ["--rack-gpus", "8", "--racks", "20", "--messages", "400", "--workers", "1", "2"]
    )
    rows = bench_ingest.run(args)
    assert [r["consumer"] for r in rows] == ["plain aiomqtt loop", "1 worker(s)", "2 worker(s)"]
    for row in rows:
        assert row["written"] == 400  # every message validated and written, none conflated
        assert row["gpu_readings_per_s"] == row["msgs_per_s"] * 8 or row["msgs_per_s"] > 0
    assert rows[2]["vs_1_worker"] is not None


async def test_a_worker_comes_back_after_the_broker_restarts(mosquitto: Mosquitto) -> None:
    """The connection drops with the broker; the worker reconnects on its own backoff and
    subscribes again (the restarted broker kept no session)."""
    policy = parse_policy(_policy(mosquitto.port, workers=1), source="t")
    pool = IngestPool(
        policy, initial=FleetState.empty(policy.topology), classes=("training",), password=None
    )
    rack = policy.topology.racks.ids[0]
    try:
        pool.start()
        async with asyncio.timeout(30):
            while pool.subscribed() < 1:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(mosquitto.restart)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="pub") as pub:
            async with asyncio.timeout(30):
                seq = 0
                while pool.fleet.rack_seq[0] < 1:
                    seq += 1
                    await pub.publish(wire.telemetry_topic(SITE, rack), _telemetry(rack, seq))
                    await asyncio.sleep(0.1)
        assert pool.subscribed() == 1
        assert pool.restarts == 0  # the same process reconnected; the pool did not restart it
    finally:
        pool.close()


async def test_workers_read_over_tls_each_as_its_own_user(secured: SecuredBroker) -> None:
    """The shipped broker config: TLS listener, password file, ACL, and every client id made its
    user name. Two workers and the daemon's own session stay connected side by side (one user
    each: under the controller's user they would throw each other off), the workers read
    telemetry through the shared subscription, and a worker's user may not command a rack."""
    text = (
        f"site: {{name: {ACL_SITE}, topology: {{generate: {{gpus: 64, a100_share: 0}}}}}}\n"
        f"mqtt: {{port: {secured.tls_port}, username: {CONTROLLER}, client_id: {CONTROLLER},\n"
        f"       tls: {{ca_file: {secured.ca_file}}}}}\n"
        "ingest: {workers: 2}\n"
    )
    policy = parse_policy(text, source="t")
    pool = IngestPool(
        policy,
        initial=FleetState.empty(policy.topology),
        classes=("training",),
        password=secured.passwords[CONTROLLER],
    )
    try:
        pool.start()
        async with secured.client(CONTROLLER, tls=True) as daemon:
            await daemon.subscribe(wire.telemetry_topic(ACL_SITE, "r001"))
            async with asyncio.timeout(30):
                while pool.subscribed() < 2:
                    await asyncio.sleep(0.05)
            # Rack r001 may publish only its own telemetry; it is no rack of this generated fleet,
            # so a worker receives it and rejects it as an unknown rack.
            async with secured.client("r001", tls=True) as rack:
                async with asyncio.timeout(30):
                    seq = 0
                    while pool.counters()[0].rejected["unknown_rack"] < 4:
                        seq += 1
                        payload = _telemetry("r001", seq)
                        await rack.publish(wire.telemetry_topic(ACL_SITE, "r001"), payload)
                        assert pool.subscribed() == 2  # no worker was thrown off
                        await asyncio.sleep(0.1)
            # the daemon's session is still the one it opened: it got the rack's telemetry too
            assert (await first_message(daemon)).topic.value == wire.telemetry_topic(
                ACL_SITE, "r001"
            )
        assert pool.counters()[0].accepted == 0
    finally:
        pool.close()
    worker = worker_username(CONTROLLER, 0)
    async with (
        secured.client(worker, tls=True) as intruder,
        secured.client("r001", tls=True) as rack,
    ):
        await rack.subscribe(wire.command_topic(ACL_SITE, "r001"))
        await intruder.publish(wire.command_topic(ACL_SITE, "r001"), b"{}", qos=1)
        await nothing_arrives(rack, 1.0)


def test_insecure_tls_skips_only_the_host_name_check(tls_files: Path) -> None:
    """As paho's `tls_insecure_set`: the broker's certificate is still checked against the CA."""
    ca_file = tls_files / "tls" / "ca.crt"
    strict = tls_context(TlsSection(ca_file=ca_file))
    lax = tls_context(TlsSection(ca_file=ca_file, insecure=True))
    assert strict.check_hostname
    assert not lax.check_hostname
    assert strict.verify_mode == lax.verify_mode == ssl.CERT_REQUIRED
