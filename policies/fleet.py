"""The fleet's latest telemetry as a struct of arrays: one row per GPU, one entry per rack.

Racks own contiguous row ranges (see `Topology.rack_slice`), so the ingest path writes a whole
rack with one slice assignment per field and the decision core reads plain arrays. Freshness is
tracked per rack because a rack's GPUs always arrive together in one message.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from policies.topology import Topology

FloatArray = NDArray[np.float64]

#: Workload-class code of a GPU nobody has reported yet; it maps to the idle/unknown class.
UNKNOWN_CLASS = 0


@dataclass(eq=False, kw_only=True)
class FleetState:
    """Latest telemetry per GPU and per rack. Units in the names; times are seconds on one clock.

    `workload_class` holds codes into a class table kept by whoever ingests (code 0 = unknown),
    so the policy can map classes to tiers without strings in the hot path. `rack_last_seen_s`
    is -inf for a rack never heard from, which makes it stale under any timeout.
    """

    power_w: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    mem_util: FloatArray
    temp_c: FloatArray
    cap_w: FloatArray
    workload_class: NDArray[np.int16]
    rack_power_w: FloatArray
    rack_last_seen_s: FloatArray
    rack_seq: NDArray[np.int64]

    @classmethod
    def empty(cls, topology: Topology) -> FleetState:
        """State before any telemetry: GPUs assumed at their max cap, every rack stale."""
        n, r = topology.n_gpus, topology.n_racks
        return cls(
            power_w=topology.gpu_max_cap_w.copy(),
            sm_clock_mhz=np.zeros(n),
            util=np.zeros(n),
            mem_util=np.zeros(n),
            temp_c=np.zeros(n),
            cap_w=topology.gpu_max_cap_w.copy(),
            workload_class=np.full(n, UNKNOWN_CLASS, dtype=np.int16),
            rack_power_w=np.zeros(r),
            rack_last_seen_s=np.full(r, -np.inf),
            rack_seq=np.full(r, -1, dtype=np.int64),
        )

    def copy(self) -> FleetState:
        """A snapshot the decision core may read while ingest keeps writing the original."""
        return FleetState(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def stale_racks(self, now_s: float, timeout_s: float) -> NDArray[np.bool_]:
        """Racks silent for over `timeout_s`; the policy counts them at their worst case."""
        return (now_s - self.rack_last_seen_s) > timeout_s

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))
