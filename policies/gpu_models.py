"""Per-model GPU facts the decision core needs: cap range, clock range and step, thermal limits.

The catalog: each model cites its source (`source`): the maximum power limit and boost clock come
from NVIDIA's datasheets, minimum limits and clock ranges from `nvidia-smi -q` / NVML dumps where
published. Values marked *estimate* had no primary source; they only matter until an agent
reports the GPU's own limit constraints (`nvmlDeviceGetPowerManagementLimitConstraints`), which
take precedence over this table (`controller.nodes`). A model is found by its catalog key (as
scenarios and policies name it) or by any name NVML reports for it (`nvmlDeviceGetName`, the name
`nvidia-smi` prints), ignoring case and spacing; a site adds its own models in its policy
(`gpu_models`), registered here with `register_model`.
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
    #: Where the figures come from (datasheet, nvidia-smi dump); "site policy" for site models.
    source: str = ""

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
    source="NVIDIA H100 Tensor Core GPU datasheet (SXM: up to 700 W); DGX H100 user guide, "
    "Redfish PowerLimitWatts AllowableMin 200 / AllowableMax 700",
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
    source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 40 GB and 80 GB: 400 W, boost 1410 MHz)",
)

H100_PCIE = GpuModel(
    name="H100-PCIe",
    min_cap_w=200.0,
    max_cap_w=350.0,
    idle_w=50.0,  # estimate
    min_sm_clock_mhz=345.0,  # estimate, as the SXM part
    max_sm_clock_mhz=1755.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=1593.0,
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA H100 PCIe",),
    source="NVIDIA H100 Tensor Core GPU datasheet (PCIe: 300-350 W configurable)",
)

H100_NVL = GpuModel(
    name="H100-NVL",
    min_cap_w=200.0,  # estimate
    max_cap_w=400.0,
    idle_w=60.0,  # estimate
    min_sm_clock_mhz=345.0,  # estimate
    max_sm_clock_mhz=1785.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=2619.0,
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA H100 NVL",),
    source="NVIDIA H100 Tensor Core GPU datasheet (NVL: 350-400 W configurable)",
)

H200_SXM = GpuModel(
    name="H200-SXM",
    min_cap_w=200.0,
    max_cap_w=700.0,
    idle_w=79.0,  # measured: 79.2 W at 345 MHz through NVML (bench/device_check.sh on an H200)
    min_sm_clock_mhz=345.0,  # measured: NVML's supported clocks, 345-1980 MHz in 15 MHz steps
    max_sm_clock_mhz=1980.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3201.0,  # measured: NVML's highest supported memory clock
    slowdown_temp_c=89.0,  # estimate, as the H100 SXM
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA H200",),
    source="NVIDIA H200 Tensor Core GPU datasheet (SXM: up to 700 W); DGX H100/H200 user guide "
    "(Redfish power limits 200-700 W); limits 200-700 W, default 700 W, clocks and idle power "
    "read through NVML on an H200 (driver 580.159.04)",
)

H200_NVL = GpuModel(
    name="H200-NVL",
    min_cap_w=200.0,  # estimate
    max_cap_w=600.0,
    idle_w=70.0,  # estimate
    min_sm_clock_mhz=345.0,  # estimate
    max_sm_clock_mhz=1785.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3201.0,
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA H200 NVL",),
    source="NVIDIA H200 Tensor Core GPU datasheet (NVL: up to 600 W)",
)

B200 = GpuModel(
    name="B200",
    min_cap_w=200.0,  # estimate
    max_cap_w=1000.0,
    idle_w=140.0,  # estimate
    min_sm_clock_mhz=345.0,  # estimate
    max_sm_clock_mhz=1965.0,  # estimate
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3996.0,  # estimate
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA B200",),
    source="NVIDIA HGX B200 / DGX B200 datasheets (up to 1,000 W per GPU)",
)

GB200 = GpuModel(
    name="GB200",
    min_cap_w=200.0,  # estimate
    max_cap_w=1200.0,
    idle_w=150.0,  # estimate
    min_sm_clock_mhz=345.0,  # estimate
    max_sm_clock_mhz=2062.0,  # estimate
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=3996.0,  # estimate
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=92.0,  # estimate
    nvml_names=("NVIDIA GB200",),
    source="NVIDIA GB200 NVL72 datasheet and multi-node tuning guide (up to 1,200 W per "
    "Blackwell GPU, power profiles below it)",
)

A100_PCIE_80 = GpuModel(
    name="A100-PCIe-80GB",
    min_cap_w=150.0,
    max_cap_w=300.0,
    idle_w=45.0,  # estimate
    min_sm_clock_mhz=210.0,
    max_sm_clock_mhz=1410.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=1512.0,
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=90.0,  # estimate
    nvml_names=("NVIDIA A100 80GB PCIe",),
    source="NVIDIA A100 Tensor Core GPU datasheet (PCIe 80 GB: 300 W)",
)

A100_PCIE_40 = GpuModel(
    name="A100-PCIe-40GB",
    min_cap_w=150.0,
    max_cap_w=250.0,
    idle_w=40.0,  # estimate
    min_sm_clock_mhz=210.0,
    max_sm_clock_mhz=1410.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=1215.0,
    slowdown_temp_c=87.0,  # estimate
    shutdown_temp_c=90.0,  # estimate
    nvml_names=("NVIDIA A100-PCIE-40GB",),
    source="NVIDIA A100 Tensor Core GPU datasheet (PCIe 40 GB: 250 W)",
)

L40S = GpuModel(
    name="L40S",
    min_cap_w=100.0,  # estimate
    max_cap_w=350.0,
    idle_w=35.0,  # estimate
    min_sm_clock_mhz=210.0,  # estimate
    max_sm_clock_mhz=2520.0,
    sm_clock_step_mhz=15.0,
    memory_clock_mhz=9001.0,
    slowdown_temp_c=88.0,  # estimate
    shutdown_temp_c=93.0,  # estimate
    nvml_names=("NVIDIA L40S",),
    source="NVIDIA L40S GPU datasheet (350 W max power, 2520 MHz boost, GDDR6 18 Gbps)",
)

#: Model codes used in topology arrays: `gpu_model[i]` indexes this list. The first two codes
#: are fixed (snapshots and scenarios store them); catalog models follow, then site models in the
#: order their policies registered them. It only ever grows, so a code never changes meaning.
GPU_MODELS: list[GpuModel] = [
    H100_SXM5,
    A100_SXM4,
    H100_PCIE,
    H100_NVL,
    H200_SXM,
    H200_NVL,
    B200,
    GB200,
    A100_PCIE_80,
    A100_PCIE_40,
    L40S,
]
CATALOG: tuple[GpuModel, ...] = tuple(GPU_MODELS)
MODEL_CODE: dict[str, int] = {m.name: i for i, m in enumerate(GPU_MODELS)}
#: Normalised NVML name -> code.
_NVML_CODE: dict[str, int] = {}
#: Codes above this are a hostile or broken input (int8 topology arrays).
MAX_MODELS = 127


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _index(code: int, model: GpuModel) -> None:
    for alias in (model.name, *model.nvml_names):
        _NVML_CODE[_norm(alias)] = code


for _code, _model in enumerate(GPU_MODELS):
    _index(_code, _model)


def match_model(name: str) -> int | None:
    """The code of a catalog key or an NVML name (case and spacing ignored), else None."""
    code = MODEL_CODE.get(name)
    return code if code is not None else _NVML_CODE.get(_norm(name))


def model_code(name: str) -> int:
    """Model code for a name as written in inventories, snapshots or reported by NVML."""
    code = match_model(name)
    if code is None:
        known = ", ".join(MODEL_CODE)
        raise TopologyError(f"unknown GPU model {name!r} (known: {known}, or their NVML names)")
    return code


def register_model(model: GpuModel) -> int:
    """Add a site's model (from its policy) and return its code; idempotent for equal facts.

    A catalog model cannot be redefined; a site model registered again with other facts takes
    them (its code stays), so a policy reload can correct a figure.
    """
    code = match_model(model.name)
    for alias in model.nvml_names:
        other = match_model(alias)
        if other is not None and other != code:
            raise TopologyError(f"NVML name {alias!r} already names {GPU_MODELS[other].name}")
    if code is not None and code < len(CATALOG):
        if model == CATALOG[code]:
            return code
        raise TopologyError(f"{model.name!r} is a catalog model and cannot be redefined")
    if code is None:
        if len(GPU_MODELS) >= MAX_MODELS:
            raise TopologyError(f"at most {MAX_MODELS} GPU models")
        code = len(GPU_MODELS)
        GPU_MODELS.append(model)
        MODEL_CODE[model.name] = code
    else:
        GPU_MODELS[code] = model
    _index(code, model)
    return code


def model_table(attribute: str) -> NDArray[np.float64]:
    """One attribute of every model as an array indexed by model code, for fancy indexing."""
    return np.array([float(getattr(m, attribute)) for m in GPU_MODELS], dtype=np.float64)
