"""/metrics as Prometheus sees it: formats, compression, default collectors, names, values.

The exposition is prometheus_client's own aiohttp handler over the daemon's registry, served by
the real aiohttp server on a free port. That every collector describes its families, so the
registry refuses a collision, is checked in `test_metrics_describe.py`.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.daemon import build_runtime
from controller.facility import FacilityCollector, FacilityHook, FacilitySection
from controller.http import build_app, daemon_registry, start_server
from controller.metrics.rheostat import RheostatCollector
from controller.policy_file import parse_policy
from controller.runtime import Runtime
from policies.pipeline import decide

POLICY = parse_policy(
    "site: {name: x, topology: {generate: {gpus: 32}}}\ncontrol: {tick_period_s: 1}\n"
    "metrics: {per_gpu: true}\n",
    source="x.yaml",
)
INVENTORY = """
rows:
  - id: limited
    limit_w: 30000
    racks:
      - {id: a, breaker_w: 20000, servers: [{model: H100-SXM5, gpus: 8, overhead_w: 2800}]}
  - id: open
    racks:
      - {id: b, breaker_w: 20000, servers: [{model: H100-SXM5, gpus: 8, overhead_w: 2800}]}
"""
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _decide(rt: Runtime, now_s: float) -> None:
    stale = rt.fleet.stale_racks(now_s, 5.0)
    rt.decision, rt.decision_state = decide(
        POLICY.topology,
        rt.fleet.copy(),
        tier=rt.tier_table[rt.fleet.workload_class],
        limits=rt.limits,
        settings=POLICY.config.policy_settings(),
        state=rt.decision_state,
        now_s=now_s,
        stale_rack=stale,
    )


def _samples(text: str) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(port: int, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(response.headers), response.read()


def test_an_unlimited_row_exports_no_limit_and_no_headroom(tmp_path: Path) -> None:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    policy = parse_policy(
        "site: {name: u, topology: {inventory: inventory.yaml}}\nlimits: {contract_w: 50000}\n",
        source="u.yaml",
        base_dir=tmp_path,
    )
    rt = build_runtime(policy, clock=lambda: 100.0, version="t")
    rt.fleet.rack_power_w[:] = [9000.0, 8000.0]
    registry = CollectorRegistry()
    registry.register(RheostatCollector(rt, clock=lambda: 100.0))
    text = generate_latest(registry).decode()
    assert 'rheostat_row_limit_watts{row="limited",site="u"}' in text
    assert 'rheostat_row_headroom_watts{row="limited",site="u"}' in text
    assert 'rheostat_row_power_watts{row="open",site="u"}' in text
    assert 'rheostat_row_limit_watts{row="open"' not in text
    assert 'rheostat_row_headroom_watts{row="open"' not in text
    # Sample values, not the histogram's `le="+Inf"` bucket label.
    assert all(math.isfinite(v) for v in _samples(text).values())


async def test_metrics_negotiate_openmetrics_and_gzip_with_default_collectors() -> None:
    rt = build_runtime(POLICY, clock=time.time, version="t")
    registry = daemon_registry()
    registry.register(RheostatCollector(rt))
    runner, port = await start_server(build_app(rt, registry), "127.0.0.1", 0)
    try:
        headers, body = await asyncio.to_thread(_get, port, {})
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "Content-Encoding" not in headers
        plain = body.decode()
        for name in ("process_cpu_seconds_total", "python_info", "python_gc_objects_collected"):
            assert name in plain, name
        assert 'rheostat_racks{site="x"} 1.0' in plain

        headers, body = await asyncio.to_thread(_get, port, {"Accept": OPENMETRICS})
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")

        headers, body = await asyncio.to_thread(_get, port, {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        unzipped = gzip.decompress(body).decode()
        assert 'rheostat_racks{site="x"}' in unzipped
        assert all(math.isfinite(v) for v in _samples(unzipped).values())
    finally:
        await runner.cleanup()


def test_the_energy_cost_currency_comes_from_the_policy() -> None:
    hook = FacilityHook(section=FacilitySection(currency="EUR", price_per_mwh=90.0), site="x")
    registry = CollectorRegistry()
    registry.register(FacilityCollector(hook, clock=lambda: 100.0))
    text = generate_latest(registry).decode()
    assert 'rheostat_energy_cost_info{currency="EUR",site="x"} 1.0' in text
    # Before any reading: no budget, no PUE (absent, not NaN); the meter's age counts from start.
    assert "rheostat_pue{" not in text
    assert 'rheostat_facility_meter_age_seconds{site="x"} 0.0' in text
    assert all(math.isfinite(v) for v in _samples(text).values())
    with pytest.raises(ValueError, match="currency"):
        FacilitySection(currency="euro")
