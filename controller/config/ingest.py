"""The policy file's `ingest:` section: how many processes take the site's telemetry."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from controller.config.base import Section

#: A shared-subscription group name: one topic level, no wildcards.
GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class IngestSection(Section):
    """`workers: 0` ingests in the daemon's own process (one MQTT client). `workers: N` starts N
    processes, each subscribed as `$share/<share_group>/rheostat/v1/<site>/telemetry/+` (MQTT 5
    shared subscription: the broker hands each message to one of them), each validating and
    writing into the fleet arrays in shared memory."""

    workers: Annotated[int, Field(ge=0, le=64)] = 0
    """Ingest worker processes; 0: telemetry is ingested in the daemon's own process."""
    share_group: Annotated[str, Field(pattern=GROUP_PATTERN)] = "rheostat-ingest"
    """The MQTT 5 shared-subscription group the workers join."""
