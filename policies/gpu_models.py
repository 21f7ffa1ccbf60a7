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
    #: The names NVML (`nvmlDeviceGetName`, `nvidia-smi --query-gpu=name`) reports for it.
    nvml_names: tuple[str, ...] = ()

    @property
    def nvml_name(self) -> str:
        """The first name NVML reports for this model (the catalog name when unknown)."""
        return self.nvml_names[0] if self.nvml_names else self.name

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
    nvml_names=("NVIDIA H100 80GB HBM3",),
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
    nvml_names=("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB"),
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
