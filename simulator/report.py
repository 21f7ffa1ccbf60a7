"""Scenario reports: `summary.json` and `report.html`, one self-contained page.

The page carries its plots as base64 PNGs (nothing to fetch, so it can be mailed or archived):
site power against the contract and the limit in force, each rack against its breaker rating,
the power caps in force by tier, throughput by tier against the unlimited reference, SM clocks
by tier, and, only when the scenario has a demand-response event, its target against delivered
power. matplotlib comes with the `sim` extra and is imported only here.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from policies.errors import ConfigError
from simulator.loop import RunResult

#: Plot ids in page order; `dr` only when the run had a demand-response limit.
PLOTS = ("site_power", "rack_power", "caps", "throughput", "clocks", "dr")
REPORT = "report.html"

Plot = Callable[[Any, RunResult, RunResult], str]


def write_report(
    directory: Path,
    controlled: RunResult,
    reference: RunResult,
    summary: dict[str, Any],
    *,
    rows: Sequence[tuple[str, str]],
) -> list[Path]:
    """Write `summary.json` and `report.html` into `directory` (created); return both paths.

    `rows` is the summary as the page shows it, `(key, text)` pairs as the CLI prints them.
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415 - the sim extra, needed only here
    except ImportError:
        raise ConfigError("the report needs matplotlib: pip install 'rheostat[sim]'") from None

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    summary_path = directory / "summary.json"
    summary_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    figures: list[tuple[str, str, str]] = []
    for name in plots_for(controlled):
        fig, ax = plt.subplots(figsize=(10, 4.2))
        caption = _PLOTTERS[name](ax, controlled, reference)
        ax.set_xlabel("time (min)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        figures.append((name, caption, base64.b64encode(buf.getvalue()).decode("ascii")))
    page = directory / REPORT
    page.write_text(_page(controlled, rows, figures), encoding="utf-8")
    return [summary_path, page]


def plots_for(controlled: RunResult) -> list[str]:
    """The plots this run has data for: the DR plot only when a DR limit was ever in force."""
    has_dr = bool(np.isfinite(np.asarray(controlled.series.dr_limit_w, dtype=float)).any())
    return [p for p in PLOTS if p != "dr" or has_dr]


def _minutes(run: RunResult) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(run.series.t_s, dtype=float) / 60.0


def _site_power(ax: Any, run: RunResult, reference: RunResult) -> str:
    s, t = run.series, _minutes(run)
    ax.plot(
        _minutes(reference),
        np.asarray(reference.series.site_power_w) / 1e3,
        lw=0.8,
        alpha=0.6,
        label="unlimited reference",
    )
    ax.plot(t, np.asarray(s.site_power_w) / 1e3, lw=1.0, label="site power")
    ax.plot(t, np.asarray(s.contract_w) / 1e3, "k--", lw=1.2, label="contract")
    ax.plot(t, np.asarray(s.site_limit_w) / 1e3, "r-", lw=1.0, alpha=0.7, label="limit in force")
    ax.set_ylabel("site power (kW)")
    return "Site power against the contract and the limit in force (kW)"


def _rack_power(ax: Any, run: RunResult, reference: RunResult) -> str:
    del reference
    t = _minutes(run)
    rack = np.asarray(run.series.rack_power_w) / run.cluster.breakers.rating_w
    ax.plot(t, rack.max(axis=1), lw=1.0, label="most loaded rack")
    ax.plot(t, rack.mean(axis=1), lw=1.0, label="mean rack")
    derating = float(run.cluster.topology.racks.derating.min())
    ax.axhline(1.0, color="r", lw=1.2, label="breaker rating")
    ax.axhline(derating, color="k", ls="--", lw=1.0, label="usable (derated)")
    ax.set_ylabel("fraction of rating")
    return "Rack power against each rack's breaker rating (fraction of rating)"


def _tiers(run: RunResult) -> list[int]:
    return [int(t) for t in np.unique(run.cluster.workloads.gpu_tier())]


def _caps(ax: Any, run: RunResult, reference: RunResult) -> str:
    del reference
    t, caps = _minutes(run), np.asarray(run.series.tier_cap_frac)
    for tier in _tiers(run):
        ax.plot(t, caps[:, tier], lw=1.0, label=f"tier {tier}")
    ax.set_ylabel("cap / maximum cap")
    ax.set_ylim(0, 1.05)
    return "Power caps in force by flex tier (mean share of each GPU's maximum cap)"


def _throughput(ax: Any, run: RunResult, reference: RunResult) -> str:
    t, speed = _minutes(run), np.asarray(run.series.tier_speed)
    ref_speed = np.asarray(reference.series.tier_speed)
    n = min(len(speed), len(ref_speed))
    for tier in _tiers(run):
        ref = np.maximum(ref_speed[:n, tier], 1e-9)
        ax.plot(t[:n], np.clip(speed[:n, tier] / ref, 0, 1.5), lw=1.0, label=f"tier {tier}")
    ax.set_ylabel("relative speed")
    return "Throughput by tier, relative to the unlimited reference"


def _clocks(ax: Any, run: RunResult, reference: RunResult) -> str:
    del reference
    t, clocks = _minutes(run), np.asarray(run.series.tier_clock_mhz)
    for tier in _tiers(run):
        ax.plot(t, clocks[:, tier], lw=1.0, label=f"tier {tier}")
    ax.set_ylabel("SM clock (MHz)")
    return "Mean SM clock by tier (MHz)"


def _dr(ax: Any, run: RunResult, reference: RunResult) -> str:
    del reference
    t, dr = _minutes(run), np.asarray(run.series.dr_limit_w, dtype=float)
    ax.plot(t, np.asarray(run.series.site_power_w) / 1e3, lw=1.0, label="delivered site power")
    ax.plot(t, np.where(np.isfinite(dr), dr, np.nan) / 1e3, "r-", lw=1.2, label="DR target")
    ax.set_ylabel("power (kW)")
    return "Demand response: the event's target against delivered site power (kW)"


_PLOTTERS: dict[str, Plot] = {
    "site_power": _site_power,
    "rack_power": _rack_power,
    "caps": _caps,
    "throughput": _throughput,
    "clocks": _clocks,
    "dr": _dr,
}


def _page(
    run: RunResult, summary: Sequence[tuple[str, str]], figures: list[tuple[str, str, str]]
) -> str:
    title = html.escape(f"{run.scenario.name} under {run.controller}")
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary
    )
    body = "\n".join(
        f'<figure id="{name}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
        "</figure>"
        for name, caption, data in figures
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Rheostat: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 2em; }}
th, td {{ text-align: left; padding: 0.15em 1em 0.15em 0; border-bottom: 1px solid #ddd; }}
th {{ font-weight: normal; color: #555; }}
figure {{ margin: 0 0 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9em; color: #555; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{run.cluster.topology.n_gpus} GPUs, {run.scenario.duration_s:g} s simulated.</p>
<table>
{rows}
</table>
{body}
</body></html>
"""
