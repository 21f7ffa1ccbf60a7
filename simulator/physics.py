"""GPU power, clock, throughput and temperature as vectorized curves, calibrated on public figures.

The model (CALIBRATION.md, "Power and throughput versus cap and clock"), per GPU with the SM
clock as a fraction x = f / f_max:

    power_w    = idle_w + (peak_w - idle_w) * activity * (s + (1 - s) * g(x))
    throughput = x ** alpha

`s` is the static-when-active share: power a busy GPU draws whatever its clock (memory,
uncore), per model (`simulator.gpu_power`). `g` is the dynamic-power curve: above the voltage
knee the core voltage scales with the clock, so dynamic power goes as f * V^2 ~ x^3; below it the
voltage sits at its floor and power goes as x. This two-piece curve is what makes measured
power-limit sweeps flat near the top and steep below half of TDP; a single power law cannot match
both ends. The knee and `s` are per model (`simulator.gpu_power`: calibrated on the Zeus NSDI'23
sweeps of the A40 and V100, `simulator/data/zeus-nsdi23`); alpha was fitted to the same sweeps.
`activity` is per job, set from what the job draws uncapped (`activity_for_draw`);
`tests/simulator/test_sim_zeus.py` and `rheostat bench calibration` run this module's
`step_gpus` against the sweeps, and `simulator/data/CALIBRATION.md` gives the figures, the
sources and what the form misses.

The GPU's own power limiter (the firmware loop behind `nvmlDeviceSetPowerManagementLimit`) lowers
the clock until power fits the cap, settling with a time constant; a clock ceiling
(`nvmlDeviceSetGpuLockedClocks`) applies at once. Everything here is numpy over all GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from policies.gpu_models import model_table
from simulator.gpu_power import FLEET_KNEE, PowerModel, fleet_models

FloatArray = NDArray[np.float64]

#: Clock fraction below which core voltage stops falling, of the fleet's models (per model in
#: `simulator.gpu_power`; this is their shared value and the default of the curve helpers).
VOLTAGE_KNEE = FLEET_KNEE
#: Throughput exponent of compute-bound work (training, prefill), fitted to the Zeus sweeps.
ALPHA_COMPUTE = 1.1
#: Throughput exponent of memory-bound LLM decode: clocks barely matter (CALIBRATION.md, 0.05-0.3).
ALPHA_DECODE = 0.15
#: Full-activity power per model, at max clock. Units: W. Equal to the max cap: a GPU running flat
#: out at its top clock draws its TDP (DGX H100 measurements: 5.6 kW for 8 GPUs in training).
PEAK_W = model_table("max_cap_w")
IDLE_W = model_table("idle_w")
MAX_CLOCK_MHZ = model_table("max_sm_clock_mhz")
MIN_CLOCK_MHZ = model_table("min_sm_clock_mhz")
SLOWDOWN_C = model_table("slowdown_temp_c")
SHUTDOWN_C = model_table("shutdown_temp_c")
#: Per model code: voltage knee and static-when-active share (`simulator.gpu_power.FLEET`).
KNEE = np.array([m.voltage_knee for m in fleet_models()], dtype=np.float64)
STATIC_ACTIVE_FRAC = np.array([m.static_active_frac for m in fleet_models()], dtype=np.float64)


def activity_for_draw(draw_frac: FloatArray, model: NDArray[np.int8]) -> FloatArray:
    """The activity at which a GPU uncapped at its top clock draws `draw_frac` of its max cap.

    What a workload draws uncapped is what one can measure (`nvidia-smi`, the Zeus sweeps' top
    limit); the model needs the share of the dynamic range above idle it fills:
    (draw_frac * peak_w - idle_w) / (peak_w - idle_w), clipped to [0, 1]. A workload that draws
    less uncapped meets a given cap at a higher clock, which is most of why measured
    power-limit sweeps differ between workloads (simulator/data/CALIBRATION.md). At the top
    clock g = 1, so the static share does not enter.
    """
    return activity_for_draw_w(draw_frac, IDLE_W[model], PEAK_W[model])


def activity_for_draw_w(
    draw_frac: FloatArray, idle_w: float | FloatArray, peak_w: float | FloatArray
) -> FloatArray:
    """`activity_for_draw` for a GPU given by its idle and peak power (W), e.g. a sweep GPU."""
    result: FloatArray = np.clip((draw_frac * peak_w - idle_w) / (peak_w - idle_w), 0.0, 1.0)
    return result


def dynamic_fraction(x: FloatArray, knee: float | FloatArray = VOLTAGE_KNEE) -> FloatArray:
    """g(x): dynamic power at clock fraction x relative to the top clock, in [0, 1]."""
    result: FloatArray = x * np.maximum(knee, x) ** 2
    return result


def clock_for_dynamic(y: FloatArray, knee: float | FloatArray = VOLTAGE_KNEE) -> FloatArray:
    """Inverse of `dynamic_fraction`: the clock fraction whose dynamic power fraction is y."""
    y = np.clip(y, 0.0, 1.0)
    return np.where(y <= knee**3, y / (knee * knee), np.cbrt(y))


@dataclass(frozen=True, slots=True, kw_only=True)
class PhysicsParams:
    """Named physical parameters; defaults from CALIBRATION.md, *estimates* marked as such.

    Units: seconds, degrees C, kelvin per watt, fractions.
    """

    #: Power-limiter settle time constant (*estimate*, 0.1-1 s; the low end: current firmware
    #: enforces a cap within about 100 ms of a load step).
    limiter_settle_s: float = 0.1
    #: GPU thermal time constant (*estimate*, 10-60 s).
    thermal_tau_s: float = 30.0
    #: Die temperature rise per watt above inlet at steady state (H100 at 700 W reaches ~70 C
    #: with 25 C inlet air; *estimate*). Units: K/W.
    thermal_resistance_k_per_w: float = 0.065
    inlet_temp_c: float = 25.0
    #: Server PSU efficiency (*estimate*, 94-96 %).
    psu_efficiency: float = 0.95
    #: Relative standard deviation of reported power (sensor noise).
    sensor_noise_frac: float = 0.01
    #: Age of the telemetry a controller sees. Units: s.
    telemetry_delay_s: float = 1.0
    #: Time from a command being issued to the GPU enforcing it (NVML call plus settle). Units: s.
    actuation_lag_s: float = 1.0


@dataclass(eq=False, kw_only=True)
class GpuState:
    """Per-GPU physical state carried between ticks. Units in names; clocks as fractions of max."""

    clock_frac: FloatArray
    temp_c: FloatArray
    power_w: FloatArray
    alpha: FloatArray
    powered: NDArray[np.bool_]

    @classmethod
    def initial(cls, model: NDArray[np.int8], inlet_c: float) -> GpuState:
        n = model.size
        return cls(
            clock_frac=np.ones(n),
            temp_c=np.full(n, inlet_c),
            power_w=IDLE_W[model].copy(),
            alpha=np.full(n, ALPHA_COMPUTE),
            powered=np.ones(n, dtype=bool),
        )

    @property
    def speed(self) -> FloatArray:
        """Work rate as a fraction of the rate at the top clock (0 when dark).

        Computed on demand: the per-GPU power with an array exponent is the dearest operation
        of a tick, and the loop itself only needs per-job speeds (see `WorkloadSet.job_speed`).
        """
        result: FloatArray = self.clock_frac**self.alpha * self.powered
        return result


@dataclass(frozen=True, eq=False, kw_only=True)
class GpuConsts:
    """Per-GPU constants gathered once from the model table (fancy indexing out of the hot path).

    `knee` and `static_frac` are per GPU; `curve_knee` is the knee as `step_gpus` uses it (a
    scalar when every GPU shares one, which keeps the hot path as cheap as a single model's) and
    `any_static` says whether any GPU has a static share (none of the fleet's models does).
    """

    idle_w: FloatArray
    span_w: FloatArray
    knee: FloatArray
    static_frac: FloatArray
    max_clock_mhz: FloatArray
    min_clock_frac: FloatArray
    slowdown_c: FloatArray
    throttle_span_c: FloatArray
    curve_knee: float | FloatArray = field(init=False)
    any_static: bool = field(init=False)

    def __post_init__(self) -> None:
        uniform = self.knee.size > 0 and bool(np.all(self.knee == self.knee[0]))
        knee = float(self.knee[0]) if uniform else self.knee
        object.__setattr__(self, "curve_knee", knee if uniform else self.knee)
        object.__setattr__(self, "any_static", bool(np.any(self.static_frac > 0.0)))

    @classmethod
    def for_models(cls, model: NDArray[np.int8]) -> GpuConsts:
        return cls(
            idle_w=IDLE_W[model],
            span_w=PEAK_W[model] - IDLE_W[model],
            knee=KNEE[model],
            static_frac=STATIC_ACTIVE_FRAC[model],
            max_clock_mhz=MAX_CLOCK_MHZ[model],
            min_clock_frac=MIN_CLOCK_MHZ[model] / MAX_CLOCK_MHZ[model],
            slowdown_c=SLOWDOWN_C[model],
            throttle_span_c=SHUTDOWN_C[model] - SLOWDOWN_C[model],
        )

    @classmethod
    def for_power_model(cls, spec: PowerModel, n: int) -> GpuConsts:
        """`n` GPUs of a model outside the fleet (the sweep GPUs of `simulator.gpu_power`)."""

        def full(value: float) -> FloatArray:
            return np.full(n, value, dtype=np.float64)

        return cls(
            idle_w=full(spec.idle_w),
            span_w=full(spec.tdp_w - spec.idle_w),
            knee=full(spec.voltage_knee),
            static_frac=full(spec.static_active_frac),
            max_clock_mhz=full(spec.max_sm_clock_mhz),
            min_clock_frac=full(spec.min_sm_clock_mhz / spec.max_sm_clock_mhz),
            slowdown_c=full(spec.slowdown_temp_c),
            throttle_span_c=full(spec.shutdown_temp_c - spec.slowdown_temp_c),
        )


def step_gpus(
    state: GpuState,
    consts: GpuConsts,
    params: PhysicsParams,
    *,
    activity: FloatArray,
    alpha: FloatArray,
    cap_w: FloatArray,
    clock_ceiling_mhz: FloatArray,
    powered: NDArray[np.bool_],
    dt_s: float,
) -> None:
    """Advance every GPU by one tick in place: limiter, clock ceiling, thermals, power, speed.

    `activity` in [0, 1] scales dynamic power (0 = idle); `powered` is False for GPUs whose rack
    breaker has tripped. `speed` comes out as the fraction of the work rate at the top clock.
    """
    # Clock at which the GPU would draw exactly its cap; the limiter moves toward it. A busy GPU
    # draws its static share (a part of what its activity fills) at any clock; the rest scales.
    active_span = consts.span_w * np.maximum(activity, 1e-6)
    if consts.any_static:
        static_w = active_span * consts.static_frac
        budget = (cap_w - consts.idle_w - static_w) / (active_span - static_w)
    else:
        budget = (cap_w - consts.idle_w) / active_span
    # `clock_for_dynamic` without its guards: on the cube-root branch above the knee the linear
    # branch is larger and below it smaller, so the minimum picks the right one (the clip that
    # follows handles budgets outside [0, 1]).
    knee = consts.curve_knee
    target = np.minimum(np.cbrt(budget), budget * (1.0 / (knee * knee)))
    target = np.clip(target, consts.min_clock_frac, 1.0)
    # Thermal slowdown: the clock falls linearly from the slowdown to the shutdown temperature.
    # Skipped (a single reduction) while every GPU is below its slowdown point, as is typical.
    if np.any(state.temp_c > consts.slowdown_c):
        hot = np.clip((state.temp_c - consts.slowdown_c) / consts.throttle_span_c, 0.0, 0.7)
        target *= 1.0 - hot
    settle = 1.0 - np.exp(-dt_s / params.limiter_settle_s)
    clock = state.clock_frac + (target - state.clock_frac) * settle
    # A clock ceiling is obeyed immediately, without the limiter's settle.
    clock = np.minimum(clock, clock_ceiling_mhz / consts.max_clock_mhz)
    state.clock_frac = clock
    shape = dynamic_fraction(clock, knee)
    if consts.any_static:
        shape = consts.static_frac + (1.0 - consts.static_frac) * shape
    power = consts.idle_w + consts.span_w * activity * shape
    if not powered.all():
        power *= powered
    state.power_w = power
    state.alpha = alpha
    state.powered = powered
    heat = 1.0 - np.exp(-dt_s / params.thermal_tau_s)
    steady = params.inlet_temp_c + params.thermal_resistance_k_per_w * power
    state.temp_c += (steady - state.temp_c) * heat
