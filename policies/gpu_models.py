"""Per-model GPU facts the decision core needs: cap range, clock range and step, thermal limits.

Figures come from `nvidia-smi -q` dumps and NVIDIA documentation (see docs in README, section
"Calibration"). Values marked *estimate* had no primary source and are named parameters so a site
can override them from its own measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.errors import TopologyError


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuModel:
    """Static facts of one GPU model. Units: W, MHz, degrees C."""

    name: str
    min_cap_w: float
    max_cap_w: float
    idle_w: float
    min_sm_clock_mhz: float
    max_sm_clock_mhz: float
    sm_clock_step_mhz: float
    memory_clock_mhz: float
    slowdown_temp_c: float
    shutdown_temp_c: float

    def __post_init__(self) -> None:
        if not 0 < self.min_cap_w <= self.max_cap_w:
            raise TopologyError("min cap must be positive and at most the max cap", field=self.name)
        if not 0 < self.min_sm_clock_mhz <= self.max_sm_clock_mhz:
            raise TopologyError("SM clock range is empty", field=self.name)


H100_SXM5 = GpuModel(
    name="H100-SXM5",
    min_cap_w=200.0,
    max_cap_w=700.0,
    idle_w=80.0,  # measured idle 71-101 W
    min_sm_clock_mhz=345.0,  # lowest supported graphics clock (estimate)
    max_sm_clock_mhz=1980.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=2619.0,
    slowdown_temp_c=89.0,
    shutdown_temp_c=92.0,
)

A100_SXM4 = GpuModel(
    name="A100-SXM4",
    min_cap_w=100.0,
    max_cap_w=400.0,
    idle_w=55.0,  # measured idle ~50-60 W
    min_sm_clock_mhz=210.0,
    max_sm_clock_mhz=1410.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=1593.0,
    slowdown_temp_c=87.0,  # ~85-90 C (estimate)
    shutdown_temp_c=90.0,
)

#: Model codes used in topology arrays: `gpu_model[i]` indexes this tuple.
GPU_MODELS: tuple[GpuModel, ...] = (H100_SXM5, A100_SXM4)
MODEL_CODE: dict[str, int] = {m.name: i for i, m in enumerate(GPU_MODELS)}


def model_code(name: str) -> int:
    """Model code for a name as written in inventories and snapshots."""
    try:
        return MODEL_CODE[name]
    except KeyError:
        known = ", ".join(MODEL_CODE)
        raise TopologyError(f"unknown GPU model {name!r} (known: {known})") from None


def model_table(attribute: str) -> NDArray[np.float64]:
    """One attribute of every model as an array indexed by model code, for fancy indexing."""
    return np.array([float(getattr(m, attribute)) for m in GPU_MODELS], dtype=np.float64)


# --- Newer models a fleet (and a simulated fleet) is built of ---------------------------------
# Appended after the first codes so every existing code keeps its meaning. Names follow the GPU
# catalog's keys ("H200-SXM", "B200", "GB200"); anything below without a source is *estimate*.

#: H200 SXM: read through NVML on a real "NVIDIA H200" (power limit constraints 200-700 W,
#: default limit 700 W, SM clocks 345-1980 MHz in 15 MHz steps, ~79 W idle at 345 MHz); memory
#: clock 3201 MHz (HBM3e, datasheet 4.8 TB/s). Thermal limits as the H100 SXM5 (*estimate*).
H200_SXM = GpuModel(
    name="H200-SXM",
    min_cap_w=200.0,
    max_cap_w=700.0,
    idle_w=79.0,
    min_sm_clock_mhz=345.0,
    max_sm_clock_mhz=1980.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3201.0,
    slowdown_temp_c=89.0,
    shutdown_temp_c=92.0,
)

#: B200 (HGX/DGX B200): up to 1,000 W per GPU (NVIDIA HGX B200 datasheet). Min limit, idle,
#: clocks and thermal limits are *estimates* (Hopper's floor and step; idle scaled by TDP).
B200 = GpuModel(
    name="B200",
    min_cap_w=200.0,
    max_cap_w=1000.0,
    idle_w=140.0,
    min_sm_clock_mhz=345.0,
    max_sm_clock_mhz=1965.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3996.0,
    slowdown_temp_c=87.0,
    shutdown_temp_c=92.0,
)

#: GB200 (the Blackwell GPUs of a GB200 NVL72): up to 1,200 W per GPU (NVIDIA GB200 NVL72
#: datasheet). Min limit, idle, clocks and thermal limits are *estimates*.
GB200 = GpuModel(
    name="GB200",
    min_cap_w=200.0,
    max_cap_w=1200.0,
    idle_w=150.0,
    min_sm_clock_mhz=345.0,
    max_sm_clock_mhz=2062.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3996.0,
    slowdown_temp_c=87.0,
    shutdown_temp_c=92.0,
)

GPU_MODELS = (*GPU_MODELS, H200_SXM, B200, GB200)
MODEL_CODE = {m.name: i for i, m in enumerate(GPU_MODELS)}
