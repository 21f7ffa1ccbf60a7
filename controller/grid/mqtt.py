"""The MQTT grid-event topics: an operator or energy-management system publishes events here.

Events go to `rheostat/v1/<site>/grid/event/<event_id>` (QoS 1), or to the plain
`rheostat/v1/<site>/grid/event`. The daemon's receive queue keeps only the newest pending message
per topic (telemetry conflation), so a sender bursting several events should use the per-event
topics: there only a newer version of the same event can replace a pending one, which is what
it means anyway. The daemon passes matching messages to `GridEventTopic.handle`; `listen` runs the
same handler on a client of its own (tools, tests). The message format is in
`controller.wire.grid_event`. Acknowledgements are published retained on
`rheostat/v1/<site>/grid/response/<event_id>` with the opt decision and any reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import orjson

from controller.grid.manager import GridEvents
from controller.grid.sources import parse_event_message
from controller.mqtt_client import Client
from controller.wire import (
    Cancel,
    MessageRejections,
    grid_event_filters,
    grid_event_topic,
    grid_response_topic,
)
from policies.errors import ProtocolError

log = logging.getLogger("rheostat.grid.mqtt")


@dataclass(slots=True)
class GridEventTopic:
    """Validates and applies event messages; counts rejections (metric `reason` labels)."""

    site: str
    grid: GridEvents
    clock: Callable[[], float]
    rejected: int = 0
    #: Acknowledgements waiting for `flush`, newest per topic; bounded by `max_events`.
    responses: dict[str, bytes] = field(default_factory=dict)
    #: Where refusals are counted by reason (the daemon's `rheostat_messages_rejected_total`).
    rejections: MessageRejections | None = None

    @property
    def topic(self) -> str:
        return grid_event_topic(self.site)

    @property
    def filters(self) -> list[str]:
        """Subscriptions: the plain topic and the per-event ones."""
        return list(grid_event_filters(self.site))

    def handle(self, topic: str, payload: bytes) -> bool:
        """Apply one message if it is on the event topic; False when the topic is not ours.

        A bad message is logged and counted, never raised: the loop that feeds us must go on.
        The acknowledgement to publish is queued in `responses`.
        """
        topic_id: str | None = None
        if topic != self.topic:
            prefix = self.topic + "/"
            if not topic.startswith(prefix) or "/" in topic[len(prefix) :]:
                return False
            topic_id = topic[len(prefix) :]
        now_s = self.clock()
        try:
            parsed = parse_event_message(payload, now_s=now_s, section=self.grid.section)
            if topic_id is not None and parsed.event_id != topic_id:
                raise ProtocolError(f"event {parsed.event_id!r} sent on the topic of {topic_id!r}")
        except ProtocolError as exc:
            self._refuse(exc, "grid event rejected")
            return True
        if isinstance(parsed, Cancel):
            known = self.grid.cancel(parsed.event_id, now_s)
            body = {"event_id": parsed.event_id, "cancelled": known}
            event_id = parsed.event_id
        else:
            try:
                opt, reason = self.grid.apply(parsed, now_s)
            except ProtocolError as exc:  # the event table is full
                self._refuse(exc, "grid event refused")
                return True
            body = {"event_id": parsed.event_id, "opt": opt, "reason": reason}
            event_id = parsed.event_id
        topic = grid_response_topic(self.site, event_id)
        self.responses.pop(topic, None)
        if len(self.responses) >= self.grid.section.max_events:  # drop the oldest answer
            self.responses.pop(next(iter(self.responses)))
        self.responses[topic] = orjson.dumps(body)
        return True

    def _refuse(self, exc: ProtocolError, what: str) -> None:
        self.rejected += 1
        if self.rejections is not None:
            self.rejections.count("grid_event", exc)
        log.warning("%s: %s", what, exc)

    async def flush(self, client: aiomqtt.Client | Client) -> None:
        """Publish queued acknowledgements (retained, QoS 1)."""
        while self.responses:
            topic = next(iter(self.responses))
            await client.publish(topic, self.responses[topic], qos=1, retain=True)
            self.responses.pop(topic, None)

    async def listen(self, client: aiomqtt.Client) -> None:
        """Subscribe on `client` and apply messages until cancelled."""
        for topic_filter in self.filters:
            await client.subscribe(topic_filter, qos=1)
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                self.handle(message.topic.value, bytes(payload))
                await self.flush(client)
