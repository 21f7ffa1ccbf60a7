"""`rheostat bench e2e`: latency from a telemetry publish that changes the decision to the command.

A real Mosquitto, the daemon (`controller.daemon.Controller`, in this process) on a fleet of
`--racks` racks of 32 GPUs drawing 250 W a GPU under a site contract that binds, and a probe
client subscribed to the command topics of two pools of racks. While it runs, the site limit
swings every `--swing-every` s between the contract and `--swing-depth` of it: every rack's caps
move (down, then up), so each swing sends every rack a command, none of them urgent (the fleet
draws below its new caps). Two kinds of samples, each timed from the telemetry publish to the
arrival of the first command built by a tick whose snapshot held that telemetry:
- regular (`--samples`): a rack of the first pool goes busy at its caps, which raises them;
  these commands take the bulk lane, behind any lowering of a swing in progress.
  `quiet_p99_ms` is their p99 over the samples that no swing's burst overlapped (bursts of
  the decision's own, when enough racks' caps drift past the deadband at once, still count).
- urgent (`--urgent-samples`): after each swing, spread over the time its burst took to go out,
  `--urgent-per-swing` racks of the second pool report every GPU drawing 700 W (their caps were
  lost, say by an agent restart), so their new caps cut them. `urgent_in_burst` counts those
  whose command left while bulk commands were still unsent or unacknowledged.
Each sampled rack then reports 250 W again and rests before it is used again. A sample with no
answer within 5 s is `unchanged` when no tick after its telemetry moved the rack past the
deadband (the decision did not change; not a latency), `missed` when a command was built but
never arrived. `stage_ms` breaks samples down with the daemon's send trace
(`controller.publisher.SendTrace`) and a timed decider: ingest (publish → the daemon read it),
wait (→ the first decision after that starts), decide (its duration), carry (→ the decision the
command was built from: about 0, unless the rack was still unsent when later ticks replanned),
diff, queue (behind earlier bulk windows), encode, publish (into the client), broker (→ the probe
has it). The probe runs in the daemon's process and event loop,
so its own receiving is part of the figure.
`--shards K` splits the fleet into K sites of racks/K, each with its own daemon in its own
process (one controller per hall), on one shared broker; samples are pooled. Needs `mosquitto`.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from bench._e2e_probe import RACK_GPUS, STAGES, Result, Sample, measure_in_process
from bench._ingest_rig import mosquitto
from bench._registry import format_table

NAME = "e2e"
HELP = "latency from a decision-changing telemetry publish to the command's arrival"
DEFAULT_ARGS = ["--racks", "1000", "10000"]
SITE = "e2e"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--racks", type=int, nargs="+", default=[10_000])
    parser.add_argument("--samples", type=int, default=1000, help="regular samples")
    parser.add_argument("--urgent-samples", type=int, default=1000)
    parser.add_argument("--tick-period", type=float, default=0.05, help="seconds")
    parser.add_argument("--swing-every", type=float, default=2.0, help="seconds; 0: no swings")
    parser.add_argument("--swing-depth", type=float, default=0.9, help="share of the contract")
    parser.add_argument("--urgent-per-swing", type=int, default=16)
    parser.add_argument("--shards", type=int, default=1, help="daemons, each in its process")


def _quantiles(values: Sequence[float]) -> list[float | None]:
    if len(values) < 2:
        return [None, None, None]
    return [round(float(q), 1) for q in np.quantile(np.asarray(values), [0.5, 0.99, 0.999])]


def _stages(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per stage: mean, p99, and the mean over the slowest 1 % of samples. Units: ms."""
    if not samples:
        return {}
    total = np.array([s.latency_ms for s in samples])
    tail = total >= np.quantile(total, 0.99)
    by_stage = np.array([s.stages_ms for s in samples])
    return {
        stage: {
            "mean": round(float(by_stage[:, i].mean()), 2),
            "p99": round(float(np.quantile(by_stage[:, i], 0.99)), 2),
            "tail_mean": round(float(by_stage[tail, i].mean()), 2),
        }
        for i, stage in enumerate(STAGES)
    }


def _overlaps(sample: Sample, swings: Sequence[tuple[float, float, int]]) -> bool:
    """The sample was outstanding while a swing's burst was going out."""
    end_s = sample.sent_s + sample.latency_ms / 1e3
    return any(start < end_s and sample.sent_s < end for start, end, _ in swings)


def _row(racks: int, args: argparse.Namespace, results: Sequence[Result]) -> dict[str, Any]:
    regular = [s for r in results for s in r.regular]
    urgent = [s for r in results for s in r.urgent]
    swings = [(end - start, n) for r in results for start, end, n in r.swings if end < np.inf]
    quiet = [s for r in results for s in r.regular if not _overlaps(s, r.swings)]
    total = {k: sum(r.outcomes[k] for r in results) for k in results[0].outcomes}
    count = {
        k: sum(r.counters[k] for r in results)
        for k in ("urgent_commands", "bulk_commands", "protect_commands")
    }
    ticks = sum(r.counters["ticks"] for r in results)
    p50, p99, p999 = _quantiles([s.latency_ms for s in regular])
    u50, u99, u999 = _quantiles([s.latency_ms for s in urgent])
    return {
        "racks": racks,
        "gpus": racks * RACK_GPUS,
        "shards": len(results),
        "tick_period_s": args.tick_period,
        "samples": len(regular),
        "p50_ms": p50,
        "p99_ms": p99,
        "p99_9_ms": p999,
        "quiet_samples": len(quiet),
        "quiet_p99_ms": _quantiles([s.latency_ms for s in quiet])[1],
        "unchanged": total["unchanged"],
        "missed": total["missed"],
        "urgent_samples": len(urgent),
        "urgent_p50_ms": u50,
        "urgent_p99_ms": u99,
        "urgent_p99_9_ms": u999,
        "urgent_unchanged": total["urgent_unchanged"],
        "urgent_missed": total["urgent_missed"],
        "urgent_in_burst": sum(s.in_burst for s in urgent),
        "urgent_via_bulk": sum(s.lane == "bulk" for s in urgent),
        "urgent_via_protect": sum(s.lane == "protect" for s in urgent),
        "regular_via_urgent": sum(s.lane == "urgent" for s in regular),
        "swings": len(swings),
        "swing_burst_s": round(float(np.mean([s for s, _ in swings])), 2) if swings else None,
        "swing_commands": int(np.mean([c for _, c in swings])) if swings else None,
        **count,
        "tick_mean_ms": round(1e3 * sum(r.counters["tick_sum_s"] for r in results) / ticks, 1),
        "tick_overruns": sum(r.counters["tick_overruns"] for r in results),
        "ticks": ticks,
        "sampling_s": max(r.counters["sampling_s"] for r in results),
        "settle_s": max(r.counters["settle_s"] for r in results),
        "stage_ms": _stages(regular),
        "urgent_stage_ms": _stages(urgent),
    }


def _measure(port: int, racks: int, args: argparse.Namespace) -> dict[str, Any]:
    shards = max(1, args.shards)
    per = vars(args) | {
        "samples": -(-args.samples // shards),
        "urgent_samples": -(-args.urgent_samples // shards),
    }
    if shards == 1:
        return _row(racks, args, [measure_in_process(port, SITE, racks, per)])
    size = racks // shards
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=shards, mp_context=spawn) as pool:
        futures = [
            pool.submit(measure_in_process, port, f"{SITE}{k}", size, per) for k in range(shards)
        ]
        return _row(size * shards, args, [f.result() for f in futures])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with mosquitto() as port:
        return [_measure(port, racks, args) for racks in args.racks]


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The figures, then where each kind of sample's time went (ms per stage)."""
    flat = [{k: v for k, v in row.items() if not k.endswith("stage_ms")} for row in rows]
    parts = [format_table(flat)]
    for row in rows:
        stage_rows = []
        for stage in STAGES:
            line: dict[str, Any] = {"racks": row["racks"], "stage": stage}
            for kind, key in (("", "stage_ms"), ("urgent_", "urgent_stage_ms")):
                figures = row[key].get(stage, {})
                for name in ("mean", "p99", "tail_mean"):
                    line[f"{kind}{name}"] = figures.get(name)
            stage_rows.append(line)
        parts.append(format_table(stage_rows))
    return "\n\n".join(parts)
