"""NVML backend: real GPUs through nvidia-ml-py (`import pynvml`), read and capped per GPU.

Rules this module keeps, because NVML calls are slow (10-20 ms each) and some are privileged:
- Every call goes through `_call`, which spaces calls at least `min_call_interval_s` apart
  (rate limit) and turns NVML's exceptions into `BackendError` with the call's name.
- Nothing is ever asked outside what the GPU reports: caps are clipped to
  `nvmlDeviceGetPowerManagementLimitConstraints`, clock ceilings to the supported graphics clocks.
- A limit or ceiling is written only when it changes (by at least 1 W / one clock step), so a
  controller resending the same command every few seconds costs no NVML writes.
- The clock ceiling uses locked clocks (`nvmlDeviceSetGpuLockedClocks`, Volta and later) and falls
  back to application clocks (`nvmlDeviceSetApplicationsClocks`, the highest supported clock at or
  below the ceiling) on GPUs that do not support them.
- `restore_defaults` writes back the power limit and application clocks found at start and releases
  locked clocks, as GEOPM does on exit.
Power: the 1 s average (`NVML_FI_DEV_POWER_AVERAGE`) and the instantaneous sample
(`NVML_FI_DEV_POWER_INSTANT`) where the driver has them (R535+ on Hopper and later), else
`nvmlDeviceGetPowerUsage`. Units from NVML: mW, mJ, MHz, percent; converted here to W, J, MHz and
fractions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import numpy as np

from agent.backend import (
    BackendError,
    FloatArray,
    GpuIdentity,
    GpuReading,
    clip_to_ranges,
    highest_at_most,
)

T = TypeVar("T")

#: NVML calls per second at most (one every 2 ms); a reading of 8 GPUs is ~90 calls.
DEFAULT_MIN_CALL_INTERVAL_S: Final = 0.002
#: Changes smaller than these are not written. Units: W, MHz.
CAP_STEP_W: Final = 1.0
CLOCK_STEP_MHZ: Final = 1.0


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """All GPUs NVML sees (or those in `indexes`), in on-host index order."""

    name = "nvml"

    def __init__(
        self,
        indexes: tuple[int, ...] | None = None,
        *,
        min_call_interval_s: float = DEFAULT_MIN_CALL_INTERVAL_S,
        read_only: bool = False,
    ) -> None:
        try:
            import pynvml  # noqa: PLC0415 - only the nvml backend needs the library
        except ImportError:
            raise BackendError(
                "the nvml backend needs nvidia-ml-py: pip install 'rheostat[agent]'"
            ) from None
        self._nv: Any = pynvml
        self.read_only = read_only
        self.min_call_interval_s = min_call_interval_s
        self.calls = 0
        self.call_seconds = 0.0
        self._last_call = 0.0
        self._call("nvmlInit", self._nv.nvmlInit)
        try:
            count = int(self._call("nvmlDeviceGetCount", self._nv.nvmlDeviceGetCount))
            chosen = tuple(range(count)) if indexes is None else indexes
            if any(not 0 <= i < count for i in chosen):
                raise BackendError(f"GPU indexes {chosen} outside 0..{count - 1}")
            self._handles = [
                self._call("nvmlDeviceGetHandleByIndex", self._nv.nvmlDeviceGetHandleByIndex, i)
                for i in chosen
            ]
            self._ident = self._identify(chosen)
        except BaseException:
            self.close()
            raise
        n = len(self._handles)
        self._set_cap_w = np.full(n, np.nan)
        self._set_clock_mhz = np.full(n, np.nan)
        self._locked_ok = [True] * n
        self._locked = [False] * n
        self._app_clocks_set = [False] * n

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """One NVML call, spaced from the previous one and timed; NVML errors become ours."""
        wait_s = self._last_call + self.min_call_interval_s - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        started = time.monotonic()
        try:
            return fn(*args)
        except self._nv.NVMLError as exc:
            raise BackendError(f"{what}: {exc}") from None
        finally:
            self._last_call = time.monotonic()
            self.calls += 1
            self.call_seconds += self._last_call - started

    def _optional(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """A call some GPUs do not support: None instead of an error."""
        try:
            return self._call(what, fn, *args)
        except BackendError:
            return None

    def _identify(self, chosen: tuple[int, ...]) -> GpuIdentity:
        nv = self._nv
        uuids, buses, names = [], [], []
        lo_w, hi_w, found_w, lo_mhz, hi_mhz = [], [], [], [], []
        self._found_app: list[tuple[int, int] | None] = []
        self._graphics_clocks: list[list[float]] = []
        self._mem_clock: list[int | None] = []
        for h in self._handles:
            uuids.append(_text(self._call("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, h)))
            pci = self._call("nvmlDeviceGetPciInfo", nv.nvmlDeviceGetPciInfo, h)
            buses.append(_text(pci.busId))
            names.append(_text(self._call("nvmlDeviceGetName", nv.nvmlDeviceGetName, h)))
            lo, hi = self._call(
                "nvmlDeviceGetPowerManagementLimitConstraints",
                nv.nvmlDeviceGetPowerManagementLimitConstraints,
                h,
            )
            limit = self._call(
                "nvmlDeviceGetPowerManagementLimit", nv.nvmlDeviceGetPowerManagementLimit, h
            )
            lo_w.append(lo / 1000.0)
            hi_w.append(hi / 1000.0)
            found_w.append(limit / 1000.0)
            max_sm = float(
                self._call("nvmlDeviceGetMaxClockInfo", nv.nvmlDeviceGetMaxClockInfo, h, 1)
            )
            mems = self._optional(
                "nvmlDeviceGetSupportedMemoryClocks", nv.nvmlDeviceGetSupportedMemoryClocks, h
            )
            mem = max(mems) if mems else None
            graphics = (
                self._optional(
                    "nvmlDeviceGetSupportedGraphicsClocks",
                    nv.nvmlDeviceGetSupportedGraphicsClocks,
                    h,
                    mem,
                )
                if mem is not None
                else None
            )
            clocks = sorted(float(c) for c in graphics or ())
            self._graphics_clocks.append(clocks)
            self._mem_clock.append(mem)
            # Without a supported-clock list the range is the top clock alone: no ceiling is set.
            lo_mhz.append(clocks[0] if clocks else max_sm)
            hi_mhz.append(max(clocks[-1], max_sm) if clocks else max_sm)
            app_sm = self._optional(
                "nvmlDeviceGetApplicationsClock", nv.nvmlDeviceGetApplicationsClock, h, 1
            )
            app_mem = self._optional(
                "nvmlDeviceGetApplicationsClock", nv.nvmlDeviceGetApplicationsClock, h, 2
            )
            self._found_app.append(
                None if app_sm is None or app_mem is None else (int(app_mem), int(app_sm))
            )
        return GpuIdentity(
            index=chosen,
            uuid=tuple(uuids),
            pci_bus_id=tuple(buses),
            name=tuple(names),
            min_cap_w=np.array(lo_w),
            max_cap_w=np.array(hi_w),
            default_cap_w=np.array(found_w),
            min_sm_clock_mhz=np.array(lo_mhz),
            max_sm_clock_mhz=np.array(hi_mhz),
        )

    # ------------------------------------------------------------------ GpuBackend
    def identity(self) -> GpuIdentity:
        return self._ident

    def read(self) -> GpuReading:
        nv = self._nv
        n = len(self._handles)
        out = {k: np.full(n, np.nan) for k in GpuReading.__slots__}
        fields = [nv.NVML_FI_DEV_POWER_AVERAGE, nv.NVML_FI_DEV_POWER_INSTANT]
        for i, h in enumerate(self._handles):
            values = self._optional(
                "nvmlDeviceGetFieldValues", nv.nvmlDeviceGetFieldValues, h, fields
            )
            avg = inst = None
            if values is not None:
                got = [v.value.uiVal / 1000.0 if v.nvmlReturn == 0 else None for v in values]
                avg, inst = got[0], got[1]
            if avg is None:
                avg = self._call("nvmlDeviceGetPowerUsage", nv.nvmlDeviceGetPowerUsage, h) / 1000.0
            out["power_w"][i] = avg
            out["power_instant_w"][i] = np.nan if inst is None else inst
            energy = self._optional(
                "nvmlDeviceGetTotalEnergyConsumption", nv.nvmlDeviceGetTotalEnergyConsumption, h
            )
            out["energy_j"][i] = np.nan if energy is None else energy / 1000.0
            out["sm_clock_mhz"][i] = self._call(
                "nvmlDeviceGetClockInfo", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM
            )
            rates = self._call("nvmlDeviceGetUtilizationRates", nv.nvmlDeviceGetUtilizationRates, h)
            out["util"][i] = rates.gpu / 100.0
            out["mem_util"][i] = rates.memory / 100.0
            out["temp_c"][i] = self._call(
                "nvmlDeviceGetTemperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
            )
            out["cap_w"][i] = (
                self._call("nvmlDeviceGetEnforcedPowerLimit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
                / 1000.0
            )
        ident = self._ident
        out["sm_clock_max_mhz"] = np.where(
            np.isnan(self._set_clock_mhz), ident.max_sm_clock_mhz, self._set_clock_mhz
        )
        return GpuReading(**out)

    def apply(self, cap_w: FloatArray, sm_clock_max_mhz: FloatArray) -> None:
        if self.read_only:
            raise BackendError("read-only: refusing to set caps or clocks")
        caps, clocks = clip_to_ranges(self._ident, cap_w, sm_clock_max_mhz)
        errors = []
        for i, h in enumerate(self._handles):
            try:
                if not abs(caps[i] - self._set_cap_w[i]) < CAP_STEP_W:  # NaN: never set yet
                    self._call(
                        "nvmlDeviceSetPowerManagementLimit",
                        self._nv.nvmlDeviceSetPowerManagementLimit,
                        h,
                        round(caps[i] * 1000.0),
                    )
                    self._set_cap_w[i] = caps[i]
                if not abs(clocks[i] - self._set_clock_mhz[i]) < CLOCK_STEP_MHZ:
                    self._set_clock(i, float(clocks[i]))
                    self._set_clock_mhz[i] = clocks[i]
            except BackendError as exc:
                errors.append(f"GPU {self._ident.index[i]}: {exc}")
        if errors:
            raise BackendError("; ".join(errors))

    def _set_clock(self, i: int, ceiling: float) -> None:
        nv, h, ident = self._nv, self._handles[i], self._ident
        at_top = ceiling >= ident.max_sm_clock_mhz[i]
        if self._locked_ok[i]:
            try:
                if at_top:
                    if self._locked[i]:
                        self._call(
                            "nvmlDeviceResetGpuLockedClocks", nv.nvmlDeviceResetGpuLockedClocks, h
                        )
                        self._locked[i] = False
                else:
                    lo = int(ident.min_sm_clock_mhz[i])
                    self._call(
                        "nvmlDeviceSetGpuLockedClocks",
                        nv.nvmlDeviceSetGpuLockedClocks,
                        h,
                        lo,
                        int(ceiling),
                    )
                    self._locked[i] = True
                return
            except BackendError:
                self._locked_ok[i] = False  # not supported here: application clocks from now on
        mem = self._mem_clock[i]
        if mem is None or not self._graphics_clocks[i]:
            raise BackendError("neither locked nor application clocks can be set on this GPU")
        graphics = highest_at_most(self._graphics_clocks[i], ceiling)
        self._call(
            "nvmlDeviceSetApplicationsClocks", nv.nvmlDeviceSetApplicationsClocks, h, mem, graphics
        )
        self._app_clocks_set[i] = True

    def restore_defaults(self) -> None:
        if self.read_only:
            return
        nv, errors = self._nv, []
        for i, h in enumerate(self._handles):
            try:
                if not np.isnan(self._set_cap_w[i]):
                    self._call(
                        "nvmlDeviceSetPowerManagementLimit",
                        nv.nvmlDeviceSetPowerManagementLimit,
                        h,
                        round(self._ident.default_cap_w[i] * 1000.0),
                    )
                if self._locked[i]:
                    self._call(
                        "nvmlDeviceResetGpuLockedClocks", nv.nvmlDeviceResetGpuLockedClocks, h
                    )
                if self._app_clocks_set[i]:
                    found = self._found_app[i]
                    if found is None:
                        self._call(
                            "nvmlDeviceResetApplicationsClocks",
                            nv.nvmlDeviceResetApplicationsClocks,
                            h,
                        )
                    else:
                        self._call(
                            "nvmlDeviceSetApplicationsClocks",
                            nv.nvmlDeviceSetApplicationsClocks,
                            h,
                            *found,
                        )
            except BackendError as exc:
                errors.append(f"GPU {self._ident.index[i]}: {exc}")
        self._set_cap_w[:] = np.nan
        self._set_clock_mhz[:] = np.nan
        self._locked = [False] * len(self._handles)
        self._app_clocks_set = [False] * len(self._handles)
        if errors:
            raise BackendError("; ".join(errors))

    def close(self) -> None:
        with contextlib.suppress(self._nv.NVMLError):
            self._nv.nvmlShutdown()
