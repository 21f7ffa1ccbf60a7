"""Non-GPU server power per server type (CPUs, memory, fans, NICs, switches), scaling with load.

The decision core budgets each server's non-GPU power at its peak (`Level.overhead_w` of the
server level), so an allocation is safe whatever the load. What a server really draws beside its
GPUs follows their load: CPUs feed the GPUs, and fans follow the heat the GPUs put out. The
simulator draws

    non_gpu_w = peak_w * (idle_frac + (1 - idle_frac) * load)

per server, where `load` is the mean over its GPUs of (power - idle) / (max cap - idle). Figures
and sources: simulator/data/CALIBRATION.md, "Servers: non-GPU power".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.errors import TopologyError
from policies.gpu_models import GPU_MODELS


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerType:
    """A server built of one GPU model. Units: W; fractions."""

    name: str
    gpu_model: str
    #: GPUs per server as shipped (a scenario sets its own `gpus_per_server`).
    gpus: int
    #: Non-GPU power at the GPUs' peak load (what the controller budgets).
    non_gpu_peak_w: float
    #: Non-GPU power with idle GPUs, as a fraction of the peak (*estimate* for every type).
    non_gpu_idle_frac: float

    def __post_init__(self) -> None:
        if self.non_gpu_peak_w < 0 or not 0.0 <= self.non_gpu_idle_frac <= 1.0:
            raise TopologyError("need peak >= 0 and an idle fraction in [0, 1]", field=self.name)


#: Non-GPU idle share (*estimate*): CPUs idle at about a third of their TDP, fans near their
#: floor (fan power goes with the cube of speed), while NICs, NVSwitches, drives and memory draw
#: about the same loaded or not. No published idle breakdown of a DGX was found.
NON_GPU_IDLE_FRAC = 0.5

SERVER_TYPES: dict[str, ServerType] = {
    # DGX H100: measured peak 8.4 kW in training with GPUs ~5.6 kW: 2.8 kW beside the GPUs.
    "H100-SXM5": ServerType(
        name="DGX H100",
        gpu_model="H100-SXM5",
        gpus=8,
        non_gpu_peak_w=2800.0,
        non_gpu_idle_frac=NON_GPU_IDLE_FRAC,
    ),
    # DGX A100 / HGX A100: 6.5 kW max input, GPUs 8 x 400 W; 1.5 kW beside them (as before).
    "A100-SXM4": ServerType(
        name="DGX A100",
        gpu_model="A100-SXM4",
        gpus=8,
        non_gpu_peak_w=1500.0,
        non_gpu_idle_frac=NON_GPU_IDLE_FRAC,
    ),
    # DGX H200: the DGX H100's chassis, CPUs and 10.2 kW supplies with H200 GPUs.
    "H200-SXM": ServerType(
        name="DGX H200",
        gpu_model="H200-SXM",
        gpus=8,
        non_gpu_peak_w=2800.0,
        non_gpu_idle_frac=NON_GPU_IDLE_FRAC,
    ),
    # DGX B200: ~14.3 kW max (datasheet); at the DGX H100's measured-peak-to-max ratio
    # (8.4 / 10.2) that is ~11.8 kW, GPUs 8 kW of it: ~3.8 kW beside them (*estimate*).
    "B200": ServerType(
        name="DGX B200",
        gpu_model="B200",
        gpus=8,
        non_gpu_peak_w=3800.0,
        non_gpu_idle_frac=NON_GPU_IDLE_FRAC,
    ),
    # GB200 NVL72 compute tray (2 GB200 superchips: 4 GPUs, 2 Grace CPUs): Grace with its
    # LPDDR5X ~300 W each (a GB200 superchip is up to 2,700 W with two 1,200 W GPUs), NICs and
    # DPUs, pumps and fans ~500 W, plus 1/18 of the rack's 9 NVLink switch trays (~1 kW each):
    # ~1.6 kW (*estimate*). 72 x 1.2 kW + 18 x 1.6 kW = 115 kW DC, ~121 kW at the wall, against
    # the ~120 kW quoted for a rack.
    "GB200": ServerType(
        name="GB200 NVL72 compute tray",
        gpu_model="GB200",
        gpus=4,
        non_gpu_peak_w=1600.0,
        non_gpu_idle_frac=0.65,
    ),
}


def server_type(model: str) -> ServerType:
    """The server type of a GPU model (the catalog's name)."""
    try:
        return SERVER_TYPES[model]
    except KeyError:
        known = ", ".join(SERVER_TYPES)
        raise TopologyError(f"no server type for GPU model {model!r} (known: {known})") from None


def idle_frac_table() -> NDArray[np.float64]:
    """Non-GPU idle fraction per model code (`NON_GPU_IDLE_FRAC` for models without a type)."""
    return np.array(
        [
            SERVER_TYPES[m.name].non_gpu_idle_frac if m.name in SERVER_TYPES else NON_GPU_IDLE_FRAC
            for m in GPU_MODELS
        ],
        dtype=np.float64,
    )
