"""Which racks get a command this tick, and what each command says.

A rack is sent a command when any of its GPUs' caps moved by more than the deadband, a clock
ceiling changed, or its last command is `refresh_frac` of the way to expiry. Stale racks get none:
their agents stay on their own safe caps until telemetry returns.
Order: urgent racks first, those whose new caps cut some GPU more than the deadband below what it
draws now (a rack over its limit, or whose new limit is below its present draw): until their
command lands, a limit is being exceeded, so they go ahead of everything else (largest overdraw
first; the daemon also sends them on their own lane, see `controller.publisher`). Then racks whose
caps go down, so that during the send no group briefly holds both its old high caps and its
neighbours' new high caps; within each direction the largest moves go first, so when a fleet-wide
shift is sent over several batches a rack whose demand just changed is not queued behind it.
The per-rack test is vectorized with `np.maximum.reduceat` over the contiguous rack row ranges.
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

    Units: W, MHz, s. `issued_at_s` is wall-clock time (it travels on the wire); `sent_at_s`
    records when each rack was last commanded. `seq_base` seeds the per-rack sequence (the daemon
    uses the start time in ms) so a restarted controller's commands still count upwards.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        ttl_s: float,
        refresh_frac: float,
        deadband_w: float,
        seq_base: int = 0,
    ) -> None:
        self.topology = topology
        self.ttl_s = ttl_s
        self.refresh_frac = refresh_frac
        self.deadband_w = deadband_w
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

    def configure(self, *, ttl_s: float, refresh_frac: float, deadband_w: float) -> None:
        """Apply reloaded policy timing; what was already sent stays remembered."""
        self.ttl_s, self.refresh_frac, self.deadband_w = ttl_s, refresh_frac, deadband_w

    def invalidate(self, now_s: float | None = None) -> None:
        """Make every rack due: after a reconnect the broker may have lost in-flight commands.

        With `now_s` (the reconnect time), each rack is also sent its command again once its
        telemetry shows it is back after `now_s`: an agent that reconnects later than the
        controller missed the first resend, since a restarted broker keeps no sessions.
        """
        self.sent_at_s[:] = -np.inf
        if now_s is not None:
            self.resend_after_s[:] = now_s

    def _per_rack(self, reduce: np.ufunc, per_gpu: NDArray[Any]) -> NDArray[np.float64]:
        """`reduce` (a ufunc: maximum, minimum, fmax) over each rack's rows; 0 for empty racks."""
        out = np.zeros(self.topology.n_racks)
        if per_gpu.size:
            out[self._nonempty] = reduce.reduceat(per_gpu, self._starts[self._nonempty])
        return out

    def urgent(self, decision: Decision, power_w: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per rack, how far (W) the decision puts some GPU's cap below what it draws now.

        Positive beyond the deadband means the rack's command protects a limit: see `due_lanes`.
        A GPU with no reading (NaN) never makes its rack urgent.
        """
        return self._per_rack(np.fmax, power_w - decision.cap_w)

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
        in W) first, then lowering racks, then by the largest cap move; see `due_lanes`.

        `last_seen_s` (per rack, when its telemetry last arrived) triggers the resend to racks
        that came back after a reconnect; see `invalidate`.
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

        Urgent: the new caps cut some GPU more than the deadband below its present draw
        (`power_w`, W; None makes no rack urgent), largest cut first. The rest: lowering racks
        first, then raising ones, each by the largest cap move.
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
        if last_seen_s is not None:
            refresh |= last_seen_s > self.resend_after_s
        racks = np.flatnonzero((changed | refresh) & ~stale_rack & self._nonempty)
        urgent = racks[:0]
        if racks.size and power_w is not None:
            over_w = self.urgent(decision, power_w)[racks]
            is_urgent = over_w > self.deadband_w
            urgent = racks[is_urgent][np.argsort(-over_w[is_urgent], kind="stable")]
            racks = racks[~is_urgent]
        if racks.size:
            racks = racks[np.lexsort((-move_w[racks], ~lowering[racks]))]
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
        self, decision: Decision, racks: NDArray[np.int64], *, now_s: float
    ) -> list[tuple[str, bytes]]:
        """(rack id, encoded command) for each rack, and record them as sent."""
        ids = self.topology.racks.ids
        rows, starts, ends = self._rows(racks)
        self.seq[racks] += 1
        names = [ids[rack] for rack in racks.tolist()]
        cap_w = decision.cap_w[rows]
        clock_mhz = decision.sm_clock_max_mhz[rows]
        payloads = wire.encode_commands(
            names,
            seq=self.seq[racks],
            issued_at_s=now_s,
            ttl_s=self.ttl_s,
            cap_w=cap_w,
            sm_clock_max_mhz=clock_mhz,
            starts=starts,
            ends=ends,
        )
        out = list(zip(names, payloads, strict=True))
        self.sent_cap_w[rows] = cap_w
        self.sent_clock_mhz[rows] = clock_mhz
        self.sent_at_s[racks] = now_s
        self.resend_after_s[racks] = np.inf
        self.sent_total += len(out)
        return out
