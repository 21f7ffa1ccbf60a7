"""What the daemon calls: one object per policy's `demand_response` section.

The daemon's tick asks `limits` for this tick's `Limits` (the DR limit folded into the site limit,
with the Flex floors), routes messages on the grid-event topic to `handle`, publishes
acknowledgements with `flush`, runs `serve` as a task (the OpenADR VEN, when configured), and
exports `status` as the `rheostat_dr_*` metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import numpy as np
from numpy.typing import NDArray

from controller import extras
from controller.config import DemandResponseSection
from controller.grid.manager import DrTick, FlexInputs, GridEvents
from controller.grid.mqtt import GridEventTopic
from controller.grid.openadr import PriceSink, Ven
from controller.grid.store import EventStore, resolve_store_path
from controller.mqtt_client import Client
from policies.decision import Decision, Limits
from policies.stages import Idle, Tick, dc_w
from policies.topology import Topology

log = logging.getLogger("rheostat.grid")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GridStatus:
    """The DR figures the metrics export. Units: W; ratios in [0, 1]."""

    active: bool
    target_w: float | None = None
    baseline_w: float | None = None
    shortfall_w: float | None = None
    compliance_ratio: dict[str, float] = dataclasses.field(default_factory=dict)


class GridHook:
    """Demand response for one running daemon."""

    def __init__(
        self,
        section: DemandResponseSection,
        *,
        site: str,
        clock: Callable[[], float],
        base_dir: Path | None = None,
        tick_s: float = 1.0,
        psu_efficiency: float = 1.0,
    ) -> None:
        # DR targets are wall power at the meter; the core budgets power after the PSUs.
        self.psu_efficiency = psu_efficiency
        #: Where OpenADR ELECTRICITY_PRICE forecasts go (the daemon's carbon hook), if anywhere.
        self.price_sink: PriceSink | None = None
        store_path = resolve_store_path(section.store_path, base_dir)
        if section.openadr is not None:  # fail at start-up, not in the VEN's retry loop
            extras.check("openleadr", "the OpenADR VEN (demand_response.openadr)")
        self.section = section
        self.clock = clock
        self.events = GridEvents(section=section, store=EventStore(store_path), tick_s=tick_s)
        self.events.load_schedule(clock())
        self.topic = GridEventTopic(site=site, grid=self.events, clock=clock)
        self.last: DrTick | None = None

    @property
    def topics(self) -> list[str]:
        """Topics the daemon subscribes to (QoS 1) for this hook."""
        return self.topic.filters if self.section.mqtt_events else []

    def handle(self, topic: str, payload: bytes) -> bool:
        """True when the message was a grid event (consumed here)."""
        return self.section.mqtt_events and self.topic.handle(topic, payload)

    async def flush(self, client: aiomqtt.Client | Client) -> None:
        await self.topic.flush(client)

    def step(
        self,
        *,
        now_s: float,
        site_power_w: float,
        topology: Topology,
        tier: NDArray[np.int8],
        decision: Decision | None,
    ) -> DrTick:
        """This tick's DR step: the DR limit at the site's meter (wall power) and Flex floors.

        The Flex check needs each GPU's unconstrained demand, taken from the previous decision;
        on the first tick (no decision yet) the raw DR limit applies.
        """
        self.events.record_power(now_s, site_power_w)
        flex = None
        if decision is not None:
            gpu_w = float(np.minimum(decision.demand_w, decision.cap_w).sum())
            flex = FlexInputs(
                demand_w=decision.demand_w,
                tier=tier,
                min_cap_w=topology.gpu_min_cap_w,
                overhead_w=max(site_power_w - gpu_w, 0.0),
            )
        tick = self.events.tick(now_s, flex)
        self.last = tick
        return tick

    def limits(
        self,
        base: Limits,
        *,
        now_s: float,
        site_power_w: float,
        topology: Topology,
        tier: NDArray[np.int8],
        decision: Decision | None,
    ) -> Limits:
        """This tick's core-side limits: the lower of `base.site_limit_w` and the DR limit (on
        the DC side), plus floors. The daemon's tick runs `GridStage` instead."""
        tick = self.step(
            now_s=now_s, site_power_w=site_power_w, topology=topology, tier=tier, decision=decision
        )
        if tick.site_limit_w is None:
            return dataclasses.replace(base, gpu_floor_w=None)
        limit = dc_w(tick.limit_w, self.psu_efficiency)
        if base.site_limit_w is not None:
            limit = min(limit, base.site_limit_w)
        return dataclasses.replace(base, site_limit_w=limit, gpu_floor_w=tick.gpu_floor_w)

    def status(self) -> GridStatus:
        tick = self.last
        ratios = {k: v.ratio for k, v in self.events.compliance.items()}
        if tick is None or not tick.budget.active:
            return GridStatus(active=False, compliance_ratio=ratios)
        power = self.events.last_power_w
        shortfall = 0.0 if power is None else max(power - tick.budget.target_w, 0.0)
        return GridStatus(
            active=True,
            target_w=tick.budget.target_w,
            baseline_w=tick.budget.baseline_w if math.isfinite(tick.budget.baseline_w) else None,
            shortfall_w=max(shortfall, tick.shortfall_w),
            compliance_ratio=ratios,
        )

    async def serve(self) -> None:
        """Run the OpenADR VEN until cancelled (returns at once when none is configured)."""
        section = self.section.openadr
        if section is None:
            return
        attempt = 0
        while True:
            try:
                async with Ven(
                    section=section,
                    dr=self.section,
                    events=self.events,
                    clock=self.clock,
                    price_sink=self.price_sink,
                ) as ven:
                    if not ven.registered:
                        raise RuntimeError("the VTN did not register this VEN")
                    attempt = 0
                    await asyncio.Event().wait()
            except (OSError, RuntimeError) as exc:
                attempt += 1
                log.warning("OpenADR VEN stopped: %s; retrying", exc)
                await asyncio.sleep(min(60.0, 1.5**attempt))


class GridStage(Idle):
    """Demand response as a stage: the DR limit at the site's meter tightens the tick's limit.

    Baselines are taken at `Tick.metered_w`: the facility meter when a facility stage observed
    one, else the racks' metered power.
    """

    def __init__(self, hook: GridHook) -> None:
        self.hook = hook

    def limits(self, tick: Tick) -> None:
        dr = self.hook.step(
            now_s=tick.now_s,
            site_power_w=tick.metered_w,
            topology=tick.topology,
            tier=tick.tier,
            decision=tick.decision,
        )
        if dr.site_limit_w is not None:
            tick.tighten(dr.site_limit_w)
            tick.gpu_floor_w = dr.gpu_floor_w
