"""Scenario reports: `summary.json` and PNG plots of a controlled run against its reference.

Plots: site power against its limits, rack power against breaker ratings, throughput by tier,
SM clocks by tier, and demand-response target against delivered power.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import orjson

from simulator.loop import RunResult

mpl.use("Agg")

import matplotlib.pyplot as plt

PLOTS = ("site_power.png", "rack_power.png", "throughput.png", "clocks.png", "dr.png")


def write_report(
    directory: Path, controlled: RunResult, reference: RunResult, summary: dict[str, Any]
) -> list[Path]:
    """Write the summary and every plot into `directory` (created); return the files."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [directory / "summary.json"]
    out[0].write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    s = controlled.series
    t_min = np.asarray(s.t_s) / 60.0
    title = f"{controlled.scenario.name} under {controlled.controller}"

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(
        t_min,
        np.asarray(reference.series.site_power_w) / 1e3,
        lw=0.8,
        alpha=0.6,
        label="unlimited reference",
    )
    ax.plot(t_min, np.asarray(s.site_power_w) / 1e3, lw=1.0, label="site power")
    ax.plot(t_min, np.asarray(s.contract_w) / 1e3, "k--", lw=1.2, label="contract")
    ax.plot(
        t_min, np.asarray(s.site_limit_w) / 1e3, "r-", lw=1.0, alpha=0.7, label="limit in force"
    )
    _finish(ax, title, "site power (kW)")
    out.append(_save(fig, directory / "site_power.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    rack = np.asarray(s.rack_power_w) / controlled.cluster.breakers.rating_w
    ax.plot(t_min, rack.max(axis=1), lw=1.0, label="most loaded rack")
    ax.plot(t_min, rack.mean(axis=1), lw=1.0, label="mean rack")
    derating = float(controlled.cluster.topology.racks.derating.min())
    ax.axhline(1.0, color="r", lw=1.2, label="breaker rating")
    ax.axhline(derating, color="k", ls="--", lw=1.0, label="usable (derated)")
    _finish(ax, f"{title}: rack power / breaker rating", "fraction of rating")
    out.append(_save(fig, directory / "rack_power.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    speed = np.asarray(s.tier_speed)
    ref_speed = np.asarray(reference.series.tier_speed)
    tiers = controlled.cluster.workloads.gpu_tier()
    for t in np.unique(tiers):
        ref = np.maximum(ref_speed[:, t], 1e-9)
        ax.plot(t_min, np.clip(speed[:, t] / ref, 0, 1.5), lw=1.0, label=f"tier {t}")
    _finish(ax, f"{title}: GPU speed relative to unlimited, by tier", "relative speed")
    out.append(_save(fig, directory / "throughput.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    clocks = np.asarray(s.tier_clock_mhz)
    for t in np.unique(tiers):
        ax.plot(t_min, clocks[:, t], lw=1.0, label=f"tier {t}")
    _finish(ax, f"{title}: mean SM clock by tier", "SM clock (MHz)")
    out.append(_save(fig, directory / "clocks.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    dr = np.asarray(s.dr_limit_w)
    ax.plot(t_min, np.asarray(s.site_power_w) / 1e3, lw=1.0, label="delivered site power")
    if np.isfinite(dr).any():
        ax.plot(
            t_min,
            np.where(np.isfinite(dr), dr, np.nan) / 1e3,
            "r-",
            lw=1.2,
            label="demand-response limit",
        )
    else:
        ax.text(
            0.5,
            0.9,
            "no demand-response event in this scenario",
            transform=ax.transAxes,
            ha="center",
        )
    _finish(ax, f"{title}: demand response", "power (kW)")
    out.append(_save(fig, directory / "dr.png"))
    return out


def _finish(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("time (min)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
