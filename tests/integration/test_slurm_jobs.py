"""Slurm's prolog and epilog against a real single-node Slurm: a submitted job's report reaches
the controller with its GPUs and tier, and its end withdraws it. Also the parsing on its own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.daemon import Controller
from controller.inventory import parse_inventory
from controller.policy_file import load_policy
from controller.slurm import SlurmTiers, expand_indexes, gpu_ranges, parse_job, tier_of
from controller.wire import GpuRange
from tests.integration.harness import running, wait_until
from tests.services import Mosquitto
from tests.slurm_service import Slurm

REPO = Path(__file__).resolve().parents[2]
RHEOSTAT = Path(sys.executable).parent / "rheostat"

#: `scontrol -d show job` of a two-node job (Slurm 22.05), trimmed.
SCONTROL = """JobId=42 JobName=train
   Priority=1 Nice=0 Account=ml QOS=high
   JobState=RUNNING Reason=None Dependency=(null)
   Partition=gpu AllocNode:Sid=login1:123
   NodeList=gpu-a[01-02]
   NumNodes=2 NumCPUs=128 NumTasks=16 CPUs/Task=8 ReqB:S:C:T=0:0:*:*
   JOB_GRES=gpu:16
     Nodes=gpu-a01 CPU_IDs=0-63 Mem=0 GRES=gpu:h100:8(IDX:0-7)
     Nodes=gpu-a02 CPU_IDs=0-63 Mem=0 GRES=gpu:h100:4(IDX:0-1,4-5)
"""

INVENTORY = """nodes:
  - {hostname: gpu-a01, rack: r1}
  - {hostname: gpu-a02, rack: r1}
"""


def test_scontrol_output_to_gpu_ranges_and_tier():
    fields, nodes = parse_job(SCONTROL)
    assert fields["QOS"] == "high"
    assert fields["Partition"] == "gpu"
    assert nodes == [("gpu-a01", list(range(8))), ("gpu-a02", [0, 1, 4, 5])]
    inv = parse_inventory(INVENTORY, source="n.yaml")
    assert gpu_ranges(inv, nodes) == (
        GpuRange(rack="r1", first=0, count=10),
        GpuRange(rack="r1", first=12, count=2),
    )
    tiers = SlurmTiers(default=1, partitions={"gpu": 2}, qos={"high": 0})
    assert tier_of(tiers, fields) == 0
    assert tier_of(tiers, {"QOS": "normal", "Partition": "gpu"}) == 2
    assert tier_of(tiers, {"Partition": "cpu"}) == 1
    assert expand_indexes("3,0-1") == [3, 0, 1]


@pytest.fixture
def slurm(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Slurm]:
    """Slurm whose PrologSlurmctld/EpilogSlurmctld are the shipped scripts, pointed at a hook
    file for this broker and at this slurm.conf (slurmctld gives hooks a clean environment,
    hence the wrappers; in production scontrol finds /etc/slurm/slurm.conf itself)."""
    host_inventory = tmp_path / "nodes.yaml"
    hook = tmp_path / "slurm.yaml"
    wrappers = []
    for name in ("prolog", "epilog"):
        wrapper = tmp_path / f"{name}.sh"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"export RHEOSTAT={RHEOSTAT} RHEOSTAT_SLURM_CONFIG={hook}"
            f" SLURM_CONF={tmp_path / 'slurm.conf'}\n"
            f"exec {REPO}/deploy/slurm/rheostat-{name}.sh >>{tmp_path}/hooks.log 2>&1\n"
        )
        wrapper.chmod(0o755)
        wrappers.append(wrapper)
    server = Slurm(tmp_path, prolog=wrappers[0], epilog=wrappers[1], gpus=4, partition="gpu")
    host_inventory.write_text(f"nodes:\n  - {{hostname: {server.host}, rack: r1, gpus: 4}}\n")
    hook.write_text(
        "site: sdc\n"
        f"inventory: {host_inventory}\n"
        f"mqtt: {{port: {mosquitto.port}, username: null}}\n"
        "tiers: {default: 1, partitions: {gpu: 2}}\n"
        "sync: always\n"
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.slow
async def test_submitted_job_reaches_the_controller_and_its_end_withdraws_it(
    slurm: Slurm, mosquitto: Mosquitto, tmp_path: Path
):
    (tmp_path / "policy.yaml").write_text(
        "limits: {contract_w: 100000}\n"
        "site:\n  name: sdc\n  topology:\n    rows:\n      - id: row1\n        racks:\n"
        "          - {id: r1, breaker_w: 30000, servers: [{model: H100-SXM5, gpus: 4}]}\n"
        f"mqtt: {{port: {mosquitto.port}, client_id: ctl-slurm}}\n"
        "metrics: {port: 0}\n"
        "nodes: nodes.yaml\n"
    )
    controller = Controller(load_policy(tmp_path / "policy.yaml"))
    jobs = controller.jobs
    async with running(controller):
        job = await asyncio.to_thread(slurm.sbatch, "--gres=gpu:2", "--wrap", "sleep 4")
        name = f"slurm-{job}"
        await wait_until(lambda: name in jobs.reports, 20.0)
        report = jobs.reports[name]
        assert report.tier == 2  # the partition's
        assert report.sync
        assert report.gpus == (GpuRange(rack="r1", first=0, count=2),)
        assert jobs.n_gpus == 2
        await wait_until(lambda: name not in jobs.reports, 30.0)  # the epilog withdrew it
    log = (tmp_path / "hooks.log").read_text() if (tmp_path / "hooks.log").exists() else ""
    assert "not reported" not in log, log
