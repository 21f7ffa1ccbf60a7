"""The policy file's `ingest:` section: how many processes take the site's telemetry."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from controller.config.base import Section

#: A shared-subscription group name: one topic level, no wildcards.
GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class IngestSection(Section):
    """`workers: 0` ingests in the daemon's own process (one MQTT client). `workers: N` starts N
    processes, each subscribed as `$share/<share_group>/rheostat/v1/<site>/telemetry/+` (an MQTT 5
    shared subscription, which Mosquitto 2 and EMQX serve to MQTT 3.1.1 clients too: the broker
    hands each message to one of them), each validating and writing into the fleet arrays in
    shared memory."""

    workers: Annotated[int, Field(ge=0, le=64)] = 0
    """Ingest worker processes; 0: telemetry is ingested in the daemon's own process."""
    share_group: Annotated[str, Field(pattern=GROUP_PATTERN)] = "rheostat-ingest"
    """The MQTT 5 shared-subscription group the workers join."""
    protocol: Literal["5", "3.1.1"] = "3.1.1"
    """MQTT version of the workers' connections. 3.1.1 by default: the workers need no MQTT 5
    property, Mosquitto 2 and EMQX serve `$share/...` subscriptions to 3.1.1 clients too, and a
    3.1.1 PUBLISH carries no properties block to parse. "5" where a broker accepts shared
    subscriptions only from MQTT 5 clients.
    """
