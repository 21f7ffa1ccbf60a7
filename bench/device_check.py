"""Read-only NVML check on a GPU machine: what each field returns and how long each call takes.

Run by `bench/device_check.sh`. Two parts:
1. `raw`: every NVML call the `nvml` backend makes, on every GPU, each timed on its own over
   `--repeats` rounds (median and max, ms), with the value it returned or NVML's error. Needs only
   nvidia-ml-py.
2. `backend`: when numpy is importable, Rheostat's own `agent.nvml.NvmlBackend` in read-only mode:
   its identity (limit constraints, clock ranges, UUIDs) and whole reads of every GPU, timed, with
   the NVML calls per read; and a check that it refuses to set anything.
Nothing is ever written to a GPU. The report is JSON on stdout (and in $OUT if set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _plain(value: Any) -> Any:
    """A JSON-friendly view of what NVML returned (bytes, ctypes structures, lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value[:64]] + (["..."] if len(value) > 64 else [])
    fields = getattr(value, "_fields_", None)
    if fields:
        return {name: _plain(getattr(value, name)) for name, *_ in fields}
    return repr(value)[:200]


def timed(fn: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> dict[str, Any]:
    """Call `fn(*args)` `repeats` times; its last value (or error) and the calls' latency."""
    times_ms: list[float] = []
    value: Any = None
    error = None
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            value = fn(*args)
            error = None
        except Exception as exc:  # NVML's errors are the answer here, recorded as such
            error = f"{type(exc).__name__}: {exc}"
        times_ms.append((time.perf_counter() - started) * 1000.0)
    out: dict[str, Any] = {
        "median_ms": round(statistics.median(times_ms), 3),
        "max_ms": round(max(times_ms), 3),
    }
    if error is not None:
        out["error"] = error
    else:
        out["value"] = _plain(value)
    return out


def raw_report(repeats: int) -> dict[str, Any]:
    import pynvml as nv

    report: dict[str, Any] = {"nvml_bindings": getattr(nv, "__version__", "unknown")}
    report["nvmlInit"] = timed(nv.nvmlInit, (), 1)
    if "error" in report["nvmlInit"]:
        return report
    report["driver"] = timed(nv.nvmlSystemGetDriverVersion, (), 1)
    count = nv.nvmlDeviceGetCount()
    report["gpus"] = []
    for i in range(count):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mems = timed(nv.nvmlDeviceGetSupportedMemoryClocks, (h,), 1).get("value")
        mem = max(mems) if isinstance(mems, list) and mems else 0
        fields = [nv.NVML_FI_DEV_POWER_AVERAGE, nv.NVML_FI_DEV_POWER_INSTANT]

        def field_values(handle: Any, fields: list[int] = fields) -> list[Any]:
            got = nv.nvmlDeviceGetFieldValues(handle, fields)
            return [
                {"mW": v.value.uiVal} if v.nvmlReturn == 0 else {"nvmlReturn": v.nvmlReturn}
                for v in got
            ]

        sm, temp = nv.NVML_CLOCK_SM, nv.NVML_TEMPERATURE_GPU
        calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
            ("nvmlDeviceGetName", nv.nvmlDeviceGetName, (h,)),
            ("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, (h,)),
            ("nvmlDeviceGetPciInfo.busId", lambda x: nv.nvmlDeviceGetPciInfo(x).busId, (h,)),
            ("nvmlDeviceGetPowerUsage_mW", nv.nvmlDeviceGetPowerUsage, (h,)),
            ("nvmlDeviceGetFieldValues(POWER_AVERAGE,POWER_INSTANT)", field_values, (h,)),
            (
                "nvmlDeviceGetTotalEnergyConsumption_mJ",
                nv.nvmlDeviceGetTotalEnergyConsumption,
                (h,),
            ),
            ("nvmlDeviceGetClockInfo(SM)_MHz", nv.nvmlDeviceGetClockInfo, (h, sm)),
            ("nvmlDeviceGetMaxClockInfo(SM)_MHz", nv.nvmlDeviceGetMaxClockInfo, (h, sm)),
            ("nvmlDeviceGetUtilizationRates_pct", nv.nvmlDeviceGetUtilizationRates, (h,)),
            ("nvmlDeviceGetTemperature(GPU)_C", nv.nvmlDeviceGetTemperature, (h, temp)),
            ("nvmlDeviceGetEnforcedPowerLimit_mW", nv.nvmlDeviceGetEnforcedPowerLimit, (h,)),
            ("nvmlDeviceGetPowerManagementLimit_mW", nv.nvmlDeviceGetPowerManagementLimit, (h,)),
            (
                "nvmlDeviceGetPowerManagementDefaultLimit_mW",
                nv.nvmlDeviceGetPowerManagementDefaultLimit,
                (h,),
            ),
            (
                "nvmlDeviceGetPowerManagementLimitConstraints_mW",
                nv.nvmlDeviceGetPowerManagementLimitConstraints,
                (h,),
            ),
            (
                "nvmlDeviceGetSupportedMemoryClocks_MHz",
                nv.nvmlDeviceGetSupportedMemoryClocks,
                (h,),
            ),
            (
                "nvmlDeviceGetSupportedGraphicsClocks_MHz(at max memory clock)",
                nv.nvmlDeviceGetSupportedGraphicsClocks,
                (h, mem),
            ),
            ("nvmlDeviceGetApplicationsClock(SM)_MHz", nv.nvmlDeviceGetApplicationsClock, (h, sm)),
        ]
        report["gpus"].append({name: timed(fn, args, repeats) for name, fn, args in calls})
    nv.nvmlShutdown()
    return report


def backend_report(reads: int) -> dict[str, Any]:
    try:
        import numpy as np  # noqa: F401 - the backend's one dependency beyond NVML
    except ImportError:
        return {"skipped": "numpy is not importable: Rheostat's backend was not run"}
    sys.path.insert(0, str(REPO))
    from agent.backend import BackendError
    from agent.nvml import NvmlBackend

    started = time.perf_counter()
    backend = NvmlBackend(read_only=True)
    out: dict[str, Any] = {"init_s": round(time.perf_counter() - started, 4)}
    ident = backend.identity()
    out["identity"] = {
        key: _plain(
            getattr(ident, key).tolist()
            if hasattr(getattr(ident, key), "tolist")
            else getattr(ident, key)
        )
        for key in type(ident).__slots__
    }
    read_s, calls = [], []
    last = None
    for _ in range(reads):
        calls0 = backend.calls
        started = time.perf_counter()
        last = backend.read()
        read_s.append(time.perf_counter() - started)
        calls.append(backend.calls - calls0)
    out["read_s"] = {"median": round(statistics.median(read_s), 5), "max": round(max(read_s), 5)}
    out["calls_per_read"] = calls[-1]
    out["s_per_call"] = round(statistics.median(read_s) / max(calls[-1], 1), 6)
    if last is not None:
        out["last_reading"] = {key: getattr(last, key).tolist() for key in type(last).__slots__}
    try:
        backend.apply(ident.max_cap_w, ident.max_sm_clock_mhz)
        out["read_only_refused_apply"] = False
    except BackendError:
        out["read_only_refused_apply"] = True
    backend.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="timings per NVML call")
    parser.add_argument("--reads", type=int, default=10, help="whole reads through the backend")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    try:
        report["raw"] = raw_report(args.repeats)
    except ImportError:
        report["raw"] = {"error": "nvidia-ml-py (pynvml) is not importable"}
    ok = "error" not in report["raw"] and "error" not in report["raw"].get("nvmlInit", {})
    if ok:
        try:
            report["backend"] = backend_report(args.reads)
        except Exception as exc:  # reported, not raised: the raw part is still worth having
            report["backend"] = {"error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(report, indent=2)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "device_check.json").write_text(text)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
