"""Policy reloads and the runtime state a policy starts with.

`build_runtime` makes fresh state for a policy (fleet arrays, ingest, command book). `PolicyReload`
is a mixin of `controller.daemon.Controller`: `reload` loads the file again and swaps it in
under the state lock; on any error the running policy stays in force. A policy for the same
fleet keeps the fleet's state; a different fleet starts from empty state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from controller.command_book import CommandBook
from controller.ingest import ClassTable, Ingest
from controller.policy_file import Policy, check_reload, load_policy
from controller.runtime import Runtime
from policies.decision import Limits
from policies.errors import RheostatError
from policies.fleet import FleetState

if TYPE_CHECKING:
    from controller.carbon import CarbonHook
    from controller.facility import FacilityHook
    from controller.jobs import SyncJobs
    from controller.nodes import NodeAssembler
    from controller.shard.pool import IngestPool

log = structlog.get_logger("rheostat.controller")


def tier_table(policy: Policy, classes: ClassTable) -> np.ndarray[Any, np.dtype[np.int8]]:
    tiers = policy.config.tiers
    return classes.tier_table(tiers.classes, tiers.default)


def policy_classes(policy: Policy) -> list[str]:
    """The class names the policy acts on (tiers, lenders), in the order sharded ingest's
    workers get their codes: a name outside the list is the unknown class there."""
    named = set(policy.config.tiers.classes) | set(policy.config.capping.lend.lender_classes or ())
    return sorted(named)


def build_runtime(
    policy: Policy,
    *,
    clock: Callable[[], float],
    version: str,
    monotonic: Callable[[], float] | None = None,
) -> Runtime:
    """Fresh state for `policy`. `monotonic` (default: `clock`) times freshness and refreshes."""
    topology = policy.topology
    control = policy.config.control
    bounds = policy.config.telemetry
    fleet = FleetState.empty(topology)
    classes = ClassTable(max_classes=bounds.max_classes)
    return Runtime(
        policy=policy,
        fleet=fleet,
        classes=classes,
        ingest=Ingest(
            topology,
            fleet,
            classes,
            restart_gap_s=control.restart_gap_s,
            clock=monotonic or clock,
            wall_clock=clock,
            max_clock_skew_s=bounds.max_clock_skew_s,
            stale_after_s=control.stale_after_s,
        ),
        book=CommandBook(
            topology,
            ttl_s=control.command_ttl_s,
            refresh_frac=control.refresh_frac,
            deadband_w=policy.config.capping.deadband_w,
            safe_cap_w=policy.safe_cap_w,
        ),
        tier_table=tier_table(policy, classes),
        limits=Limits(),
        version=version,
    )


class PolicyReload:
    """Reloading the policy file (a mixin: the attributes below are the controller's)."""

    runtime: Runtime
    policy_path: Path | None
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    carbon: CarbonHook | None
    facility: FacilityHook | None
    jobs: SyncJobs
    nodes: NodeAssembler | None
    pool: IngestPool | None
    _state_lock: asyncio.Lock

    if TYPE_CHECKING:  # provided by `Controller`; declared for the type checker only

        def _label_book(self) -> None: ...

    async def reload(self, path: Path | None = None) -> bool:
        """Load the policy file again; on any error the running policy stays in force."""
        path = path or self.policy_path
        reloads = self.runtime.reloads
        if path is None:
            log.warning("reload ignored: the policy did not come from a file")
            return False
        try:
            policy = await asyncio.to_thread(load_policy, path)
            async with self._state_lock:
                self._swap_policy(policy)
        except RheostatError as exc:
            reloads.failures += 1
            reloads.last_successful = False
            log.warning("policy reload failed; the previous policy stays in force", error=str(exc))
            return False
        reloads.successes += 1
        reloads.last_successful = True
        reloads.last_success_s = self.clock()
        log.info("policy reloaded", file=str(path))
        return True

    def _swap_policy(self, policy: Policy) -> None:
        rt = self.runtime
        old = rt.policy
        check_reload(old, policy)  # the rules `rheostat check --running` applies
        same_fleet = policy.topology.racks.ids == old.topology.racks.ids and np.array_equal(
            policy.topology.gpu_model, old.topology.gpu_model
        )
        if self.carbon is not None:
            self.carbon.set_topology(policy.topology)
        if self.facility is not None and self.facility.section.contract_w is None:
            contract_w = policy.config.limits.contract_w  # the facility contract follows it
            self.facility.stage.contract_w = math.inf if contract_w is None else contract_w
        self.jobs.set_topology(policy.topology)
        if self.nodes is not None and policy.inventory is not None:
            self.nodes.set_policy(policy.topology, policy.inventory)
        if same_fleet:
            control = policy.config.control
            rt.policy = policy
            rt.ingest.topology = policy.topology
            rt.ingest.restart_gap_s = control.restart_gap_s
            rt.ingest.stale_after_s = control.stale_after_s
            rt.ingest.max_clock_skew_s = policy.config.telemetry.max_clock_skew_s
            rt.classes.max_classes = max(
                rt.classes.max_classes, policy.config.telemetry.max_classes
            )
            rt.book.topology = policy.topology
            rt.book.configure(
                ttl_s=control.command_ttl_s,
                refresh_frac=control.refresh_frac,
                deadband_w=policy.config.capping.deadband_w,
                safe_cap_w=policy.safe_cap_w,
            )
            if self.pool is not None:
                for name in policy_classes(policy):
                    rt.classes.code(name)
                self.pool.reconfigure(policy, rt.classes.names[1:])
            rt.tier_table = tier_table(policy, rt.classes)
            return
        # A different fleet: start from empty state; every rack is stale until it reports.
        fresh = build_runtime(
            policy, clock=self.clock, version=rt.version, monotonic=self.monotonic
        )
        for name in ("fleet", "classes", "ingest", "book", "tier_table"):
            setattr(rt, name, getattr(fresh, name))
        self._label_book()
        rt.policy, rt.decision, rt.decision_state = policy, None, None
