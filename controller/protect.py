"""Protective cuts: a rack that draws over its caps in force is sent them again at once.

The tick decides every `tick_period_s`, and a decision over a large fleet takes tens of ms, so a
rack that starts drawing over its caps (its agent restarted and lost them, or never got its
command) would wait for the next tick, and then for that tick's decision, before anything tells
it its caps again. Until then a limit may be exceeded. The scan here closes that gap without
deciding anything: every `protect_scan_s` it looks only at the racks whose telemetry arrived
since the last scan, and where some GPU draws more than the deadband over its cap in force while
its agent reports holding a higher one (`CommandBook.overdrawn`), it resends that rack its caps
in force through the publisher's urgent path (`CommandPublisher.send_in_force`).

What it sends only ever lowers: the caps in force are the lower of what the rack was last sent
and what the newest decision gave it, each of which fits every limit (`CommandBook.in_force`).
It never raises a rack, never decides a new cap, and the next tick treats the rack as usual
(its new draw may make it urgent there too: at worst it hears the same caps twice).

A command still on its way is not resent: when the rack's agent reports (`cmd_seq`) an older
command of this controller's than the one sent to it less than `protect_min_interval_s` ago, its
caps are still being applied. An agent that reports no command (it restarted) or the latest one
is cut; with ingest workers, which keep the agents' reports, a rack is cut whatever its agent
reports.

Rate bounds, so a fleet-wide event cannot turn the scan into a storm: a rack is cut again only
after `protect_min_interval_s` (its agent needs time to apply the caps and report), and one scan
sends at most `MAX_RACKS_PER_SCAN` racks, the largest overdraw first; the rest are looked at
again when they next report, and the tick's urgent lane covers them meanwhile.

The scan works the same whether telemetry is ingested in this process or by ingest workers:
it reads the fleet arrays' per-rack receive times (`rack_last_seen_s`, on the daemon's
monotonic clock in both cases), not the messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import structlog
from numpy.typing import NDArray

from controller.publisher import CommandPublisher
from controller.runtime import Runtime

log = structlog.get_logger("rheostat.controller")

#: Racks one scan sends at most (one urgent slice of the publisher).
MAX_RACKS_PER_SCAN = 256


class ProtectiveCuts:
    """`await cuts.run()` scans every `control.protect_scan_s`; `scan()` is one pass.

    `clock` is the daemon's monotonic clock, the one ingest stamps `rack_last_seen_s` with;
    `label` is called before each send (the daemon stamps the leader's epoch on the book).
    """

    def __init__(
        self,
        runtime: Runtime,
        publisher: CommandPublisher,
        *,
        clock: Callable[[], float],
        label: Callable[[], None] = lambda: None,
    ) -> None:
        self._rt = runtime
        #: Puts the term's epoch on the command book before a send, as each tick does.
        self._label = label
        self._publisher = publisher
        self._clock = clock
        n_racks = runtime.policy.topology.n_racks
        #: Each rack's receive time as the last scan saw it: a rack whose time differs has
        #: reported since. (Not "received after the last scan began": an ingest worker stamps a
        #: message before it writes it, and may write it after a scan that began later.)
        self._seen_s = np.full(n_racks, -np.inf)
        self._cut_at_s = np.full(n_racks, -np.inf)
        #: Protective commands handed to the MQTT client so far.
        self.sent_total = 0

    async def run(self) -> None:
        while True:
            scan_s = self._rt.policy.config.control.protect_scan_s
            if scan_s is None:  # switched off (a reload may switch it on)
                self._seen_s = self._rt.fleet.rack_last_seen_s.copy()
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(scan_s)
            try:
                await self.scan()
            except Exception:  # a shortcut failing must not stop the daemon: ticks still cut
                log.exception("protective scan failed")
                await asyncio.sleep(1.0)

    def candidates(self, now_s: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Racks (largest overdraw first, at most `MAX_RACKS_PER_SCAN`) to cut at `now_s`, and
        each one's overdraw (W), among those that reported since the last scan."""
        rt = self._rt
        decision, book, fleet = rt.decision, rt.book, rt.fleet
        n_racks = book.topology.n_racks
        if self._cut_at_s.size != n_racks:  # a reload brought another fleet
            self._cut_at_s = np.full(n_racks, -np.inf)
            self._seen_s = np.full(n_racks, -np.inf)
        seen_s = fleet.rack_last_seen_s.copy()  # workers may write it meanwhile
        fresh = np.flatnonzero(seen_s != self._seen_s)
        self._seen_s = seen_s
        if decision is None or not fresh.size:
            return fresh[:0], np.zeros(0)
        interval_s = rt.policy.config.control.protect_min_interval_s
        fresh = fresh[now_s - self._cut_at_s[fresh] >= interval_s]
        # An agent that reports holding an older command of ours than the one sent moments ago
        # is still applying that one: not lost, so not cut. (-1: it reports none, or the
        # reports go to ingest workers, which keep them.)
        held = rt.ingest.agents.cmd_seq[fresh]
        in_flight = (held >= 0) & (held < book.seq[fresh])
        in_flight &= now_s - book.sent_at_s[fresh] < interval_s
        fresh = fresh[~in_flight]
        over_w = book.overdrawn(decision, fresh, power_w=fleet.power_w, reported_cap_w=fleet.cap_w)
        hit = over_w > book.deadband_w
        order = np.argsort(-over_w[hit], kind="stable")[:MAX_RACKS_PER_SCAN]
        return fresh[hit][order], over_w[hit][order]

    async def scan(self) -> int:
        """One pass: find and cut; returns the commands sent."""
        started_s = time.monotonic()
        now_s = self._clock()
        book = self._rt.book
        racks, over_w = self.candidates(now_s)
        if not racks.size:
            return 0
        self._label()
        sent = await self._publisher.send_in_force(
            book, racks, scan_started_s=started_s, detected_s=time.monotonic()
        )
        if sent:
            self._cut_at_s[racks] = now_s
            self.sent_total += sent
            log.info(
                "protective cuts",
                racks=sent,
                worst_rack=book.topology.racks.ids[int(racks[0])],
                over_w=round(float(over_w[0]), 1),
            )
        return sent
