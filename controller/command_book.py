"""Which racks get a command this tick, and what each command says.

A rack is sent a command when any of its GPUs' caps moved by more than the deadband, a clock
ceiling changed, or its last command is `refresh_frac` of the way to expiry. Stale racks get none:
their agents stay on their own safe caps until telemetry returns. Racks whose caps go down are
sent first, so that during the send no group briefly holds both its old high caps and its
neighbours' new high caps; within each direction the largest moves go first, so when a fleet-wide
shift is sent over several batches a rack whose demand just changed is not queued behind it.
The per-rack test is vectorized with `np.maximum.reduceat` over the contiguous rack row ranges.
"""

from __future__ import annotations

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
        #: Stamped on every command: the leader's term and this controller's instance id.
        self.epoch = 0
        self.ctl: str | None = None

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

    def adopt(self, cap_w: NDArray[np.float64]) -> None:
        """Take over racks another controller commanded: assume they hold `cap_w` (what their
        telemetry reports applying) and make every rack due, so the first commands lower caps
        before any rack's go up, as after any other decision."""
        np.copyto(self.sent_cap_w, cap_w)
        self.sent_clock_mhz[:] = np.nan
        self.invalidate()

    def _per_rack_max(self, per_gpu: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.zeros(self.topology.n_racks)
        if per_gpu.size:
            out[self._nonempty] = np.maximum.reduceat(per_gpu, self._starts[self._nonempty])
        return out

    def due(
        self,
        decision: Decision,
        *,
        now_s: float,
        stale_rack: NDArray[np.bool_],
        last_seen_s: NDArray[np.float64] | None = None,
    ) -> NDArray[np.int64]:
        """Indices of racks to command now: lowering racks first, then by the largest cap move.

        `last_seen_s` (per rack, when its telemetry last arrived) triggers the resend to racks
        that came back after a reconnect; see `invalidate`.
        """
        cap_delta = np.abs(decision.cap_w - self.sent_cap_w)
        cap_delta = np.where(np.isnan(cap_delta), np.inf, cap_delta)
        clock_changed = ~(decision.sm_clock_max_mhz == self.sent_clock_mhz)
        move_w = self._per_rack_max(cap_delta)
        changed = (move_w > self.deadband_w) | (
            self._per_rack_max(clock_changed.astype(np.float64)) > 0
        )
        refresh = now_s - self.sent_at_s >= self.ttl_s * self.refresh_frac
        if last_seen_s is not None:
            refresh |= last_seen_s > self.resend_after_s
        racks = np.flatnonzero((changed | refresh) & ~stale_rack & self._nonempty)
        if racks.size:
            lowering = self._per_rack_max(self.sent_cap_w - decision.cap_w)[racks] > 0
            racks = racks[np.lexsort((-move_w[racks], ~lowering))]
        return racks

    def build(
        self, decision: Decision, racks: NDArray[np.int64], *, now_s: float
    ) -> list[tuple[str, bytes]]:
        """(rack id, encoded command) for each rack, and record them as sent."""
        ids = self.topology.racks.ids
        offsets = self.topology.rack_offsets
        self.seq[racks] += 1
        names = [ids[rack] for rack in racks.tolist()]
        payloads = wire.encode_commands(
            names,
            seq=self.seq[racks],
            issued_at_s=now_s,
            ttl_s=self.ttl_s,
            cap_w=decision.cap_w,
            sm_clock_max_mhz=decision.sm_clock_max_mhz,
            starts=offsets[racks],
            ends=offsets[racks + 1],
            epoch=self.epoch,
            ctl=self.ctl,
        )
        out = list(zip(names, payloads, strict=True))
        sent_rack = np.zeros(self.topology.n_racks, dtype=np.bool_)
        sent_rack[racks] = True
        sent_gpu = np.repeat(sent_rack, self._sizes)
        np.copyto(self.sent_cap_w, decision.cap_w, where=sent_gpu)
        np.copyto(self.sent_clock_mhz, decision.sm_clock_max_mhz, where=sent_gpu)
        self.sent_at_s[racks] = now_s
        self.resend_after_s[racks] = np.inf
        self.sent_total += len(out)
        return out
