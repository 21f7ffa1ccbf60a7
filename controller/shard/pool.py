"""The decision process's side of sharded ingest: the shared fleet and its worker processes.

`IngestPool` creates the shared-memory fleet, starts `workers` processes (spawned, so none
inherits the daemon's event loop or sockets), restarts any that dies, and sums their counters
for the metrics. Workers agree on workload-class codes because each gets the same frozen list
of names, in the daemon's own table order.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.process import BaseProcess

import structlog

from controller.ingest import IngestCounters
from controller.policy_file import Policy
from controller.shard.shared_fleet import COUNTERS, SharedFleet
from controller.shard.worker import WorkerSpec, main
from policies.fleet import FleetState

log = structlog.get_logger("rheostat.ingest")

#: Locks guarding racks' check-and-write, shared by rack index modulo this.
LOCK_STRIPES = 64
#: How often dead workers are looked for. Units: s.
WATCH_S = 1.0


class IngestPool:
    """`start()`, then read `fleet` every tick; `close()` stops the workers and frees memory."""

    def __init__(
        self,
        policy: Policy,
        *,
        initial: FleetState,
        classes: tuple[str, ...],
        password: str | None,
    ) -> None:
        section = policy.config.ingest
        self.workers = section.workers
        self.group = section.share_group
        self.shared = SharedFleet.create(initial, self.workers)
        self._context = multiprocessing.get_context("spawn")
        self._locks = [self._context.Lock() for _ in range(LOCK_STRIPES)]
        self._policy = policy
        self._classes = classes
        self._password = password
        self._procs: list[BaseProcess | None] = [None] * self.workers
        #: Workers started again after they died.
        self.restarts = 0

    @property
    def fleet(self) -> FleetState:
        return self.shared.fleet

    def _spec(self, index: int) -> WorkerSpec:
        return WorkerSpec(
            index=index,
            workers=self.workers,
            segment=self.shared.name,
            policy=self._policy,
            group=self.group,
            classes=self._classes,
            locks=self._locks,
            password=self._password,
        )

    def _start(self, index: int) -> None:
        proc = self._context.Process(
            target=main, args=(self._spec(index),), name=f"rheostat-ingest-{index}", daemon=True
        )
        proc.start()
        self._procs[index] = proc

    def start(self) -> None:
        for index in range(self.workers):
            self._start(index)
        log.info("ingest workers started", workers=self.workers, group=self.group)

    def check(self) -> int:
        """Start again every worker that has died; how many were."""
        dead = [i for i, p in enumerate(self._procs) if p is not None and not p.is_alive()]
        for index in dead:
            proc = self._procs[index]
            log.warning("ingest worker died; starting it again", worker=index,
                        exitcode=None if proc is None else proc.exitcode)  # fmt: skip
            self._start(index)
        self.restarts += len(dead)
        return len(dead)

    def reconfigure(self, policy: Policy, classes: tuple[str, ...]) -> None:
        """A reloaded policy (same fleet): workers restart with it and the new class list."""
        self._policy, self._classes = policy, classes
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        for index, proc in enumerate(self._procs):
            if proc is not None:
                proc.join(5)
                self._start(index)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            self.check()

    def counters(self) -> tuple[IngestCounters, int]:
        """The workers' counters summed, and the messages their queues conflated."""
        total = self.shared.counters.sum(axis=0).tolist()
        by_name = dict(zip(COUNTERS, total, strict=True))
        counters = IngestCounters(messages=by_name["messages"], accepted=by_name["accepted"])
        for reason in counters.rejected:
            counters.rejected[reason] = by_name[reason]
        return counters, by_name["conflated"]

    def pids(self) -> list[int]:
        """The running workers' process ids (for a benchmark that pauses them)."""
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def subscribed(self) -> int:
        """Workers whose shared subscription is in place now."""
        return int(self.shared.counters[:, -1].sum())

    def close(self) -> None:
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            if proc is not None:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        self._procs = [None] * self.workers
        self.shared.close()
