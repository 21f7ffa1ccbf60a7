"""Per-model parameters of the simulator's GPU power curve: the fleet's models and the sweep GPUs.

The decision core's model facts (cap range, clocks, idle power: `policies.gpu_models`) say nothing
about the shape of the power curve. Two parameters here do, per model (simulator/data/
CALIBRATION.md, "The model"):

- `voltage_knee`: the clock fraction below which core voltage stops falling, so power falls only
  linearly with the clock;
- `static_active_frac`: the share of a busy GPU's power above idle that does not scale with the
  SM clock (memory, uncore, fans kept up by a running kernel), as a fraction of the dynamic range
  the job fills. It is what puts the cap of least energy per unit of work above the knee.

`FLEET` holds the models a simulated cluster is built of, indexed like `policies.gpu_models.
GPU_MODELS`; `SWEEP_GPUS` the GPUs the shipped Zeus sweeps were measured on (A40, V100 PCIe),
which `bench.calibration` and its test run against their own measurements. Figures marked
*calibrated* were fitted to those sweeps by `bench.calibration.fit_power_model` (least squares
on throughput and energy per epoch, idle power and TDP fixed from their sources).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.errors import TopologyError
from policies.gpu_models import GPU_MODELS, GpuModel


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerModel:
    """What `step_gpus` needs of one GPU model. Units: W, MHz, degrees C; fractions."""

    name: str
    tdp_w: float
    min_cap_w: float
    idle_w: float
    min_sm_clock_mhz: float
    max_sm_clock_mhz: float
    slowdown_temp_c: float
    shutdown_temp_c: float
    voltage_knee: float
    static_active_frac: float

    def __post_init__(self) -> None:
        if not 0.0 < self.idle_w < self.min_cap_w <= self.tdp_w:
            raise TopologyError("need 0 < idle < min cap <= TDP", field=self.name)
        if not 0.0 < self.voltage_knee <= 1.0 or not 0.0 <= self.static_active_frac < 1.0:
            raise TopologyError("knee must lie in (0, 1], static share in [0, 1)", field=self.name)

    @classmethod
    def of(cls, model: GpuModel, *, voltage_knee: float, static_active_frac: float) -> PowerModel:
        """A fleet model's curve: its facts from the decision core's table plus the two shapes."""
        return cls(
            name=model.name,
            tdp_w=model.max_cap_w,
            min_cap_w=model.min_cap_w,
            idle_w=model.idle_w,
            min_sm_clock_mhz=model.min_sm_clock_mhz,
            max_sm_clock_mhz=model.max_sm_clock_mhz,
            slowdown_temp_c=model.slowdown_temp_c,
            shutdown_temp_c=model.shutdown_temp_c,
            voltage_knee=voltage_knee,
            static_active_frac=static_active_frac,
        )


#: Voltage knee of the H100, A100, H200, B200 and GB200 curves: no power-limit sweep of any of
#: them is shipped; 0.85 is the value fitted jointly to the A40 and V100 sweeps before each had
#: its own (between the A40's 0.90 and the V100's 0.80 calibrated below).
FLEET_KNEE = 0.85
#: Static-when-active share of the HBM fleet models (*estimate*): 0, as calibrated for the V100, the
#: other HBM GPU with a sweep; the A40's 0.09 comes with its GDDR6 memory, whose power follows
#: its activity rather than the SM clock. No sweep of these models is shipped to check it.
FLEET_STATIC_ACTIVE_FRAC = 0.0

#: name -> curve of each model a scenario can build, in the order of `GPU_MODELS`.
FLEET: dict[str, PowerModel] = {
    m.name: PowerModel.of(m, voltage_knee=FLEET_KNEE, static_active_frac=FLEET_STATIC_ACTIVE_FRAC)
    for m in GPU_MODELS
}

#: NVIDIA A40 (GDDR6, 300 W). TDP, min limit, max SM clock, idle, thermal limits: `nvidia-smi -q`
#: of an A40 at P8 with no process (driver 550.127.05): power draw 29.7 W, limits 100-300 W, max
#: SM clock 1740 MHz, slowdown 95 C, shutdown 98 C. Lowest graphics clock 210 MHz (*estimate*,
#: the Ampere floor as on the A100). Knee and static share *calibrated* on the Zeus A40 sweep.
A40 = PowerModel(
    name="A40",
    tdp_w=300.0,
    min_cap_w=100.0,
    idle_w=30.0,
    min_sm_clock_mhz=210.0,
    max_sm_clock_mhz=1740.0,
    slowdown_temp_c=95.0,
    shutdown_temp_c=98.0,
    voltage_knee=0.90,
    static_active_frac=0.09,
)

#: NVIDIA V100 PCIe (HBM2, 250 W: the sweep's top limit). Limits 100-250 W, max SM clock 1380 MHz,
#: slowdown 87 C, shutdown 90 C: `nvidia-smi -q` of a Tesla V100-PCIE-32GB (driver 410.48). Idle
#: 33 W: a V100 has a single performance state (P0) and idles at ~33 W (reported with
#: `nvidia-smi`; the Zeus NCF runs, memory-bound and nearly idle, draw 38 W). Lowest graphics
#: clock 135 MHz (Volta's floor, *estimate*). Knee and static share *calibrated* on the Zeus
#: V100 sweep.
V100 = PowerModel(
    name="V100-PCIe",
    tdp_w=250.0,
    min_cap_w=100.0,
    idle_w=33.0,
    min_sm_clock_mhz=135.0,
    max_sm_clock_mhz=1380.0,
    slowdown_temp_c=87.0,
    shutdown_temp_c=90.0,
    voltage_knee=0.80,
    static_active_frac=0.0,
)

#: Sweep file key (`summary_power_<key>.csv`) -> the GPU it was measured on.
SWEEP_GPUS: dict[str, PowerModel] = {"a40": A40, "v100": V100}


def fleet_models() -> tuple[PowerModel, ...]:
    """The fleet's curves indexed by model code (the order of `GPU_MODELS`).

    A model without an entry in `FLEET` (one added to the decision core's table later) gets the
    fleet's shape parameters on its own facts.
    """
    return tuple(
        FLEET.get(m.name)
        or PowerModel.of(m, voltage_knee=FLEET_KNEE, static_active_frac=FLEET_STATIC_ACTIVE_FRAC)
        for m in GPU_MODELS
    )
