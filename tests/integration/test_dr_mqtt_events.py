"""Grid events over a real Mosquitto: create, acknowledge, cancel; bad messages are counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import orjson
import pytest

from controller.config import DemandResponseSection
from controller.grid.manager import GridEvents
from controller.grid.mqtt import GridEventTopic
from controller.grid.store import EventStore
from controller.wire import grid_response_topic
from tests.services import Mosquitto

pytestmark = pytest.mark.integration


async def test_events_over_mqtt(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dr = DemandResponseSection(store_path=tmp_path / "ev.sqlite")
    grid = GridEvents(section=dr, store=EventStore(dr.store_path))
    topic = GridEventTopic(site="phx", grid=grid, clock=time.time)
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as listener,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ems") as ems,
    ):
        task = asyncio.create_task(topic.listen(listener))
        try:
            await ems.subscribe(grid_response_topic("phx", "peak"), qos=1)
            await asyncio.sleep(0.2)
            start = time.time() + 600
            await ems.publish(topic.topic, b"{not json", qos=1)
            msg = {
                "v": 1,
                "action": "create",
                "event_id": "peak",
                "start": start,
                "duration_s": 10800,
                "simple_level": 2,
            }
            await ems.publish(topic.topic, orjson.dumps(msg), qos=1)
            async with asyncio.timeout(5):
                async for reply in ems.messages:
                    assert isinstance(reply.payload, bytes)
                    body = orjson.loads(reply.payload)
                    assert body == {"event_id": "peak", "opt": "optIn", "reason": ""}
                    break
            assert topic.rejected == 1
            event = grid.events["peak"]
            assert event.reduction_frac == 0.25
            assert event.ramp_s == dr.default_ramp_s
            await ems.publish(
                f"{topic.topic}/peak",
                orjson.dumps({"v": 1, "action": "cancel", "event_id": "peak"}),
                qos=1,
            )
            async with asyncio.timeout(5):
                while grid.events["peak"].cancelled_s is None:
                    await asyncio.sleep(0.02)
            assert EventStore(dr.store_path).get("peak") == grid.events["peak"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
