"""Which racks get a command this tick, and what each command says.

A rack is sent a command when any of its GPUs' caps moved by more than the deadband, a clock
ceiling changed, its safe caps changed, or its last command is `refresh_frac` of the way to
expiry. Stale racks (no telemetry) are commanded like any other: a rack whose reports are lost
may still hear its commands, and a cut the limits need must reach it (the decision never raises
their caps). A rack never heard from since this controller started is left alone: its agent keeps
the command of the controller before (a restart costs nothing) or its safe caps.
Order: urgent racks first, those whose GPUs draw now more than the deadband over the sum of their
new caps (a rack over its limit, or whose new limit is below its present draw): until their
command lands, a limit is being exceeded, so they go ahead of everything else (largest overdraw
first; the daemon also sends them on their own lane, see `controller.publisher`). The test is on
the rack's sum, not on each GPU: when every rack draws within its new caps' sum, every group
above it (rack breaker, row, site) draws within its limit too, since the caps fit every limit, so
a cut that takes a few GPUs below their draw in a rack that is under its caps protects nothing
yet and takes the bulk lane. A fleet-wide swing in a fleet below its caps is then no urgent burst
to queue the commands that do protect a limit behind. Then racks whose
caps go down, blind ones first among them, so that during the send no group briefly holds both its
old high caps and its neighbours' new high caps; within each direction the largest moves go first,
so when a fleet-wide shift is sent over several batches a rack whose demand just changed is not
queued behind it. Every command carries its rack's safe caps, what the agent applies on its own
when the command's TTL runs out.
The per-rack tests are vectorized with `np.maximum.reduceat` and `np.add.reduceat` over the
contiguous rack row ranges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller import wire
from policies.decision import Decision
from policies.topology import Topology


class CommandBook:
    """Remembers what each rack was last sent, and builds the commands that are due.

    Units: W, MHz, s. `now_s` is the caller's monotonic clock (`sent_at_s` records when each
    rack was last commanded); `issued_at_s` is wall-clock time, informational on the wire.
    Commands carry `epoch` (the leader's term) and `ctl` (this controller instance's id): agents
    accept a new instance's sequence from its start, so `seq` counts from `seq_base` (0) per
    instance and never comes from a clock.
    `safe_cap_w` (per GPU, W; None: commands carry none) goes out in every command.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        ttl_s: float,
        refresh_frac: float,
        deadband_w: float,
        seq_base: int = 0,
        safe_cap_w: NDArray[np.float64] | None = None,
    ) -> None:
        self.topology = topology
        self.ttl_s = ttl_s
        self.refresh_frac = refresh_frac
        self.deadband_w = deadband_w
        self.safe_cap_w = self._checked(safe_cap_w)
        n, r = topology.n_gpus, topology.n_racks
        self.sent_cap_w = np.full(n, np.nan)
        self.sent_clock_mhz = np.full(n, np.nan)
        self.sent_at_s = np.full(r, -np.inf)
        self.resend_after_s = np.full(r, np.inf)
        self.seq = np.full(r, seq_base, dtype=np.int64)
        self._starts = topology.rack_offsets[:-1]
        self._sizes = np.diff(topology.rack_offsets)
        self._nonempty = self._sizes > 0
        self.sent_total = 0
        #: Of `sent_total`, the protective cuts (`build_in_force`).
        self.protective_total = 0
        self.epoch = 0
        self.ctl = "rheostat"

    def configure(
        self,
        *,
        ttl_s: float,
        refresh_frac: float,
        deadband_w: float,
        safe_cap_w: NDArray[np.float64] | None = None,
    ) -> None:
        """Apply a reloaded policy's timing and safe caps; what was already sent stays remembered.

        New safe caps (a topology or policy change) make every rack due, so that no agent
        falls back to caps that no longer fit.
        """
        self.ttl_s, self.refresh_frac, self.deadband_w = ttl_s, refresh_frac, deadband_w
        self.set_safe_caps(safe_cap_w)

    def set_safe_caps(self, safe_cap_w: NDArray[np.float64] | None) -> bool:
        """Carry these safe caps from now on; if they differ from the ones carried, every rack is
        due, so that no agent falls back to caps that no longer fit. Returns whether they did."""
        safe = self._checked(safe_cap_w)
        unchanged = (safe is None and self.safe_cap_w is None) or (
            safe is not None
            and self.safe_cap_w is not None
            and np.array_equal(safe, self.safe_cap_w)
        )
        self.safe_cap_w = safe
        if not unchanged:
            self.sent_at_s[:] = -np.inf
        return not unchanged

    def _checked(self, safe_cap_w: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
        if safe_cap_w is None:
            return None
        safe = np.asarray(safe_cap_w, dtype=np.float64)
        if safe.shape != (self.topology.n_gpus,):
            raise ValueError(f"safe_cap_w must have shape ({self.topology.n_gpus},)")
        return safe.copy()

    def invalidate(self, now_s: float | None = None) -> None:
        """Make every rack due: after a reconnect the broker may have lost in-flight commands.

        With `now_s` (the reconnect time), each rack is also sent its command again once its
        telemetry shows it is back after `now_s`: an agent that reconnects later than the
        controller missed the first resend, since a restarted broker keeps no sessions.
        """
        self.sent_at_s[:] = -np.inf
        if now_s is not None:
            self.resend_after_s[:] = now_s

    def adopt(self, cap_w: NDArray[np.float64]) -> None:
        """Take over racks another controller commanded: assume they hold `cap_w` (what their
        telemetry reports applying) and make every rack due, so the first commands lower caps
        before any rack's go up, as after any other decision."""
        np.copyto(self.sent_cap_w, cap_w)
        self.sent_clock_mhz[:] = np.nan
        self.invalidate()

    def _per_rack(self, reduce: np.ufunc, per_gpu: NDArray[Any]) -> NDArray[np.float64]:
        """`reduce` (a ufunc: maximum, minimum, fmax) over each rack's rows; 0 for empty racks."""
        out = np.zeros(self.topology.n_racks)
        if per_gpu.size:
            out[self._nonempty] = reduce.reduceat(per_gpu, self._starts[self._nonempty])
        return out

    def urgent(self, decision: Decision, power_w: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per rack, how far (W) its GPUs' present draw exceeds the sum of their new caps.

        Positive beyond the deadband means the rack's command protects a limit: see `due_lanes`.
        GPUs with no reading (NaN) count neither draw nor cap: they never make a rack urgent.
        """
        return self._per_rack(np.add, np.nan_to_num(power_w - decision.cap_w, nan=0.0))

    def due(
        self,
        decision: Decision,
        *,
        now_s: float,
        stale_rack: NDArray[np.bool_],
        last_seen_s: NDArray[np.float64] | None = None,
        power_w: NDArray[np.float64] | None = None,
    ) -> NDArray[np.int64]:
        """Indices of racks to command now: urgent ones (with `power_w`, each GPU's present draw
        in W) first, then lowering racks (blind ones, `stale_rack`, first among them), then by the
        largest cap move; see `due_lanes`.

        `last_seen_s` (per rack, when its telemetry last arrived; -inf: never) triggers the
        resend to racks that came back after a reconnect (see `invalidate`), and leaves out racks
        never heard from.
        """
        urgent, rest = self.due_lanes(
            decision, now_s=now_s, stale_rack=stale_rack, last_seen_s=last_seen_s, power_w=power_w
        )
        return np.concatenate((urgent, rest))

    def due_lanes(
        self,
        decision: Decision,
        *,
        now_s: float,
        stale_rack: NDArray[np.bool_],
        last_seen_s: NDArray[np.float64] | None = None,
        power_w: NDArray[np.float64] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The due racks in two ordered lanes: (urgent, the rest).

        Urgent: the rack's present draw (`power_w`, W per GPU; None makes no rack urgent)
        exceeds the sum of its new caps by more than the deadband, largest excess first. The
        rest: lowering racks first, then raising ones, each by the largest cap move.
        """
        # Three passes over the GPUs instead of one per question: max and min of the cap steps
        # (NaN, never sent, propagates: such a rack moves the most), and the clock test.
        step_w = decision.cap_w - self.sent_cap_w
        down_w = self._per_rack(np.minimum, step_w)
        move_w = np.fmax(self._per_rack(np.maximum, step_w), -down_w)
        lowering = down_w < 0
        move_w[np.isnan(move_w)] = np.inf
        clock_changed = decision.sm_clock_max_mhz != self.sent_clock_mhz
        changed = (move_w > self.deadband_w) | (self._per_rack(np.maximum, clock_changed) > 0)
        refresh = now_s - self.sent_at_s >= self.ttl_s * self.refresh_frac
        wanted = self._nonempty
        if last_seen_s is not None:
            refresh |= last_seen_s > self.resend_after_s
            wanted = wanted & (last_seen_s > -np.inf)
        racks = np.flatnonzero((changed | refresh) & wanted)
        urgent = racks[:0]
        if racks.size and power_w is not None:
            over_w = self.urgent(decision, power_w)[racks]
            # A stale rack's reading is old: it is commanded (below) but never urgent.
            is_urgent = (over_w > self.deadband_w) & ~np.asarray(stale_rack, dtype=np.bool_)[racks]
            urgent = racks[is_urgent][np.argsort(-over_w[is_urgent], kind="stable")]
            racks = racks[~is_urgent]
        if racks.size:
            blind = np.asarray(stale_rack, dtype=np.bool_)[racks]
            racks = racks[np.lexsort((-move_w[racks], ~blind, ~lowering[racks]))]
        return urgent, racks

    def _rows(
        self, racks: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """The GPU rows of `racks`, rack after rack, and each rack's (start, end) among them.

        Work on a batch of racks then touches only their rows, not the whole fleet: the daemon
        sends a burst in small windows, each one costing what its own racks cost.
        """
        sizes = self._sizes[racks]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        rows = np.arange(int(ends[-1]) if ends.size else 0) + np.repeat(
            self.topology.rack_offsets[racks] - starts, sizes
        )
        return rows, starts, ends

    def build(
        self,
        decision: Decision,
        racks: NDArray[np.int64],
        *,
        now_s: float,
        issued_at_s: float | None = None,
    ) -> list[tuple[str, bytes]]:
        """(rack id, encoded command) for each rack, and record them as sent at `now_s`.

        `issued_at_s` (Unix s, default `now_s`) is what the commands say they were issued at.
        """
        rows, starts, ends = self._rows(racks)
        return self._build(
            racks,
            (rows, starts, ends),
            decision.cap_w[rows],
            decision.sm_clock_max_mhz[rows],
            now_s=now_s,
            issued_at_s=issued_at_s,
        )

    def in_force(
        self, decision: Decision, racks: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per GPU row of `racks` (rack after rack): the lower of the last sent and the newest
        decided cap (W) and clock ceiling (MHz); where nothing was sent, the decided ones.

        Each of the two sets fits every limit, so the lower of them does too: the caps a
        protective cut may send without waiting for a tick.
        """
        rows, _, _ = self._rows(racks)
        return (
            np.fmin(self.sent_cap_w[rows], decision.cap_w[rows]),
            np.fmin(self.sent_clock_mhz[rows], decision.sm_clock_max_mhz[rows]),
        )

    def overdrawn(
        self,
        decision: Decision,
        racks: NDArray[np.int64],
        *,
        power_w: NDArray[np.float64],
        reported_cap_w: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Per rack of `racks`: how far (W) some GPU draws over its cap in force while its agent
        reports holding a higher cap than that (it lost or never got its command); 0 where none.

        Only where both hold does a resent command help: a GPU over a cap its agent does hold is
        the device's own overshoot, which no command fixes. A GPU with no reading counts 0.
        """
        if not racks.size:
            return np.zeros(0)
        rows, starts, ends = self._rows(racks)
        cap_w, _ = self.in_force(decision, racks)
        excess_w = np.minimum(power_w[rows] - cap_w, reported_cap_w[rows] - cap_w)
        excess_w = np.nan_to_num(excess_w, nan=0.0, posinf=0.0, neginf=0.0)
        out = np.zeros(racks.size)
        nonempty = ends > starts
        if rows.size:
            out[nonempty] = np.maximum.reduceat(excess_w, starts[nonempty])
        return np.maximum(out, 0.0)

    def build_in_force(
        self,
        decision: Decision,
        racks: NDArray[np.int64],
        *,
        now_s: float,
        issued_at_s: float | None = None,
    ) -> list[tuple[str, bytes]]:
        """Like `build`, with the caps in force (`in_force`) instead of the decision's: a cut
        that never raises any GPU above what it was last sent or newly decided."""
        rows, starts, ends = self._rows(racks)
        cap_w, clock_mhz = self.in_force(decision, racks)
        self.protective_total += racks.size
        return self._build(
            racks, (rows, starts, ends), cap_w, clock_mhz, now_s=now_s, issued_at_s=issued_at_s
        )

    def _build(
        self,
        racks: NDArray[np.int64],
        layout: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
        cap_w: NDArray[np.float64],
        clock_mhz: NDArray[np.float64],
        *,
        now_s: float,
        issued_at_s: float | None,
    ) -> list[tuple[str, bytes]]:
        ids = self.topology.racks.ids
        rows, starts, ends = layout
        self.seq[racks] += 1
        names = [ids[rack] for rack in racks.tolist()]
        payloads = wire.encode_commands(
            names,
            seq=self.seq[racks],
            issued_at_s=now_s if issued_at_s is None else issued_at_s,
            ttl_s=self.ttl_s,
            cap_w=cap_w,
            sm_clock_max_mhz=clock_mhz,
            starts=starts,
            ends=ends,
            safe_cap_w=None if self.safe_cap_w is None else self.safe_cap_w[rows],
            epoch=self.epoch,
            ctl=self.ctl,
        )
        out = list(zip(names, payloads, strict=True))
        self.sent_cap_w[rows] = cap_w
        self.sent_clock_mhz[rows] = clock_mhz
        self.sent_at_s[racks] = now_s
        self.resend_after_s[racks] = np.inf
        self.sent_total += len(out)
        return out
