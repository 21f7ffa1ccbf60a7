"""Rack agents in the accelerated loop: the wire protocol's rules without a broker.

The closed loop (`simulator.loop`) hands each rack its command in-process; these agents apply
what a real one would (`agent.gate`, which `simulator.agents` runs on a broker), vectorised:

- Acceptance by (epoch, controller instance, seq): a higher epoch wins; in the same epoch a new
  controller instance restarts the sequence; from the same instance only a higher seq is taken.
  Anything else is rejected as `stale_epoch` or `stale_seq` and counted.
- Time to live on the agent's own monotonic clock, counted from receipt: a rack that hears
  nothing newer for `ttl_s` (of its clock, which may run fast or slow) falls back to its safe
  caps: the command's per-GPU `safe_cap_w` when it carried one, else each GPU's minimum cap,
  the one value that is safe whatever the rest of the fleet draws.

Caps reach the GPUs through `SimCluster.command`, so the actuation lag applies as for any command.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from simulator.cluster import SimCluster

FloatArray = NDArray[np.float64]

#: Reasons a command is refused for its ordering (the wire protocol's names).
STALE_EPOCH = "stale_epoch"
STALE_SEQ = "stale_seq"


@dataclass(frozen=True, slots=True, kw_only=True)
class RackCommand:
    """What one command carries that the agent's rules read. Units: W, MHz, s.

    `ctl` is the controller instance id, `seq` its strictly increasing counter, `epoch` the
    leader's term (0 without HA). `safe_cap_w`, when given, holds one cap per GPU of the rack.
    """

    epoch: int
    ctl: str
    seq: int
    ttl_s: float
    cap_w: FloatArray
    sm_clock_max_mhz: FloatArray
    safe_cap_w: FloatArray | None = None


def acceptance(held: tuple[int, str, int] | None, epoch: int, ctl: str, seq: int) -> str | None:
    """None when a command ordered (epoch, ctl, seq) is taken over `held`, else the reason."""
    if held is None:
        return None
    held_epoch, held_ctl, held_seq = held
    if epoch > held_epoch:
        return None
    if epoch < held_epoch:
        return STALE_EPOCH
    if ctl != held_ctl:
        return None  # a restarted controller in the same term restarts its sequence
    return None if seq > held_seq else STALE_SEQ


@dataclass(eq=False, kw_only=True)
class FastAgents:
    """The agents of one cluster, stepped by the closed loop on its clock (true seconds).

    `clock_rate[r]` is how fast rack r's monotonic clock runs against true time; `clock_offset_s`
    shifts its wall clock, which no rule reads (it is kept to show that). What each agent holds
    (epoch, controller instance, seq of the command in force) is kept as arrays so a decision's
    commands to every rack are checked at once; `held_epoch` is -1 before the first command.
    """

    cluster: SimCluster
    held_epoch: NDArray[np.int64] = field(init=False)
    held_ctl: NDArray[np.object_] = field(init=False)
    held_seq: NDArray[np.int64] = field(init=False)
    #: Expiry on each agent's monotonic clock (inf: no command in force). Units: s.
    expires_mono_s: FloatArray = field(init=False)
    #: Each agent's monotonic reading at the last `advance`. Units: s.
    mono_s: FloatArray = field(init=False)
    clock_rate: FloatArray = field(init=False)
    clock_offset_s: FloatArray = field(init=False)
    on_safe_cap: NDArray[np.bool_] = field(init=False)
    safe_w: FloatArray = field(init=False)
    applied: NDArray[np.int64] = field(init=False)
    fallbacks: NDArray[np.int64] = field(init=False)
    rejected: dict[str, NDArray[np.int64]] = field(init=False)
    _last_s: float = field(init=False, default=float("nan"))

    def __post_init__(self) -> None:
        topo = self.cluster.topology
        n = topo.n_racks
        self.held_epoch = np.full(n, -1, dtype=np.int64)
        self.held_ctl = np.full(n, "", dtype=object)
        self.held_seq = np.zeros(n, dtype=np.int64)
        self.expires_mono_s = np.full(n, np.inf)
        self.mono_s = np.zeros(n)
        self.clock_rate = np.ones(n)
        self.clock_offset_s = np.zeros(n)
        self.on_safe_cap = np.zeros(n, dtype=bool)
        self.safe_w = topo.gpu_min_cap_w.copy()
        self.applied = np.zeros(n, dtype=np.int64)
        self.fallbacks = np.zeros(n, dtype=np.int64)
        self.rejected = {
            STALE_EPOCH: np.zeros(n, dtype=np.int64),
            STALE_SEQ: np.zeros(n, dtype=np.int64),
        }

    def held(self, rack: int) -> tuple[int, str, int] | None:
        """(epoch, controller instance, seq) of the command rack `rack` obeys, None before one."""
        if self.held_epoch[rack] < 0:
            return None
        return int(self.held_epoch[rack]), str(self.held_ctl[rack]), int(self.held_seq[rack])

    def advance(self, now_s: float) -> None:
        """Move every agent's monotonic clock to true time `now_s` and expire stale commands."""
        if not np.isnan(self._last_s):
            self.mono_s += self.clock_rate * max(now_s - self._last_s, 0.0)
        self._last_s = now_s
        expired = np.flatnonzero((self.mono_s >= self.expires_mono_s) & ~self.on_safe_cap)
        topo = self.cluster.topology
        for rack in expired.tolist():
            rows = topo.rack_slice(rack)
            self.cluster.command(self.safe_w[rows], self.cluster.consts.max_clock_mhz[rows], rows)
            self.on_safe_cap[rack] = True
            self.expires_mono_s[rack] = np.inf
            self.fallbacks[rack] += 1

    def deliver(self, rack: int, cmd: RackCommand) -> bool:
        """One command reaching rack `rack` now; False when the ordering rule refuses it."""
        reason = acceptance(self.held(rack), cmd.epoch, cmd.ctl, cmd.seq)
        if reason is not None:
            self.rejected[reason][rack] += 1
            return False
        rows = self.cluster.topology.rack_slice(rack)
        self.cluster.command(cmd.cap_w, cmd.sm_clock_max_mhz, rows)
        self._take(np.array([rack]), cmd.epoch, cmd.ctl, cmd.seq, cmd.ttl_s)
        if cmd.safe_cap_w is not None:
            self._set_safe(rows, cmd.safe_cap_w)
        return True

    def deliver_fleet(
        self,
        reached: NDArray[np.bool_],
        *,
        epoch: int,
        ctl: str,
        seq: int,
        ttl_s: float,
        cap_w: FloatArray,
        sm_clock_max_mhz: FloatArray,
        safe_cap_w: FloatArray | None = None,
    ) -> int:
        """One decision's commands (one per rack, fleet-wide arrays) reaching the racks in
        `reached`; each agent applies the acceptance rule and keeps the command's safe caps
        (`safe_cap_w`, per GPU) when it carried them. Returns how many racks accepted."""
        newer = self.held_epoch < epoch
        same = self.held_epoch == epoch
        fresh_ctl = self.held_ctl != ctl
        accept = reached & (newer | (same & (fresh_ctl | (self.held_seq < seq))))
        refused = reached & ~accept
        if refused.any():
            self.rejected[STALE_EPOCH] += refused & (self.held_epoch > epoch)
            self.rejected[STALE_SEQ] += refused & same & ~fresh_ctl
        racks = np.flatnonzero(accept)
        topo = self.cluster.topology
        took = accept[topo.gpu_group[topo.rack_level]]  # per GPU: its rack accepted
        if racks.size == accept.size:
            self.cluster.command(cap_w, sm_clock_max_mhz)
        elif racks.size:
            rows = np.flatnonzero(took)  # one command for every accepting rack's GPUs
            self.cluster.command(cap_w[rows], sm_clock_max_mhz[rows], rows)
        self._take(racks, epoch, ctl, seq, ttl_s)
        if safe_cap_w is not None and racks.size:
            safe = np.clip(safe_cap_w, topo.gpu_min_cap_w, topo.gpu_max_cap_w)
            self.safe_w[took] = safe[took]
        return int(racks.size)

    def _take(self, racks: NDArray[np.int64], epoch: int, ctl: str, seq: int, ttl_s: float) -> None:
        self.held_epoch[racks] = epoch
        self.held_ctl[racks] = ctl
        self.held_seq[racks] = seq
        self.expires_mono_s[racks] = self.mono_s[racks] + ttl_s
        self.on_safe_cap[racks] = False
        self.applied[racks] += 1

    def _set_safe(self, rows: slice, safe_w: FloatArray) -> None:
        topo = self.cluster.topology
        self.safe_w[rows] = np.clip(safe_w, topo.gpu_min_cap_w[rows], topo.gpu_max_cap_w[rows])
