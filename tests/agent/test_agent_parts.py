"""The agent's smaller parts: node power readers, NVML without a GPU, the CLI, its config file."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.backend import BackendError, GpuIdentity, clip_to_ranges, highest_at_most
from agent.config import RedfishPower, load_agent_config
from agent.node_power import RedfishReader, dcmi_watts, redfish_watts
from agent.run import backoff_s
from controller.cli import main
from policies.errors import ConfigError

#: `ipmitool dcmi power reading` as a Dell PowerEdge BMC prints it.
DCMI_OUTPUT = """
    Instantaneous power reading:                   412 Watts
    Minimum during sampling period:                 98 Watts
    Maximum during sampling period:                688 Watts
    Average power reading over sample period:      401 Watts
    IPMI timestamp:                           Thu Dec  4 17:00:00 2026
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated
"""

#: A Redfish `Power` resource (DSP0268), trimmed.
REDFISH_POWER = {
    "@odata.id": "/redfish/v1/Chassis/1/Power",
    "PowerControl": [{"MemberId": "0", "PowerConsumedWatts": 5512, "PowerCapacityWatts": 10200}],
}


def test_dcmi_and_redfish_parsers():
    assert dcmi_watts(DCMI_OUTPUT) == 412.0
    assert redfish_watts(REDFISH_POWER) == 5512.0
    assert redfish_watts({"PowerWatts": {"Reading": 640.5}}) == 640.5
    for bad in (
        {"PowerControl": [{"PowerConsumedWatts": None}]},
        {"PowerWatts": {"Reading": -1}},
        [],
    ):
        with pytest.raises(BackendError):
            redfish_watts(bad)
    with pytest.raises(BackendError):
        dcmi_watts("Error: no DCMI support")


@pytest.fixture
def bmc() -> Iterator[str]:
    """A real HTTP server answering as a BMC's Redfish service does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(REDFISH_POWER).encode()
            code = 200 if self.path == "/redfish/v1/Chassis/1/Power" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if code == 200 else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_redfish_reader_over_http(bmc: str):
    ok = RedfishReader(RedfishPower(kind="redfish", url=f"{bmc}/redfish/v1/Chassis/1/Power"))
    assert ok.read() == 5512.0
    missing = RedfishReader(RedfishPower(kind="redfish", url=f"{bmc}/redfish/v1/nope"))
    with pytest.raises(BackendError):
        missing.read()


def test_nvml_backend_without_a_gpu_fails_cleanly():
    from agent.nvml import NvmlBackend

    try:
        backend = NvmlBackend(read_only=True)
    except BackendError as exc:
        message = str(exc)
    else:  # a machine with a GPU: reading works and setting is refused
        with pytest.raises(BackendError, match="read-only"):
            backend.apply(backend.identity().max_cap_w, backend.identity().max_sm_clock_mhz)
        backend.close()
        return
    assert "nvmlInit" in message


def ident() -> GpuIdentity:
    return GpuIdentity(
        index=(0, 1),
        uuid=("a", "b"),
        pci_bus_id=("x", "y"),
        name=("n", "n"),
        min_cap_w=np.array([200.0, 100.0]),
        max_cap_w=np.array([700.0, 400.0]),
        default_cap_w=np.array([700.0, 400.0]),
        min_sm_clock_mhz=np.array([345.0, 210.0]),
        max_sm_clock_mhz=np.array([1980.0, 1410.0]),
    )


def test_requests_never_leave_the_reported_ranges():
    caps, clocks = clip_to_ranges(ident(), np.array([50.0, 9000.0]), np.array([100.0, 5000.0]))
    assert caps.tolist() == [200.0, 400.0]
    assert clocks.tolist() == [345.0, 1410.0]
    assert highest_at_most([210.0, 405.0, 810.0, 1410.0], 1000.0) == 810.0
    assert highest_at_most([210.0, 405.0], 100.0) == 210.0


def test_reconnect_backoff_is_capped():
    waits = [backoff_s(attempt, 2.0) for attempt in range(1, 40)]
    assert max(waits) <= 2.0
    assert waits[0] <= 0.1


def test_config_errors_name_file_and_line(tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_text("site: dc1\nrack: r1\nperiod_s: -1\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert f"{path}:3: period_s" in str(err.value)
    path.write_text("site: dc1\nrack: r1\nnode: 'bad node'\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert "[A-Za-z0-9._:-]" in str(err.value)


def test_once_json_over_the_sim_backend(capsys: pytest.CaptureFixture[str]):
    assert main(["agent", "--once", "--json", "--backend", "sim"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "sim"
    assert report["n_gpus"] == 8
    assert report["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert len(report["reading"]["power_w"]) == 8
    assert all(0 < p <= 700 for p in report["reading"]["power_w"])
