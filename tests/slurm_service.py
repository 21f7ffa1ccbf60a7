"""A real single-node Slurm (munged, slurmctld, slurmd) on loopback for tests, in a temp dir.

Everything lives under `workdir`: its own munge key and socket, a generated slurm.conf and
gres.conf (the node's GPUs are plain files standing in for /dev/nvidia*), state and spool
directories, free ports. Runs as root, as slurmd must to launch jobs; `env` is what `sbatch` and
`scontrol` need (SLURM_CONF).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.services import SERVICE_PATHS, free_port, require_binary

for _name, _package in (
    ("munged", "munge"),
    ("slurmctld", "slurmctld"),
    ("slurmd", "slurmd"),
    ("sbatch", "slurm-client"),
):
    SERVICE_PATHS.setdefault(
        _name, (f"/usr/{'s' if _name != 'sbatch' else ''}bin/{_name}", _package)
    )


class Slurm:
    def __init__(
        self, workdir: Path, *, prolog: Path, epilog: Path, gpus: int = 4, partition: str = "gpu"
    ) -> None:
        self.workdir = workdir
        self.host = socket.gethostname().split(".")[0]
        self.partition = partition
        self.munged = require_binary("munged")
        self.slurmctld = require_binary("slurmctld")
        self.slurmd = require_binary("slurmd")
        self.sbatch_bin = require_binary("sbatch")
        self.procs: list[subprocess.Popen[bytes]] = []
        w = workdir
        for sub in ("state", "spool", "log"):
            (w / sub).mkdir(exist_ok=True)
        for i in range(gpus):
            (w / f"gpu{i}").touch()
        key = w / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = w / "munge.sock"
        self.conf = w / "slurm.conf"
        self.conf.write_text(
            f"""ClusterName=rtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
PrologSlurmctld={prolog}
EpilogSlurmctld={epilog}
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:{gpus} State=UNKNOWN
PartitionName={partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (w / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File={w}/gpu[0-{gpus - 1}]\n")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 30.0) -> None:
        w = self.workdir
        subprocess.run(
            [
                self.munged,
                f"--key-file={w / 'munge.key'}",
                f"--socket={self.socket}",
                f"--pid-file={w / 'munged.pid'}",
                f"--log-file={w / 'log' / 'munged.log'}",
                f"--seed-file={w / 'munge.seed'}",
                "--force",
            ],
            check=True,
            timeout=10,
        )
        for binary, name in ((self.slurmctld, "slurmctld"), (self.slurmd, "slurmd")):
            with (w / "log" / f"{name}.out").open("ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        [binary, "-D", "-f", str(self.conf)], stdout=out, stderr=out, env=self.env
                    )
                )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"],
                capture_output=True,
                text=True,
                env=self.env,
                check=False,
            )
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.3)
        raise TimeoutError(f"Slurm node not idle after {timeout_s} s; see {w / 'log'}")

    def sbatch(self, *args: str) -> str:
        done = subprocess.run(
            [self.sbatch_bin, "--parsable", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            check=True,
        )
        return done.stdout.strip().split(";")[0]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        pid_file = self.workdir / "munged.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
