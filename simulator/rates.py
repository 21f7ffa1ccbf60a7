"""Arrival shapes for inference services and grid signals, precomputed per tick for a whole run.

Precomputing keeps the tick loop free of random draws and file reads: a service's demand at tick
t is one array lookup. Shapes are normalised to mean 1 so a scenario states load as a utilisation.
"""

from __future__ import annotations

import csv
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from policies.errors import ConfigError

FloatArray = NDArray[np.float64]

DAY_S = 86_400.0
AZURE_TRACE = "azure-llm-2023/AzureLLMInferenceTrace_conv.csv"
CAISO_CARBON = "vessim-grid/watttime_example.csv"


def data_path(name: str) -> str:
    """Path of a file shipped in `simulator/data` (installed with the package)."""
    return str(resources.files("simulator") / "data" / name)


def diurnal_bursty(
    n_ticks: int,
    tick_s: float,
    *,
    rng: np.random.Generator,
    start_hour: float = 12.0,
    peak_to_trough: float = 2.0,
    bursts_per_hour: float = 2.0,
    burst_factor: float = 1.6,
    burst_s: float = 120.0,
) -> FloatArray:
    """A daily sine (peak mid-afternoon) with random rectangular bursts; mean about 1."""
    t = start_hour * 3600.0 + np.arange(n_ticks) * tick_s
    depth = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    shape = 1.0 + depth * np.sin(2.0 * np.pi * (t / DAY_S - 0.375))
    n_bursts = rng.poisson(bursts_per_hour * n_ticks * tick_s / 3600.0)
    if n_bursts:
        starts = rng.integers(0, n_ticks, n_bursts)
        width = max(1, round(burst_s / tick_s))
        mark = np.zeros(n_ticks + 1)
        np.add.at(mark, starts, 1.0)
        np.add.at(mark, np.minimum(starts + width, n_ticks), -1.0)
        shape *= np.where(np.cumsum(mark)[:n_ticks] > 0, burst_factor, 1.0)
    jitter = 1.0 + 0.05 * rng.standard_normal(n_ticks)
    shape = np.maximum(shape * jitter, 0.0)
    normalised: FloatArray = shape / shape.mean()
    return normalised


@cache
def _azure_trace(path: str | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(arrival seconds from the first request, context tokens, generated tokens).

    `path`: a CSV in the Azure LLM inference format; None = the shipped conversation trace.
    """
    path = path or data_path(AZURE_TRACE)
    try:
        with Path(path).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read trace: {exc}", file=path) from None
    if not rows:
        raise ConfigError("trace has no requests", file=path)
    try:
        stamps = [datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in rows]
        ctx = np.array([float(r["ContextTokens"]) for r in rows])
        gen = np.array([float(r["GeneratedTokens"]) for r in rows])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"not an Azure LLM trace: {exc}", file=path) from None
    if not (np.all(np.isfinite(ctx)) and np.all(np.isfinite(gen))) or min(ctx.min(), gen.min()) < 0:
        raise ConfigError("token counts must be finite and >= 0", file=path)
    t0 = min(stamps)
    t = np.array([(s - t0).total_seconds() for s in stamps])
    return t, ctx, gen


def azure_trace_tokens(
    n_ticks: int, tick_s: float, *, time_scale: float = 1.0, path: str | None = None
) -> tuple[FloatArray, FloatArray]:
    """Prompt and generated tokens arriving per tick, from an Azure-format trace, looped.

    `time_scale` > 1 stretches the hour of recorded arrivals over more simulated time (fewer
    tokens per tick); < 1 compresses it. `path`: the trace file (None = the shipped one).
    """
    prompt, generated, _ = azure_trace_arrivals(n_ticks, tick_s, time_scale=time_scale, path=path)
    return prompt, generated


def azure_trace_arrivals(
    n_ticks: int, tick_s: float, *, time_scale: float = 1.0, path: str | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """As `azure_trace_tokens`, plus the number of requests arriving per tick."""
    t, ctx, gen = _azure_trace(path)
    span_s = float(t[-1]) + 1.0
    run_s = n_ticks * tick_s
    loops = int(np.ceil(run_s / (span_s * time_scale))) + 1
    offsets = np.arange(loops) * span_s
    t_all = ((t[None, :] + offsets[:, None]) * time_scale).ravel()
    idx = np.minimum((t_all / tick_s).astype(np.int64), n_ticks)
    prompt = np.bincount(idx, weights=np.tile(ctx, loops), minlength=n_ticks + 1)[:n_ticks]
    generated = np.bincount(idx, weights=np.tile(gen, loops), minlength=n_ticks + 1)[:n_ticks]
    requests = np.bincount(idx, minlength=n_ticks + 1)[:n_ticks]
    return (
        prompt.astype(np.float64),
        generated.astype(np.float64),
        requests.astype(np.float64),
    )


@cache
def caiso_carbon() -> tuple[FloatArray, FloatArray]:
    """(seconds from the first sample, marginal carbon intensity in lbs CO2/MWh), 5-min steps."""
    path = data_path(CAISO_CARBON)
    with Path(path).open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        rows = [(datetime.fromisoformat(a), float(b)) for a, b in reader]
    t0 = rows[0][0]
    t = np.array([(d - t0).total_seconds() for d, _ in rows])
    return t, np.array([v for _, v in rows])


def carbon_per_tick(n_ticks: int, tick_s: float, *, start_s: float = 0.0) -> FloatArray:
    """CAISO marginal carbon intensity per tick (lbs CO2/MWh), held between samples."""
    t, value = caiso_carbon()
    at = start_s + np.arange(n_ticks) * tick_s
    idx = np.clip(np.searchsorted(t, at, side="right") - 1, 0, value.size - 1)
    return value[idx]
