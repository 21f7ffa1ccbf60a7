"""The closed loop's control side as the daemon's stages: one composition for both.

`control_stages` builds the list with `policies.stages.ordered`, the function the daemon's
`controller.stages.build_stages` calls, so the simulator runs grid -> facility -> decide in the
daemon's order and with its algorithms (`policies.facility.FacilityStage`, `DrSession` inside
`LimitKnowledge`). What differs is only where inputs come from: the plant's meter and the
scenario's announced limits instead of MQTT topics.
"""

from __future__ import annotations

import numpy as np

from policies.stages import Idle, Stage, Tick, ordered
from simulator.facility import FacilityRun
from simulator.grid import LimitKnowledge


class PlantMeter(Idle):
    """Measurements as they reach the controller: the facility meter's newest reading (for the
    facility stage and DR baselines), else the racks' metered power, each sample once."""

    def __init__(self, facility: FacilityRun, known: LimitKnowledge) -> None:
        self.facility = facility
        self.known = known
        self._meter_s = -np.inf

    def observe(self, tick: Tick) -> None:
        facility = self.facility
        facility.feed(tick.now_s)
        if facility.spec is not None:
            reading = facility.meter(tick.now_s)
            if reading is not None and reading[0] > self._meter_s:
                self._meter_s = reading[0]
                self.known.record(reading[0], reading[1])
            return
        fleet = tick.fleet
        seen = fleet.rack_last_seen_s
        if np.isfinite(seen).any():
            taken = float(np.max(seen[np.isfinite(seen)]))
            if taken > self._meter_s:  # nothing new arrived (a broker outage): no new sample
                self._meter_s = taken
                self.known.record(taken, float(fleet.rack_power_w.sum()))


class KnownLimit(Idle):
    """The site limit as the controller knows it (contract steps from their notice, DR events
    from their notification, through the daemon's `DrSession`), planned over the tick's
    horizon so caps that land later already fit an announced step."""

    def __init__(self, known: LimitKnowledge) -> None:
        self.known = known

    def limits(self, tick: Tick) -> None:
        tick.tighten(self.known.limit_w(tick.now_s, tick.horizon_s))


class PassThrough(Idle):
    """Without a plant the IT feed is the meter: the limit in force is the budget reported."""

    def __init__(self, facility: FacilityRun) -> None:
        self.facility = facility

    def limits(self, tick: Tick) -> None:
        self.facility.pass_through(tick.site_limit_w)


def control_stages(facility: FacilityRun, known: LimitKnowledge) -> list[Stage]:
    """The controller's stages, in the daemon's order. They outlive a controller restart, as
    the site's meter and its announced limits do."""
    return ordered(
        sources=(PlantMeter(facility, known),),
        grid=KnownLimit(known),
        facility=facility.stage if facility.stage is not None else PassThrough(facility),
    )
