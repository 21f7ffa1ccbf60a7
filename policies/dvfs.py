"""SM-clock ceilings from each GPU's cap and how memory-bound its work is.

The policy's model is deliberately simple (the simulator calibrates the physics separately):

- throughput fraction = (f / f_max) ** alpha, with a low alpha for memory-bound work;
- power = P_idle + (P_max_cap - P_idle) * activity * (f / f_max) ** beta, activity = SM util.

Memory-bound work (SM activity below `memory_bound_ratio` of memory activity, e.g. LLM decode)
gets the lowest clock keeping throughput within `max_loss_frac`: locking clocks beats capping
there (arXiv 2605.11999). Compute-bound work whose cap binds gets the clock at which its power
fits the cap, so the GPU does not fight its own power limiter. Clocks sit on each model's
15 MHz grid inside its range.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.decision import DvfsSettings

FloatArray = NDArray[np.float64]

#: Throughput exponent of memory-bound work: CALIBRATION gives alpha 0.05-0.3 for LLM decode
#: (arXiv 2605.11999, arXiv 2501.08219); 0.15 is mid-range, so a 2 % loss allows f ~ 0.87 f_max.
ALPHA_MEMORY_BOUND = 0.15
#: Power exponent in clock: CALIBRATION gives beta 2-3; 3 is the cube law of dynamic power with
#: voltage scaling, and as the highest exponent it picks the highest clock that plausibly fits.
BETA_POWER = 3.0
#: Below this memory activity a GPU is idle rather than memory-bound: its clock is left alone.
MIN_ACTIVITY = 0.05


def clock_targets(
    *,
    cap_w: FloatArray,
    max_cap_w: FloatArray,
    idle_w: FloatArray,
    min_clock_mhz: FloatArray,
    max_clock_mhz: FloatArray,
    step_mhz: FloatArray,
    util: FloatArray,
    mem_util: FloatArray,
    settings: DvfsSettings,
) -> tuple[FloatArray, float]:
    """Per-GPU SM-clock ceilings (MHz) and the estimated power they save against the caps (W)."""
    clock = max_clock_mhz.copy()
    if not settings.enabled or cap_w.size == 0:
        return clock, 0.0
    activity = np.clip(util, 0.0, 1.0)
    memory_bound = (mem_util >= MIN_ACTIVITY) & (activity < settings.memory_bound_ratio * mem_util)
    keep = (1.0 - settings.max_loss_frac) ** (1.0 / ALPHA_MEMORY_BOUND)
    lowest = min_clock_mhz + np.ceil((keep * max_clock_mhz - min_clock_mhz) / step_mhz) * step_mhz
    clock = np.where(memory_bound, np.minimum(lowest, max_clock_mhz), clock)

    dynamic_w = (max_cap_w - idle_w) * activity
    binding = np.flatnonzero(idle_w + dynamic_w > cap_w)
    if binding.size:
        headroom = np.maximum(cap_w[binding] - idle_w[binding], 0.0)
        fits = max_clock_mhz[binding] * np.cbrt(headroom / dynamic_w[binding])
        lo = min_clock_mhz[binding]
        on_grid = lo + np.floor((fits - lo) / step_mhz[binding]) * step_mhz[binding]
        clock[binding] = np.minimum(clock[binding], on_grid)
    np.clip(clock, min_clock_mhz, max_clock_mhz, out=clock)

    slowed = np.flatnonzero(clock < max_clock_mhz)
    if slowed.size == 0:
        return clock, 0.0
    ratio = clock[slowed] / max_clock_mhz[slowed]
    full = idle_w[slowed] + dynamic_w[slowed]
    cap = cap_w[slowed]
    at_clock = idle_w[slowed] + dynamic_w[slowed] * ratio * ratio * ratio
    saving = np.minimum(full, cap) - np.minimum(at_clock, cap)
    return clock, float(saving.sum())
