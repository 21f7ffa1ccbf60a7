"""Every MQTT topic of wire protocol v1: its name, who writes it, QoS, retention, message.

`TOPICS` is the table (one row per topic family, in the order below); the functions build the
concrete topic names and subscription filters that every publisher and subscriber uses, so no
module spells a topic by hand. Levels in angle brackets are ids: `<site>` and `<rack>` from the
policy, `<node>` from the inventory, `<job>` and `<event_id>` from their senders (checked where
the message is taken).

| topic (under `rheostat/v1/<site>/`) | direction                          | QoS | retained |
|-------------------------------------|------------------------------------|-----|----------|
| `telemetry/<rack>`                  | rack agent -> controller           | 0   | no       |
| `telemetry/<rack>/<node>`           | node agent -> controller           | 0   | no       |
| `command/<rack>`                    | controller -> rack's agents        | 1   | no       |
| `command/<rack>/<node>`             | controller -> node agent           | 1   | no       |
| `controller/status`                 | controller -> agents (last will)   | 1   | yes      |
| `facility`                          | facility meter -> controller       | 0   | no       |
| `grid/signal`                       | energy management -> controller    | 1   | no       |
| `jobs/<job>`                        | cluster scheduler -> controller    | 1   | yes      |
| `grid/event`, `grid/event/<id>`     | grid operator / EMS -> controller  | 1   | no       |
| `grid/response/<event_id>`          | controller -> grid operator / EMS  | 1   | yes      |

Telemetry is QoS 0 because the next period's message supersedes a lost one; everything that is
not resent by itself is QoS 1. Retained topics hold state a late subscriber needs: the
controller's liveness (its MQTT last will turns it `offline`), the jobs in force (an empty
retained message withdraws a job), the answer to each grid event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from controller.wire.protocol import TOPIC_ROOT


def telemetry_topic(site: str, rack: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/{rack}"


def telemetry_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/+"


def node_telemetry_topic(site: str, rack: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/{rack}/{node}"


def node_telemetry_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/+/+"


def command_topic(site: str, rack: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/{rack}"


def command_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/+"


def node_command_topic(site: str, rack: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/{rack}/{node}"


def status_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/controller/status"


def facility_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/facility"


def signal_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/grid/signal"


def jobs_prefix(site: str) -> str:
    """Every job topic starts with this; the rest of the topic is the job's id."""
    return f"{TOPIC_ROOT}/{site}/jobs/"


def jobs_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/jobs/+"


def job_topic(site: str, job: str) -> str:
    return f"{TOPIC_ROOT}/{site}/jobs/{job}"


def grid_event_topic(site: str) -> str:
    """The plain event topic; events may also go to `<this>/<event_id>`."""
    return f"{TOPIC_ROOT}/{site}/grid/event"


def grid_event_filters(site: str) -> tuple[str, str]:
    """Subscriptions for grid events: the plain topic and the per-event ones."""
    topic = grid_event_topic(site)
    return (topic, f"{topic}/+")


def grid_response_topic(site: str, event_id: str) -> str:
    return f"{TOPIC_ROOT}/{site}/grid/response/{event_id}"


def rack_from_topic(topic: str) -> str:
    """The last topic level, which names the rack on telemetry and command topics."""
    return topic.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Topic:
    """One topic family: its filter under the site, who writes and reads it, QoS, retention."""

    name: str
    #: The topic under `rheostat/v1/<site>/`, with MQTT `+` for each id level.
    filter: str
    writer: str
    reader: str
    qos: Literal[0, 1]
    retained: bool
    #: The `controller.wire` module with the message's codec.
    message: str


#: The protocol's topics (see the module docstring's table).
TOPICS: Final = (
    Topic(
        name="telemetry",
        filter="telemetry/+",
        writer="rack agent",
        reader="controller",
        qos=0,
        retained=False,
        message="telemetry",
    ),
    Topic(
        name="node_telemetry",
        filter="telemetry/+/+",
        writer="node agent",
        reader="controller",
        qos=0,
        retained=False,
        message="node",
    ),
    Topic(
        name="command",
        filter="command/+",
        writer="controller",
        reader="rack's agents",
        qos=1,
        retained=False,
        message="command",
    ),
    Topic(
        name="node_command",
        filter="command/+/+",
        writer="controller",
        reader="node agent",
        qos=1,
        retained=False,
        message="node_command",
    ),
    Topic(
        name="status",
        filter="controller/status",
        writer="controller",
        reader="agents",
        qos=1,
        retained=True,
        message="status",
    ),
    Topic(
        name="facility",
        filter="facility",
        writer="facility meter",
        reader="controller",
        qos=0,
        retained=False,
        message="meter",
    ),
    Topic(
        name="signal",
        filter="grid/signal",
        writer="energy-management system",
        reader="controller",
        qos=1,
        retained=False,
        message="grid_signal",
    ),
    Topic(
        name="job",
        filter="jobs/+",
        writer="cluster scheduler",
        reader="controller",
        qos=1,
        retained=True,
        message="jobs",
    ),
    Topic(
        name="grid_event",
        filter="grid/event",
        writer="grid operator or energy-management system",
        reader="controller",
        qos=1,
        retained=False,
        message="grid_event",
    ),
    Topic(
        name="grid_event_by_id",
        filter="grid/event/+",
        writer="grid operator or energy-management system",
        reader="controller",
        qos=1,
        retained=False,
        message="grid_event",
    ),
    Topic(
        name="grid_response",
        filter="grid/response/+",
        writer="controller",
        reader="grid operator or energy-management system",
        qos=1,
        retained=True,
        message="grid_event",
    ),
)
