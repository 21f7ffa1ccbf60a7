"""The oracle: the best allocation of power with full knowledge of every GPU's true curve.

For one instant (`simulator.oracle_run` samples a run) it solves, exactly, one linear program
over the GPUs as they are then (activity, throughput exponent, model; `simulator.physics`):
maximise the weighted work rate sum(w_tier x speed) subject to every rating of the power tree,
the site limit in force and each GPU's physical range (its draw uncapped, its min cap and min
clock), with the Flex tolerance floors as constraints wherever the limits allow them, Flex 0's
first (a tier's floors are kept only if every higher tier's also fit). Weights are the
scoreboard's 8/4/2/1, so the oracle bounds the weighted score any controller that keeps the
floors could reach.

Speed against power is concave above the voltage knee (x^alpha against x^3) and nearly linear
below it (x^1.1 against x). The program uses each curve's upper concave hull through 25 clocks,
lifted by its largest gap below the curve (1e-4 of the top speed or less): an upper bound on
every allocation's work, tight to that gap where the curve is concave, so `oracle_ratio` <= 1
for such a controller. GPUs of one job on one
server are one column (they are identical, and a concave program treats them alike).

Work is counted per GPU (speed: the fraction of the top-clock work rate), the same way for the
controller and the oracle; a synchronous job's pacing (its slowest member) is not modelled, so
the oracle may give one member more than its job can use, which only raises its figure.
HiGHS (`highspy`) is an optional dependency, imported when the oracle first runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from policies.errors import RheostatError
from policies.tiers import DEFAULT_FLEX_TOLERANCES, N_TIERS
from policies.topology import Topology
from simulator.physics import clock_for_dynamic, dynamic_fraction

FloatArray = NDArray[np.float64]

#: Priority weight of each Flex tier: the scoreboard's (`simulator.summary.TIER_WEIGHTS`).
ORACLE_WEIGHTS: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
#: Clocks through which each speed-power curve's hull is taken.
HULL_POINTS = 25
#: Activity below which a GPU does no work (idle, between jobs).
MIN_ACTIVITY = 1e-6


class OracleUnavailableError(RheostatError):
    """HiGHS (the `highspy` package) is needed for the oracle and is not installed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Curves:
    """Per GPU, what its true power-to-speed curve needs. Units: W; clocks as fractions of max."""

    idle_w: FloatArray
    span_w: FloatArray
    activity: FloatArray
    static_frac: FloatArray
    knee: FloatArray
    alpha: FloatArray
    min_clock_frac: FloatArray
    min_cap_w: FloatArray

    def power_at(self, x: FloatArray) -> FloatArray:
        """Power at clock fraction x under the true curve. Units: W."""
        active = self.span_w * self.activity
        s = self.static_frac
        result: FloatArray = self.idle_w + active * (s + (1.0 - s) * dynamic_fraction(x, self.knee))
        return result

    def speed_at(self, power_w: FloatArray) -> FloatArray:
        """Speed (fraction of the top-clock rate) of a GPU drawing `power_w` under the curve."""
        active = np.maximum(self.span_w * self.activity * (1.0 - self.static_frac), 1e-12)
        base = self.idle_w + self.span_w * self.activity * self.static_frac
        x = clock_for_dynamic((power_w - base) / active, self.knee)
        result: FloatArray = np.clip(x, self.min_clock_frac, 1.0) ** self.alpha
        return result

    def bounds_w(self) -> tuple[FloatArray, FloatArray]:
        """Per GPU, the least and the most it can draw: its min cap (or min clock) and uncapped."""
        top = self.power_at(np.ones_like(self.idle_w))
        low = np.maximum(self.min_cap_w, self.power_at(self.min_clock_frac))
        return np.minimum(low, top), top


@dataclass(frozen=True, slots=True, kw_only=True)
class OracleSolution:
    """The oracle's allocation: per-GPU power (W) and speed, per-tier work rate, floor status.

    `speed` is what `power_w` buys on the true curve; `tier_rate` the program's bound on it
    summed over each tier's working GPUs (at most 1e-4 of the top speed more per GPU);
    `floors_kept` how many tiers' floors (from Flex 0) the limits allowed and the solution
    keeps; `value` the LP's objective.
    """

    power_w: FloatArray
    speed: FloatArray
    tier_rate: FloatArray
    value: float
    floors_kept: int


@lru_cache(maxsize=4096)
def _hull(knee: float, alpha: float, min_clock: float) -> tuple[FloatArray, FloatArray]:
    """Slopes and intercepts of the upper concave hull of speed against g(x) (dynamic share)."""
    x = np.unique(np.concatenate([np.linspace(min_clock, 1.0, HULL_POINTS), [knee]]))
    x = x[(x >= min_clock) & (x <= 1.0)]
    g = dynamic_fraction(x, knee)
    s = x**alpha
    hull: list[int] = []
    for i in range(x.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or below the chord a-i: not on the upper hull.
            if (s[b] - s[a]) * (g[i] - g[a]) <= (s[i] - s[a]) * (g[b] - g[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    h = np.asarray(hull)
    if h.size < 2:
        return np.zeros(1), np.array([float(s[-1])])
    slope = np.diff(s[h]) / np.maximum(np.diff(g[h]), 1e-15)
    icpt = s[h[:-1]] - slope * g[h[:-1]]
    # Chords lie under a concave curve between their clocks: lift them by the largest gap on a
    # fine grid, so the pieces bound the curve from above (by 1e-4 of the top speed or less).
    xf = np.linspace(min_clock, 1.0, 2001)
    gf = dynamic_fraction(xf, knee)
    gap = float(np.max(xf**alpha - np.min(np.outer(gf, slope) + icpt, axis=1)))
    return slope, icpt + max(gap, 0.0)


def floor_power_w(curves: Curves, floor_speed: FloatArray) -> FloatArray:
    """Per GPU, the least power at which its true speed is `floor_speed`. Units: W."""
    x = np.clip(floor_speed, 0.0, 1.0) ** (1.0 / curves.alpha)
    return curves.power_at(np.clip(x, curves.min_clock_frac, 1.0))


def solve(
    topology: Topology,
    curves: Curves,
    *,
    usable_w: tuple[FloatArray, ...],
    tier: NDArray[np.int8],
    working: NDArray[np.bool_],
    unit: NDArray[np.int64] | None = None,
    tolerances: tuple[float, ...] = DEFAULT_FLEX_TOLERANCES,
    weights: tuple[float, ...] = ORACLE_WEIGHTS,
) -> OracleSolution:
    """The best allocation under `usable_w` (per level, overhead not subtracted). Units: W.

    `working` marks GPUs whose speed counts (busy in a job); the others draw what they draw
    uncapped at their activity (counted against the limits, worth nothing). `unit` numbers
    groups of identical GPUs under one server (None: every GPU alone).
    """
    try:
        import highspy  # noqa: PLC0415 - optional: only the oracle needs it
    except ImportError as exc:  # pragma: no cover - highspy is a dev dependency
        raise OracleUnavailableError(
            "the oracle needs HiGHS: pip install 'rheostat[oracle]'"
        ) from exc
    n = topology.n_gpus
    low, top = curves.bounds_w()
    # A working GPU that draws no more uncapped than its least (light work under its min cap)
    # runs flat out whatever the cap: it is fixed, and counted at its speed there.
    active = working & (curves.activity > MIN_ACTIVITY) & (top > low + 1e-9)
    flat_out = working & ~active
    # Floors, Flex 0 first, as long as every group holds them.
    floor_w = floor_power_w(curves, 1.0 - np.asarray(tolerances)[tier])
    lower = low.copy()
    kept = 0
    for t in range(N_TIERS):
        trial = np.where(active & (tier <= t), np.maximum(floor_w, low), lower)
        trial = np.minimum(trial, top)
        fixed = np.where(active, trial, top)
        if not _fits(topology, fixed, usable_w):
            break
        lower, kept = trial, t + 1
    fixed_w = np.where(active, 0.0, top)
    key = np.arange(n) if unit is None else unit
    key = np.where(active, key, -1)
    ids, first = np.unique(key, return_index=True)
    cols = np.flatnonzero(ids >= 0)
    m = cols.size
    col_of_gpu = np.full(n, -1, np.int64)
    sel = active
    col_of_gpu[sel] = np.searchsorted(ids[cols], key[sel])
    rep = first[cols]  # one representative GPU per column
    count = np.bincount(col_of_gpu[sel], minlength=m).astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)[tier[rep]] * count
    # Columns: p_0..p_{m-1} (per-GPU power), then s_0..s_{m-1} (per-GPU speed).
    rows_i: list[NDArray[np.int64]] = []
    rows_j: list[NDArray[np.int64]] = []
    vals: list[FloatArray] = []
    row_up: list[FloatArray] = []
    n_rows = 0
    scale = curves.span_w[rep] * curves.activity[rep] * (1.0 - curves.static_frac[rep])
    scale = np.maximum(scale, 1e-12)
    base = curves.idle_w[rep] + curves.span_w[rep] * curves.activity[rep] * curves.static_frac[rep]
    # One hull per distinct curve shape (a job's GPUs share one): its pieces become rows for
    # every column of that shape at once. A service's exponent moves with its prefill share from
    # tick to tick; rounded down to 0.001 (a faster curve, so still a bound: at most 0.07 % more
    # speed at half clock), its hulls are reused.
    alpha_key = np.floor(curves.alpha[rep] * 1000.0 + 1e-9) / 1000.0
    shape = np.stack([curves.knee[rep], alpha_key, curves.min_clock_frac[rep]], axis=1)
    shapes, which = np.unique(shape, axis=0, return_inverse=True)
    for u, (knee, alpha, min_clock) in enumerate(shapes):
        slope, icpt = _hull(float(knee), float(alpha), float(min_clock))
        cs = np.flatnonzero(which.reshape(-1) == u)
        k = slope.size
        r = (n_rows + np.arange(cs.size * k)).reshape(cs.size, k)
        rows_i += [r.reshape(-1), r.reshape(-1)]
        rows_j += [np.repeat(m + cs, k), np.repeat(cs, k)]
        vals += [np.ones(r.size), (-slope[None, :] / scale[cs, None]).reshape(-1)]
        row_up.append((icpt[None, :] - slope[None, :] * (base / scale)[cs, None]).reshape(-1))
        n_rows += r.size
    hull_rows = n_rows
    group_up: list[FloatArray] = []
    for k, level in enumerate(topology.levels):
        g = topology.gpu_group[k][rep]
        rows_i.append((hull_rows + sum(lv.size for lv in topology.levels[:k]) + g).astype(np.int64))
        rows_j.append(np.arange(m))
        vals.append(count)
        room = usable_w[k] - topology.group_sum(k, fixed_w) - topology.overhead_under(k)
        group_up.append(room)
        n_rows += level.size
    lp = highspy.HighsLp()
    lp.num_col_ = 2 * m
    lp.num_row_ = n_rows
    lp.col_cost_ = np.concatenate([np.zeros(m), w])
    lp.col_lower_ = np.concatenate([lower[rep], np.zeros(m)])
    lp.col_upper_ = np.concatenate([top[rep], np.ones(m)])
    up = np.concatenate([*row_up, *group_up]) if n_rows else np.zeros(0)
    lp.row_lower_ = np.full(n_rows, -highspy.kHighsInf)
    lp.row_upper_ = np.where(np.isfinite(up), up, highspy.kHighsInf)
    lp.sense_ = highspy.ObjSense.kMaximize
    ri = np.concatenate(rows_i) if rows_i else np.zeros(0, np.int64)
    rj = np.concatenate(rows_j) if rows_j else np.zeros(0, np.int64)
    rv = np.concatenate(vals) if vals else np.zeros(0)
    order = np.lexsort((ri, rj))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.searchsorted(rj[order], np.arange(2 * m + 1)).astype(np.int32)
    lp.a_matrix_.index_ = ri[order].astype(np.int32)
    lp.a_matrix_.value_ = rv[order]
    with quiet_stdout():  # HiGHS prints a banner from C when built; keep it off JSON output
        solver = highspy.Highs()  # type: ignore[no-untyped-call]
        solver.setOptionValue("output_flag", False)  # noqa: FBT003 - HiGHS API
        solver.passModel(lp)
        solver.run()
    if solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        # Infeasible only where even the least draw breaks a limit: everything at its least.
        power = np.where(active, lower, top)
        value = float("nan")
    else:
        col = np.asarray(solver.getSolution().col_value)
        power = top.copy()
        power[sel] = col[col_of_gpu[sel]]
        value = float(solver.getInfo().objective_function_value)
    speed = np.where(working, curves.speed_at(power), 0.0)
    bound = speed.copy()
    if np.isfinite(value):
        # Per tier, the program's own speeds: each bounds what its draw buys on the true curve.
        bound[sel] = col[m + col_of_gpu[sel]]
        value += float(np.asarray(weights)[tier[flat_out]] @ speed[flat_out])
    rate = np.bincount(tier[working], weights=bound[working], minlength=N_TIERS)
    return OracleSolution(
        power_w=power,
        speed=speed,
        tier_rate=rate.astype(np.float64),
        value=value,
        floors_kept=kept,
    )


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """HiGHS prints a banner from C on construction; keep it out of JSON output (file
    descriptor 1, which Python's `redirect_stdout` does not reach)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with Path(os.devnull).open("wb") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _fits(topology: Topology, power_w: FloatArray, usable_w: tuple[FloatArray, ...]) -> bool:
    for k in range(len(topology.levels)):
        used = topology.group_sum(k, power_w) + topology.overhead_under(k)
        if np.any(used > usable_w[k] * (1.0 + 1e-9) + 1e-9):
            return False
    return True
