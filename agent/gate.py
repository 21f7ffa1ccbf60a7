"""Which commands an agent obeys, and what it does when they stop coming: pure bookkeeping.

Acceptance rule (the controller side is `controller/command_book.py` and the HA election):
- a higher `epoch` (the leader's term) always wins;
- the same epoch from another controller instance (`ctl`) is accepted: a controller that restarted
  within its term starts its sequence again;
- the same epoch and instance is accepted only with a higher `seq`.
Anything else is rejected as `stale_epoch` (a lower epoch) or `stale_seq`, and counted.

Watchdog: a command is obeyed for `ttl_s` from its receipt on the agent's monotonic clock, so no
wall clock, skewed or stepped, can stretch it. When it runs out with nothing newer, the agent
applies the safe caps of the last accepted command (`safe_cap_w`), else its configured ones,
and says so (`fallback`) until the next accepted command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controller.wire import COMMAND_REJECT_REASONS, FloatArray, NodeCommand


@dataclass(eq=False, kw_only=True)
class CommandGate:
    """The acceptance state and the TTL watchdog of one agent. Times are monotonic seconds."""

    configured_safe_cap_w: FloatArray
    held_epoch: int = -1
    held_ctl: str = ""
    held_seq: int = -1
    expires_at: float = math.inf
    fallback: bool = False
    last: NodeCommand | None = None
    rejected: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(COMMAND_REJECT_REASONS, 0)
    )
    accepted: int = 0
    fallbacks: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def offer(self, cmd: NodeCommand, now: float) -> bool:
        """Apply the acceptance rule; on True the caller applies `cmd` (the TTL starts now)."""
        if cmd.epoch < self.held_epoch:
            self.reject("stale_epoch")
            return False
        if cmd.epoch == self.held_epoch and cmd.ctl == self.held_ctl and cmd.seq <= self.held_seq:
            self.reject("stale_seq")
            return False
        self.held_epoch, self.held_ctl, self.held_seq = cmd.epoch, cmd.ctl, cmd.seq
        self.expires_at = now + cmd.ttl_s
        self.fallback = False
        self.last = cmd
        self.accepted += 1
        return True

    def due(self, now: float) -> FloatArray | None:
        """The safe caps to apply now if the command in force just ran out, else None."""
        if self.fallback or now < self.expires_at:
            return None
        self.fallback = True
        self.expires_at = math.inf
        self.fallbacks += 1
        return self.safe_caps()

    def safe_caps(self) -> FloatArray:
        last = self.last
        if last is not None and last.safe_cap_w is not None:
            return np.asarray(last.safe_cap_w, np.float64)
        return self.configured_safe_cap_w

    @property
    def cmd_epoch(self) -> int:
        return max(self.held_epoch, 0)

    @property
    def cmd_seq(self) -> int:
        return max(self.held_seq, 0)
