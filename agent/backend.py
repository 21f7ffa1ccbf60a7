"""The one interface between the agent and GPUs: read every GPU of a node, cap it, restore it.

Two implementations: `agent.nvml.NvmlBackend` (real GPUs through NVML) and
`simulator.gpu_backend.SimGpuBackend` (the simulator's GPU physics), so the agent's loop, watchdog
and acceptance rule run unchanged in tests, the demo and production. Every value is per GPU, as
one numpy array per field in on-host index order; units are in the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from policies.errors import RheostatError

FloatArray = NDArray[np.float64]


class BackendError(RheostatError):
    """A GPU library failed or refused: the agent logs it and keeps its last state."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuIdentity:
    """What never changes while the agent runs: identities, limit constraints and clock ranges.

    `default_cap_w` and the clock range are what `restore_defaults` returns to; caps and clocks
    are only ever requested inside `[min_cap_w, max_cap_w]` and `[min_sm_clock_mhz,
    max_sm_clock_mhz]`. Units: W, MHz.
    """

    index: tuple[int, ...]
    uuid: tuple[str, ...]
    pci_bus_id: tuple[str, ...]
    name: tuple[str, ...]
    min_cap_w: FloatArray
    max_cap_w: FloatArray
    default_cap_w: FloatArray
    min_sm_clock_mhz: FloatArray
    max_sm_clock_mhz: FloatArray

    @property
    def n_gpus(self) -> int:
        return len(self.index)


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class GpuReading:
    """One reading of every GPU. NaN marks a field this GPU does not report.

    `power_w` is the 1 s average where the GPU has one, else the driver's power reading;
    `power_instant_w` the instantaneous sample (NaN where absent); `energy_j` the driver's energy
    counter since driver load; `cap_w` the limit the GPU enforces now (read back, not assumed).
    Units: W, J, MHz, fractions in [0, 1], degrees C.
    """

    power_w: FloatArray
    power_instant_w: FloatArray
    energy_j: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    mem_util: FloatArray
    temp_c: FloatArray
    cap_w: FloatArray
    sm_clock_max_mhz: FloatArray


class GpuBackend(Protocol):
    """What the agent needs from a GPU library. Calls may block (NVML takes 10-20 ms per call):
    the agent runs them in a worker thread, one at a time."""

    @property
    def name(self) -> str:
        """Backend name as `--backend` takes it."""
        ...

    def identity(self) -> GpuIdentity: ...

    def read(self) -> GpuReading: ...

    def apply(self, cap_w: FloatArray, sm_clock_max_mhz: FloatArray) -> None:
        """Set each GPU's power limit and SM-clock ceiling, already clipped to the identity's
        ranges by the caller. Raises `BackendError` when the library refuses."""
        ...

    def restore_defaults(self) -> None:
        """Return every GPU to the limit and clocks it had when the backend started."""
        ...

    def close(self) -> None: ...


def clip_to_ranges(
    ident: GpuIdentity, cap_w: FloatArray, sm_clock_max_mhz: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Caps and clock ceilings inside what each GPU reports it accepts (never ask outside)."""
    caps = np.clip(np.asarray(cap_w, np.float64), ident.min_cap_w, ident.max_cap_w)
    clocks = np.clip(
        np.asarray(sm_clock_max_mhz, np.float64), ident.min_sm_clock_mhz, ident.max_sm_clock_mhz
    )
    return caps, clocks


def highest_at_most(supported: Sequence[float], ceiling: float) -> float:
    """The highest supported clock at or below `ceiling`, else the lowest supported one.

    Application clocks only take values from the GPU's supported list, so a ceiling between two
    steps rounds down: the GPU then never runs above what the controller asked for.
    """
    if not supported:
        raise BackendError("the GPU reports no supported clocks")
    below = [c for c in supported if c <= ceiling]
    return max(below) if below else min(supported)
