"""The campaign loop beside the daemon's other tasks, and what the daemon asks of it.

The daemon calls `is_leader()` before publishing anything (commands, the retained status, grid
reports) and stamps `epoch()` and `instance` on every command. Standbys run everything else:
they ingest telemetry and decide every tick, so a takeover commands with a current decision at
once (`on_gain`), not after a warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from controller.config import HaSection
from controller.ha.base import Leadership, Standalone, instance_id

log = structlog.get_logger("rheostat.ha")


def build_leadership(
    section: HaSection,
    *,
    site: str,
    instance: str,
    clock: Callable[[], float] = time.monotonic,
) -> Leadership:
    """The engine the `ha:` section names; imported only when used."""
    if section.backend == "etcd":
        from controller.ha.etcd import EtcdLeadership  # noqa: PLC0415 - optional backend

        return EtcdLeadership(
            section.etcd, site=site, instance=instance, lease_ttl_s=section.lease_ttl_s, clock=clock
        )
    if section.backend == "kubernetes":
        from controller.ha.kubernetes import KubernetesLeadership  # noqa: PLC0415 - optional backend

        return KubernetesLeadership(
            section.kubernetes,
            site=site,
            instance=instance,
            lease_ttl_s=section.lease_ttl_s,
            clock=clock,
        )
    return Standalone()


class HaRunner:
    """Keeps campaigning; counts terms; calls `on_gain` when this process starts leading.

    `on_gain` runs synchronously right after the campaign that won, before any other task can
    publish, so the daemon can mark every rack due and stamp the new epoch first.
    """

    def __init__(
        self,
        section: HaSection,
        *,
        site: str,
        name: str,
        on_gain: Callable[[], None] = lambda: None,
        leadership: Leadership | None = None,
        instance: str | None = None,
    ) -> None:
        self.section = section
        self.site = site
        #: This process's id on the wire (`ctl`) and in the lease store; new per start. Given
        #: when the daemon already has one for its commands.
        self.instance = instance or instance_id(name)
        self.leadership = leadership or build_leadership(section, site=site, instance=self.instance)
        self.on_gain = on_gain
        #: Times the site's epoch changed while this process watched (any holder).
        self.term_changes = 0
        #: Terms this process won.
        self.terms_won = 0
        self._was_leader = False
        self._last_epoch = 0

    @property
    def enabled(self) -> bool:
        return self.section.enabled

    @property
    def backend(self) -> str:
        return self.section.backend

    def is_leader(self) -> bool:
        return self.leadership.is_leader()

    def epoch(self) -> int:
        return self.leadership.epoch()

    async def step(self) -> bool:
        """One campaign round and its bookkeeping; whether this process leads now."""
        leading = await self.leadership.campaign()
        epoch = self.leadership.epoch()
        if epoch != self._last_epoch:
            if self._last_epoch:
                self.term_changes += 1
            self._last_epoch = epoch
        if leading and not self._was_leader:
            self.terms_won += 1
            log.info("took the lead", epoch=epoch, instance=self.instance)
            self.on_gain()
        elif self._was_leader and not leading:
            log.warning("no longer leading; commands stop", epoch=epoch)
        self._was_leader = leading
        return leading

    async def serve(self) -> None:
        """Campaign forever: a leader renews every third of its lease, a standby every retry."""
        if not self.enabled:
            await self.step()
            return
        renew_s = self.section.lease_ttl_s / 3
        while True:
            try:
                leading = await self.step()
            except Exception:  # a bug here must not stop the daemon; the term lapses by itself
                log.exception("campaign failed")
                leading = self.is_leader()
            await asyncio.sleep(
                min(renew_s, self.section.retry_s) if leading else self.section.retry_s
            )

    async def close(self) -> None:
        """Hand the term over at once (a clean stop), then close connections."""
        with contextlib.suppress(Exception):
            await self.leadership.resign()
        await self.leadership.aclose()
