"""Which racks get a command this tick, and what each command says.

A rack is sent a command when any of its GPUs' caps moved by more than the deadband, a clock
ceiling changed, its safe caps changed, or its last command is `refresh_frac` of the way to
expiry. Stale racks (no telemetry) are commanded like any other: a rack whose reports are lost
may still hear its commands, and a cut the limits need must reach it (the decision never raises
their caps). A rack never heard from since this controller started is left alone: its agent keeps
the command of the controller before (a restart costs nothing) or its safe caps. Racks whose caps
go down are sent first, blind ones first among them, so that during the send no group briefly
holds both its old high caps and its neighbours' new high caps; within each direction the largest
moves go first, so when a fleet-wide shift is sent over several batches a rack whose demand just
changed is not queued behind it. Every command carries its rack's safe caps, what the agent
applies on its own when the command's TTL runs out.
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
        safe = self._checked(safe_cap_w)
        unchanged = (safe is None and self.safe_cap_w is None) or (
            safe is not None
            and self.safe_cap_w is not None
            and np.array_equal(safe, self.safe_cap_w)
        )
        self.safe_cap_w = safe
        if not unchanged:
            self.sent_at_s[:] = -np.inf

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
        """Indices of racks to command now: lowering racks first (blind ones, `stale_rack`,
        first among them), then by the largest cap move.

        `last_seen_s` (per rack, when its telemetry last arrived; -inf: never) triggers the
        resend to racks that came back after a reconnect (see `invalidate`), and leaves out racks
        never heard from.
        """
        cap_delta = np.abs(decision.cap_w - self.sent_cap_w)
        cap_delta = np.where(np.isnan(cap_delta), np.inf, cap_delta)
        clock_changed = ~(decision.sm_clock_max_mhz == self.sent_clock_mhz)
        move_w = self._per_rack_max(cap_delta)
        changed = (move_w > self.deadband_w) | (
            self._per_rack_max(clock_changed.astype(np.float64)) > 0
        )
        refresh = now_s - self.sent_at_s >= self.ttl_s * self.refresh_frac
        wanted = self._nonempty
        if last_seen_s is not None:
            refresh |= last_seen_s > self.resend_after_s
            wanted = wanted & (last_seen_s > -np.inf)
        racks = np.flatnonzero((changed | refresh) & wanted)
        if racks.size:
            lowering = self._per_rack_max(self.sent_cap_w - decision.cap_w)[racks] > 0
            blind = np.asarray(stale_rack, dtype=np.bool_)[racks]
            racks = racks[np.lexsort((-move_w[racks], ~blind, ~lowering))]
        return racks

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
        ids = self.topology.racks.ids
        offsets = self.topology.rack_offsets
        self.seq[racks] += 1
        names = [ids[rack] for rack in racks.tolist()]
        payloads = wire.encode_commands(
            names,
            seq=self.seq[racks],
            issued_at_s=now_s if issued_at_s is None else issued_at_s,
            ttl_s=self.ttl_s,
            cap_w=decision.cap_w,
            sm_clock_max_mhz=decision.sm_clock_max_mhz,
            starts=offsets[racks],
            ends=offsets[racks + 1],
            safe_cap_w=self.safe_cap_w,
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
