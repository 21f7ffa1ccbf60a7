"""Slurm job reports: the prolog publishes which GPUs a job holds, the epilog withdraws it.

Run by slurmctld as `PrologSlurmctld` / `EpilogSlurmctld` (`deploy/slurm/`), once per job on the
controller host: `scontrol -d show job <id>` lists each node's GRES indexes (`Nodes=gpu-a[01-02]
CPU_IDs=0-63 Mem=0 GRES=gpu:8(IDX:0-7)`), `scontrol show hostnames` expands the node lists, and
the inventory turns (hostname, GPU index) into the (rack, first, count) ranges of the job-report
format (docs/wire-protocol.md). The tier comes from the job's QOS, else its partition, else the
default; a multi-node job is reported synchronous unless configured otherwise. The report is
retained on `rheostat/v1/<site>/jobs/slurm-<id>`; the epilog publishes the empty retained message
that removes it.

A prolog that fails holds or requeues the job, so a report that cannot be built or published is
logged to stderr and the hook still exits 0: Rheostat never stops a job from starting.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field

from controller.inventory import Inventory, load_inventory
from controller.wire import GpuRange, JobReport, encode_job, job_topic
from policies.errors import ConfigError, RheostatError
from policies.tiers import N_TIERS

Tier = Annotated[int, Field(ge=0, le=N_TIERS - 1)]
#: `Nodes=... GRES=gpu:8(IDX:0-7)` lines of `scontrol -d show job`.
_NODE_LINE = re.compile(r"^\s*Nodes=(\S+)\s.*?\bGRES=(\S+)", re.MULTILINE)
_GPU_IDX = re.compile(r"gpu(?::[^:(,]+)?:\d+\(IDX:([0-9,\-]+)\)")
_FIELD = re.compile(r"\b(Partition|QOS|NumNodes)=(\S+)")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SlurmMqtt(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    username: str | None = "rheostat-scheduler"
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 5.0


class SlurmTiers(_Section):
    """Flex tier of a job: by QOS first, then partition, else `default`."""

    default: Tier = 1
    partitions: dict[str, Tier] = Field(default_factory=dict)
    qos: dict[str, Tier] = Field(default_factory=dict)


class SlurmConfig(_Section):
    site: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    #: The node inventory (hostnames -> racks and GPU positions), as the controller's policy uses.
    inventory: Path
    mqtt: SlurmMqtt = SlurmMqtt()
    tiers: SlurmTiers = SlurmTiers()
    #: `auto`: synchronous when the job spans more than one node.
    sync: Literal["auto", "always", "never"] = "auto"
    scontrol: str = "scontrol"


def load_slurm_config(path: Path) -> SlurmConfig:
    from controller.policy_file import _parse_yaml, _validate  # noqa: PLC0415 - shared parsing

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    config: SlurmConfig = _validate(SlurmConfig, _parse_yaml(text, str(path)), str(path))
    if not config.inventory.is_absolute():
        config = config.model_copy(update={"inventory": path.parent / config.inventory})
    return config


def expand_indexes(spec: str) -> list[int]:
    """`0-2,5` -> [0, 1, 2, 5] (bounded: at most 1024 GPUs per node)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not 0 <= a <= b < 1024:
            raise ConfigError(f"bad GRES index range {part!r}")
        out.extend(range(a, b + 1))
    return out


def parse_job(text: str) -> tuple[dict[str, str], list[tuple[str, list[int]]]]:
    """Fields (`Partition`, `QOS`, `NumNodes`) and (node list expression, GPU indexes) pairs."""
    fields = {m.group(1): m.group(2) for m in _FIELD.finditer(text)}
    nodes = []
    for m in _NODE_LINE.finditer(text):
        idx = [i for g in _GPU_IDX.finditer(m.group(2)) for i in expand_indexes(g.group(1))]
        if idx:
            nodes.append((m.group(1), sorted(set(idx))))
    return fields, nodes


def gpu_ranges(inventory: Inventory, per_host: list[tuple[str, list[int]]]) -> tuple[GpuRange, ...]:
    """Contiguous (rack, first, count) ranges of the GPUs each host's indexes name."""
    rows: dict[str, list[int]] = {}
    for host, indexes in per_host:
        node = inventory.by_host.get(host.split(".")[0])
        if node is None:
            raise ConfigError(f"host {host!r} is not in the inventory", file=inventory.source)
        bad = [i for i in indexes if i >= node.gpus]
        if bad:
            raise ConfigError(f"host {host!r} has {node.gpus} GPUs, job names {bad}")
        rows.setdefault(node.rack, []).extend(node.first + i for i in indexes)
    ranges = []
    for rack, found in rows.items():
        ordered = sorted(set(found))
        start = prev = ordered[0]
        for r in [*ordered[1:], None]:
            if r is not None and r == prev + 1:
                prev = r
                continue
            ranges.append(GpuRange(rack=rack, first=start, count=prev - start + 1))
            if r is not None:
                start = prev = r
    return tuple(ranges)


def tier_of(tiers: SlurmTiers, fields: dict[str, str]) -> int:
    qos, partition = fields.get("QOS", ""), fields.get("Partition", "")
    if qos in tiers.qos:
        return tiers.qos[qos]
    return tiers.partitions.get(partition, tiers.default)


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def build_report(config: SlurmConfig, job_id: str, *, now_s: float | None = None) -> JobReport:
    text = _run([config.scontrol, "-d", "show", "job", job_id])
    fields, node_gres = parse_job(text)
    per_host: list[tuple[str, list[int]]] = []
    for expr, indexes in node_gres:
        hosts = _run([config.scontrol, "show", "hostnames", expr]).split()
        per_host.extend((host, indexes) for host in hosts)
    if not per_host:
        raise ConfigError(f"job {job_id} holds no GPUs")
    n_nodes = len({host for host, _ in per_host})
    sync = config.sync == "always" or (config.sync == "auto" and n_nodes > 1)
    return JobReport(
        job=f"slurm-{job_id}",
        ts=time.time() if now_s is None else now_s,
        tier=tier_of(config.tiers, fields),
        gpus=gpu_ranges(load_inventory(config.inventory), per_host),
        flexible=False,
        sync=sync,
    )


async def publish(config: SlurmConfig, topic: str, payload: bytes) -> None:
    mq = config.mqtt
    password = None
    if mq.password_file is not None:
        password = mq.password_file.read_text(encoding="utf-8").strip()
    tls = None if mq.ca_file is None else aiomqtt.TLSParameters(ca_certs=str(mq.ca_file))
    async with asyncio.timeout(mq.timeout_s):
        async with aiomqtt.Client(
            mq.host,
            mq.port,
            username=mq.username if password is not None else None,
            password=password,
            tls_params=tls,
            timeout=mq.timeout_s,
        ) as client:
            await client.publish(topic, payload, qos=1, retain=True)


def job_hook(config_path: Path, action: Literal["start", "end"], job_id: str) -> int:
    """The prolog (`start`) or epilog (`end`); always 0, errors go to stderr (see module doc)."""
    try:
        config = load_slurm_config(config_path)
        topic = job_topic(config.site, f"slurm-{job_id}")
        payload = b"" if action == "end" else encode_job(build_report(config, job_id))
        asyncio.run(publish(config, topic, payload))
    except (
        RheostatError,
        OSError,
        TimeoutError,
        aiomqtt.MqttError,
        subprocess.SubprocessError,
    ) as exc:
        print(f"rheostat slurm-job {action} {job_id}: not reported: {exc}", file=sys.stderr)
    return 0
