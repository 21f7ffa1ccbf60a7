"""A real openleadr VTN on loopback drives Rheostat's VEN: events, opt-in/out, reports, cancel.

The VTN is openleadr's own `OpenADRServer` over plain HTTP (production needs TLS). aiohttp warns
that openleadr stores its server under a string key; that one warning class is filtered here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openleadr import OpenADRServer

from controller.carbon import CarbonHook, CarbonSection
from controller.config import DemandResponseSection, OpenAdrSection
from controller.grid.manager import GridEvents
from controller.grid.openadr import Ven
from controller.grid.store import EventStore
from policies.dr.events import EventStatus
from policies.topology import generate_topology
from tests.services import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

VEN_ID = "ven-rheostat"


async def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def start_vtn(port: int, reports: list[float]) -> OpenADRServer:
    def lookup(ven_id: str) -> dict[str, str]:
        if ven_id == VEN_ID:
            return {"ven_id": VEN_ID, "ven_name": "site-a", "registration_id": "reg-1"}
        return {}

    vtn = OpenADRServer(
        vtn_id="TEST_VTN",
        http_host="127.0.0.1",
        http_port=port,
        requested_poll_freq=timedelta(seconds=1),
        show_fingerprint=False,
        ven_lookup=lookup,
    )

    def on_create_party_registration(info: dict[str, Any]) -> tuple[str, str]:
        return VEN_ID, "reg-1"

    def on_update_report(data: list[tuple[datetime, float]]) -> None:
        reports.extend(value for _, value in data)

    def on_register_report(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        one_s = timedelta(seconds=1)
        return [(d["r_id"], on_update_report, one_s, one_s) for d in report["report_descriptions"]]

    vtn.add_handler("on_create_party_registration", on_create_party_registration)
    vtn.add_handler("on_register_report", on_register_report)
    await vtn.run()
    return vtn


async def test_vtn_events_reach_the_ven_and_survive_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    reports: list[float] = []
    opts: dict[str, str] = {}
    vtn = await start_vtn(port, reports)
    dr = DemandResponseSection(store_path=tmp_path / "events.sqlite", max_reduction_frac=0.4)
    store = EventStore(dr.store_path)
    grid = GridEvents(section=dr, store=store)
    now = time.time()
    for k in range(30):  # a steady 100 kW before the event: the baseline
        grid.record_power(now - 30 + k, 100_000.0)
    section = OpenAdrSection(
        vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        ven_name="site-a",
        report_interval_s=1.0,
    )

    def on_opt(ven_id: str, event_id: str, opt_type: str) -> None:
        opts[event_id] = opt_type

    try:
        async with Ven(section=section, dr=dr, events=grid, clock=time.time) as ven:
            assert ven.registered
            start = datetime.now(UTC) + timedelta(seconds=2)
            peak = vtn.add_event(
                ven_id=VEN_ID,
                signal_name="SIMPLE",
                signal_type="level",
                intervals=[
                    {"dtstart": start, "duration": timedelta(minutes=30), "signal_payload": 2}
                ],
                callback=on_opt,
                event_id="peak-1",
            )
            deep = vtn.add_event(
                ven_id=VEN_ID,
                signal_name="LOAD_CONTROL",
                signal_type="x-loadControlCapacity",
                intervals=[
                    {"dtstart": start, "duration": timedelta(minutes=5), "signal_payload": 0.3}
                ],
                callback=on_opt,
                event_id="too-deep",
            )
            await wait_for(lambda: peak in opts and deep in opts)
            assert opts == {"peak-1": "optIn", "too-deep": "optOut"}
            assert "max_reduction_frac" in store.note("too-deep")
            stored = store.get("peak-1")
            assert stored is not None
            assert stored.reduction_frac == 0.25
            assert stored.start_s == pytest.approx(start.timestamp(), abs=1e-3)

            t_hold = start.timestamp() + 60
            tick = grid.tick(t_hold)
            assert tick.budget.event_id == "peak-1"
            assert tick.limit_w == pytest.approx(75_000)
            await wait_for(lambda: 100_000.0 in reports)  # TELEMETRY_USAGE from measured power

            # A controller restart mid-event: a new store and manager on the same file.
            again = GridEvents(section=dr, store=EventStore(dr.store_path))
            assert again.tick(t_hold + 1).limit_w == pytest.approx(75_000)
            assert again.events["peak-1"].baseline_w == pytest.approx(100_000)

            vtn.cancel_event(VEN_ID, "peak-1")
            await wait_for(lambda: grid.events["peak-1"].cancelled_s is not None)
            cancelled_s = grid.events["peak-1"].cancelled_s
            assert cancelled_s is not None
            # Recovery follows the ramp from the cut in force (cancelled during the ramp-in or
            # hold): the limit rises smoothly and is gone after the recovery period.
            t = cancelled_s
            limits = [grid.tick(t + s).limit_w for s in (0, 100, 200, 299, 301)]
            finite = [x for x in limits if math.isfinite(x)]
            assert finite == sorted(finite)
            assert math.isinf(limits[-1])
            assert grid.events["peak-1"].status(t + 400) in {
                EventStatus.CANCELLED,
                EventStatus.COMPLETED,
            }
            assert EventStore(dr.store_path).get("peak-1") == grid.events["peak-1"]
    finally:
        await vtn.stop()
    capsys.readouterr()  # openleadr prints its banner to stdout


async def test_price_events_become_the_flexible_work_forecast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    vtn = await start_vtn(port, [])
    opts: dict[str, str] = {}
    dr = DemandResponseSection(store_path=tmp_path / "events.sqlite")
    grid = GridEvents(section=dr, store=EventStore(dr.store_path))
    hook = CarbonHook(
        section=CarbonSection(signal="price"), site="a", topology=generate_topology(8)
    )
    section = OpenAdrSection(
        vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b", ven_name="site-a"
    )

    def on_opt(ven_id: str, event_id: str, opt_type: str) -> None:
        opts[event_id] = opt_type

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    hour = timedelta(hours=1)
    prices = [42.0, 180.5, 65.0]
    try:
        async with Ven(
            section=section, dr=dr, events=grid, clock=time.time, price_sink=hook.take_forecast
        ):
            tariff = vtn.add_event(
                ven_id=VEN_ID,
                signal_name="ELECTRICITY_PRICE",
                signal_type="price",
                intervals=[
                    {"dtstart": start + k * hour, "duration": hour, "signal_payload": p}
                    for k, p in enumerate(prices)
                ],
                callback=on_opt,
                event_id="tariff-1",
            )
            await wait_for(lambda: tariff in opts)
        async with Ven(section=section, dr=dr, events=grid, clock=time.time):
            unused = vtn.add_event(
                ven_id=VEN_ID,
                signal_name="ELECTRICITY_PRICE",
                signal_type="price",
                intervals=[{"dtstart": start, "duration": hour, "signal_payload": 1.0}],
                callback=on_opt,
                event_id="tariff-2",
            )
            await wait_for(lambda: unused in opts)
    finally:
        await vtn.stop()
    capsys.readouterr()
    # The forecast: one hourly slot per interval, from the first interval's start.
    t0 = start.timestamp()
    assert opts == {"tariff-1": "optIn", "tariff-2": "optOut"}
    assert [hook.forecast.at(t0 + 60 + 3600 * k) for k in range(3)] == prices
    assert hook.forecast.at(t0 + 3 * 3600 + 1) is None
    # A price forecast is no curtailment: no demand-response event was created.
    assert grid.events == {}
