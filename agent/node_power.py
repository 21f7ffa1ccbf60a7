"""Whole-server power from the BMC, optional: a small interface and two readers.

`RedfishReader` asks the BMC's Redfish power resource over HTTPS (DMTF DSP0268: `PowerControl[0]
.PowerConsumedWatts` in the classic `Power` resource, `PowerWatts.Reading` in the newer
`EnvironmentMetrics`); `IpmiDcmiReader` runs `ipmitool dcmi power reading` and parses its
"Instantaneous power reading" line. BMCs refresh these about once a second and answer in tens to
hundreds of ms, so the agent reads them in a worker thread; a failure is NaN for that reading,
never a stopped agent. Units: W.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any, Protocol

from agent.backend import BackendError
from agent.config import IpmiDcmiPower, RedfishPower

#: Readings above this are a broken BMC, not a server. Units: W.
MAX_NODE_POWER_W = 1.0e5
MAX_RESPONSE_BYTES = 1 << 20


class NodePowerReader(Protocol):
    def read(self) -> float:
        """The server's input power now; raises `BackendError` when the BMC cannot say. W."""
        ...


def _checked(watts: Any, source: str) -> float:
    if isinstance(watts, bool) or not isinstance(watts, int | float):
        raise BackendError(f"{source}: no numeric power reading")
    value = float(watts)
    if not 0.0 <= value <= MAX_NODE_POWER_W:
        raise BackendError(f"{source}: power {value} W out of range")
    return value


def redfish_watts(doc: Any) -> float:
    """The power reading in a Redfish `Power` or `EnvironmentMetrics` document."""
    if isinstance(doc, dict):
        controls = doc.get("PowerControl")
        if isinstance(controls, list) and controls and isinstance(controls[0], dict):
            return _checked(controls[0].get("PowerConsumedWatts"), "Redfish PowerControl")
        reading = doc.get("PowerWatts")
        if isinstance(reading, dict):
            return _checked(reading.get("Reading"), "Redfish PowerWatts")
    raise BackendError("Redfish: neither PowerControl nor PowerWatts in the document")


_DCMI = re.compile(r"Instantaneous power reading:\s*(\d+(?:\.\d+)?)\s*Watts", re.IGNORECASE)


def dcmi_watts(output: str) -> float:
    """The instantaneous reading in `ipmitool dcmi power reading` output."""
    found = _DCMI.search(output)
    if found is None:
        raise BackendError("ipmitool: no 'Instantaneous power reading' line")
    return _checked(float(found.group(1)), "ipmitool")


class RedfishReader:
    def __init__(self, section: RedfishPower) -> None:
        if not section.url.startswith(("https://", "http://")):
            raise BackendError("Redfish url must be http(s)")
        self.section = section
        headers = {"Accept": "application/json"}
        if section.username is not None:
            password = os.environ.get(section.password_env or "", "")
            token = base64.b64encode(f"{section.username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._headers = headers
        self._context = (
            ssl.create_default_context(cafile=section.ca_file)
            if section.url.startswith("https://")
            else None
        )

    def read(self) -> float:
        request = urllib.request.Request(self.section.url, headers=self._headers)  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310 - the scheme is checked in __init__
                request, timeout=self.section.timeout_s, context=self._context
            ) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"Redfish: {exc}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise BackendError("Redfish: response too large")
        try:
            return redfish_watts(json.loads(body))
        except ValueError:
            raise BackendError("Redfish: response is not JSON") from None


class IpmiDcmiReader:
    def __init__(self, section: IpmiDcmiPower) -> None:
        self.section = section

    def read(self) -> float:
        try:
            done = subprocess.run(
                list(self.section.command),
                capture_output=True,
                text=True,
                timeout=self.section.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"ipmitool: {exc}") from None
        if done.returncode != 0:
            raise BackendError(f"ipmitool exited {done.returncode}: {done.stderr.strip()[:200]}")
        return dcmi_watts(done.stdout)


def node_power_reader(section: RedfishPower | IpmiDcmiPower | None) -> NodePowerReader | None:
    if section is None:
        return None
    if isinstance(section, RedfishPower):
        return RedfishReader(section)
    return IpmiDcmiReader(section)
