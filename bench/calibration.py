"""`rheostat bench calibration`: the simulator's own physics against measured power-limit sweeps.

For every training workload of the Zeus NSDI'23 sweeps (`simulator/data/zeus-nsdi23`: A40 and
V100, time per epoch and average power at each power limit) and each GPU model the simulator
ships (H100, A100), `step_gpus` runs with the shipped parameters (knee, exponents, idle power,
limiter) to steady state at every swept cap, taken as the same fraction of TDP. Each workload
gets the activity a scenario would give it: from its measured uncapped draw
(`simulator.physics.activity_for_draw`) and its profile's throughput exponent (memory-bound work
as decode). Nothing is fitted here.

Per row: the throughput ratio's mean absolute and largest error against the measurement (ratio =
time per epoch at the top limit / time at the cap, median over batch sizes and optimisers), and
the energy-optimal cap measured and simulated, as fractions of TDP. The energy-optimal cap is the
vertex of the parabola through the lowest energy per epoch and its two neighbours on the swept
grid (the grid's steps, 0.08-0.1 of TDP, are coarser than the comparison's tolerance), found the
same way for the data and for the simulation.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench._registry import format_table
from policies.gpu_models import GPU_MODELS
from simulator.physics import GpuConsts, GpuState, PhysicsParams, activity_for_draw, step_gpus
from simulator.rates import data_path
from simulator.workloads import TRAINING_PROFILES, TrainingProfileName

NAME = "calibration"
HELP = "simulated against measured power-limit sweeps: throughput error, energy-optimal cap"
DEFAULT_ARGS: list[str] = []

FloatArray = NDArray[np.float64]
Row = dict[str, Any]

#: Sweeps shipped in `simulator/data/zeus-nsdi23`, with each GPU's TDP (its top limit). Units: W.
SWEEP_TDP_W = {"a40": 300.0, "v100": 250.0}
#: The training profile each Zeus workload belongs to (its throughput exponent comes from it).
ZEUS_PROFILE: dict[str, TrainingProfileName] = {
    "cifar100/shufflenetv2": "small-cnn",
    "imagenet/resnet50": "vision",
    "librispeech/deepspeech2": "speech",
    "movielens-1m/ncf": "memory-bound",
    "squad/bert_base_uncased": "finetune",
    "sentiment140/bert_base_uncased": "finetune",
}
#: Targets: per compute-bound workload, throughput-ratio error and energy-optimal cap.
MAX_MAE = 0.05
MAX_ERROR = 0.10
MAX_OPT_CAP_ERROR = 0.05
#: Ticks of 1 s to steady state: the limiter settles in 0.1 s, so a few suffice.
SETTLE_TICKS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    """One workload's measured sweep on one GPU. Fractions of TDP; ratios to the top limit."""

    cap_frac: FloatArray
    throughput: FloatArray
    energy: FloatArray
    draw_frac: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The simulator's curve against one measured sweep."""

    sweep: Sweep
    throughput: FloatArray
    energy: FloatArray
    activity: float
    alpha: float

    @property
    def error(self) -> FloatArray:
        result: FloatArray = self.throughput - self.sweep.throughput
        return result

    @property
    def mae(self) -> float:
        return float(np.mean(np.abs(self.error)))

    @property
    def max_error(self) -> float:
        return float(np.max(np.abs(self.error)))

    @property
    def opt_cap_measured(self) -> float:
        return energy_optimal_cap(self.sweep.cap_frac, self.sweep.energy)

    @property
    def opt_cap_simulated(self) -> float:
        return energy_optimal_cap(self.sweep.cap_frac, self.energy)


def load_sweeps(gpu: str) -> dict[str, Sweep]:
    """workload -> its sweep: per run (batch size, optimiser) the ratios to the top limit, then
    the median over runs at each limit every run swept; the uncapped draw is the runs' median."""
    path = Path(data_path(f"zeus-nsdi23/summary_power_{gpu}.csv"))
    runs: dict[tuple[str, ...], dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            key = (f"{row['dataset']}/{row['network']}", row["batch_size"], row["optimizer"])
            runs[key][int(row["power_limit"])].append(
                (float(row["time_per_epoch"]), float(row["average_power"]))
            )
    by_workload: dict[str, list[dict[int, list[tuple[float, float]]]]] = defaultdict(list)
    for run_key, by_limit in runs.items():
        by_workload[run_key[0]].append(by_limit)
    tdp = SWEEP_TDP_W[gpu]
    out: dict[str, Sweep] = {}
    for name, sweeps in by_workload.items():
        limits = sorted(set.intersection(*(set(s) for s in sweeps)))
        top = max(limits)
        rel, energy, draw = [], [], []
        for s in sweeps:
            t_top = float(np.mean([t for t, _ in s[top]]))
            e_top = float(np.mean([t * p for t, p in s[top]]))
            rel.append([t_top / float(np.mean([t for t, _ in s[lim]])) for lim in limits])
            energy.append([float(np.mean([t * p for t, p in s[lim]])) / e_top for lim in limits])
            draw.append(float(np.mean([p for _, p in s[top]])))
        out[name] = Sweep(
            cap_frac=np.array(limits, dtype=np.float64) / tdp,
            throughput=np.median(np.array(rel), axis=0),
            energy=np.median(np.array(energy), axis=0),
            draw_frac=float(np.median(draw)) / tdp,
        )
    return out


def simulate(
    model: int, cap_frac: FloatArray, activity: float, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """Steady-state speed and power (W) of one GPU model at each cap (fractions of its max cap),
    stepped by the running simulator's `step_gpus` with the shipped `PhysicsParams`."""
    n = cap_frac.size
    models = np.full(n, model, dtype=np.int8)
    consts = GpuConsts.for_models(models)
    params = PhysicsParams()
    state = GpuState.initial(models, params.inlet_temp_c)
    cap_w = cap_frac * GPU_MODELS[model].max_cap_w
    for _ in range(SETTLE_TICKS):
        step_gpus(
            state,
            consts,
            params,
            activity=np.full(n, activity),
            alpha=np.full(n, alpha),
            cap_w=cap_w,
            clock_ceiling_mhz=consts.max_clock_mhz,
            powered=np.ones(n, dtype=bool),
            dt_s=1.0,
        )
    return state.speed, state.power_w


def compare(sweep: Sweep, model: int, profile: TrainingProfileName) -> Comparison:
    """The shipped physics at the sweep's caps, for a job drawing what the workload drew."""
    activity = float(activity_for_draw(np.array([sweep.draw_frac]), np.array([model]))[0])
    alpha = TRAINING_PROFILES[profile].alpha
    speed, power_w = simulate(model, sweep.cap_frac, activity, alpha)
    energy = power_w / speed
    return Comparison(
        sweep=sweep,
        throughput=speed,
        energy=energy / energy[-1],
        activity=activity,
        alpha=alpha,
    )


def energy_optimal_cap(cap_frac: FloatArray, energy: FloatArray) -> float:
    """Cap of least energy per unit of work: the vertex of the parabola through the grid's
    minimum and its neighbours, kept between them (the grid's end when the minimum is there)."""
    i = int(np.argmin(energy))
    if i in (0, energy.size - 1):
        return float(cap_frac[i])
    x = cap_frac[i - 1 : i + 2]
    y = energy[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return float(cap_frac[i])
    return float(np.clip(-b / (2.0 * a), x[0], x[2]))


def compute_bound(workload: str) -> bool:
    return TRAINING_PROFILES[ZEUS_PROFILE[workload]].alpha >= 1.0


def rows() -> list[Row]:
    """One row per measured workload, sweep GPU and simulated GPU model."""
    out: list[Row] = []
    for gpu in SWEEP_TDP_W:
        for workload, sweep in sorted(load_sweeps(gpu).items()):
            for model, spec in enumerate(GPU_MODELS):
                c = compare(sweep, model, ZEUS_PROFILE[workload])
                bound = compute_bound(workload)
                opt_err = abs(c.opt_cap_simulated - c.opt_cap_measured)
                ok = c.max_error <= MAX_ERROR and (
                    not bound or (c.mae <= MAX_MAE and opt_err <= MAX_OPT_CAP_ERROR)
                )
                out.append(
                    {
                        "workload": workload,
                        "sweep_gpu": gpu.upper(),
                        "sim_model": spec.name,
                        "kind": "compute" if bound else "memory",
                        "draw_frac": round(sweep.draw_frac, 3),
                        "activity": round(c.activity, 3),
                        "mae": round(c.mae, 4),
                        "max_err": round(c.max_error, 4),
                        "bias": round(float(np.mean(c.error)), 4),
                        "opt_cap_measured": round(c.opt_cap_measured, 3),
                        "opt_cap_simulated": round(c.opt_cap_simulated, 3),
                        "ok": ok,
                    }
                )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: the comparison is fixed by the shipped data and parameters


def run(args: argparse.Namespace) -> list[Row]:
    del args
    return rows()


def table(result: Sequence[Row]) -> str:
    """The comparison table, and the targets each row is held to."""
    failing = sum(not r["ok"] for r in result)
    return (
        format_table(result)
        + f"\n\ntargets: MAE <= {MAX_MAE}, max error <= {MAX_ERROR} (throughput ratio), "
        f"energy-optimal cap within {MAX_OPT_CAP_ERROR} of TDP (compute-bound workloads); "
        f"memory-bound: max error <= {MAX_ERROR}. Rows missing a target: {failing} "
        f"of {len(result)}."
    )
