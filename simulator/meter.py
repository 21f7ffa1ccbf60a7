"""The simulated facility meter over MQTT, published as a building-management gateway would.

The closed loop (`simulator.loop`) steps the plant in-process. With rack agents on a real broker
the controller must learn facility power the way it does on a real site: from the meter's own
topic, `rheostat/v1/<site>/facility` (`controller.facility`). This module runs the scenario's
plant (cooling that lags IT heat and worsens with outdoor temperature, UPS losses, fixed loads)
beside the cluster and publishes its meter. Meter outages in the scenario silence the topic, so
the controller's fallback to its cooling model can be exercised end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

import aiomqtt
import structlog

from controller.wire import MeterReading, encode_meter, facility_topic
from simulator.agents import backoff
from simulator.build import full_power_w
from simulator.cluster import SimCluster
from simulator.facility import FacilityRun
from simulator.scenario import Scenario

log = structlog.get_logger("rheostat.simulator.meter")


@dataclass(eq=False, kw_only=True)
class FacilityMeter:
    """The plant around one simulated cluster, stepped on the cluster's clock.

    `period_s` is wall time between publications. The plant advances once per cluster tick that
    has passed since it last looked, with the racks' current draw (their wall power, which is
    what the facility's IT feed measures).
    """

    cluster: SimCluster
    plant: FacilityRun
    site: str
    period_s: float = 1.0
    published: int = 0
    _next_tick_s: float = math.nan

    @classmethod
    def for_scenario(
        cls, cluster: SimCluster, scenario: Scenario, *, site: str, period_s: float = 1.0
    ) -> FacilityMeter:
        if scenario.facility is None:
            raise ValueError(f"scenario {scenario.name!r} has no facility section")
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        full_w = full_power_w(cluster.topology, cluster.params.psu_efficiency)
        n_ticks = math.ceil(scenario.duration_s / scenario.tick_s)
        plant = FacilityRun.create(scenario, full_power_w=full_w, n_ticks=n_ticks)
        return cls(cluster=cluster, plant=plant, site=site, period_s=period_s)

    def advance(self) -> None:
        """Step the plant up to the cluster's present tick."""
        now = self.cluster.now_s
        tick = self.plant.tick_s
        if math.isnan(self._next_tick_s):
            self._next_tick_s = now
        while self._next_tick_s <= now + 1e-9:
            self.plant.step(self._next_tick_s, self.cluster.site_power_w)
            self._next_tick_s += tick

    def reading(self) -> MeterReading | None:
        """The meter's message now, or None while the scenario has the meter silent."""
        self.advance()
        now = self.cluster.now_s
        if self.plant.in_outage(now):
            return None
        return MeterReading(
            ts=time.time(),
            facility_w=self.plant.facility_w,
            it_w=self.plant.it_w,
            outdoor_c=self.plant.outdoor_at(now),
        )


async def run_facility_meter(
    meter: FacilityMeter,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Publish the meter every period until `stop` is set, reconnecting with jittered backoff."""
    topic = facility_topic(meter.site)
    attempt = 0
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                host,
                port,
                username=username,
                password=password,
                identifier=f"rheostat-facility-meter-{meter.site}",
                keepalive=10,
                timeout=5.0,
            ) as client:
                attempt = 0
                while not stop.is_set():
                    reading = meter.reading()
                    if reading is not None:
                        await client.publish(topic, encode_meter(reading), qos=0)
                        meter.published += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=meter.period_s)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("facility meter disconnected", error=str(exc))
        if stop.is_set():
            return
        attempt += 1
        await backoff(stop, attempt)
