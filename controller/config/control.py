"""The policy file's `control` section: the loop's period and the commands' lifetime."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from controller.config.base import PositiveW, Section


class ControlSection(Section):
    """Timing of the loop. Units: s.

    Commands are refreshed once `refresh_frac` of their TTL has passed, so one lost refresh never
    lets a rack fall back to its safe caps. Those safe caps travel in every command: unset
    `safe_cap_frac` derives them from the topology (every GPU at the same fraction of its range,
    as high as every limit allows with all racks on them at once); set, it is the share of each
    GPU's max cap, refused unless all racks on it at once fit every limit.
    """

    tick_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Period of the control loop. Units: s."""
    command_ttl_s: Annotated[float, Field(gt=0)] = 30.0
    """Lifetime of a command on the rack agent's clock; past it the rack applies its safe caps.
    Units: s.
    """
    refresh_frac: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """Share of the TTL after which a rack's command is resent, so one lost refresh never
    expires it.
    """
    stale_after_s: Annotated[float, Field(gt=0)] = 5.0
    """A rack with no telemetry for this long is stale: budgeted at its caps, not its draw.
    Units: s.
    """
    restart_gap_s: Annotated[float, Field(ge=0)] = 1.0
    """A telemetry message with an old seq is still accepted when its timestamp is this much
    newer than the last one: the agent restarted. Units: s.
    """
    safe_cap_frac: Annotated[float, Field(gt=0, le=1)] | None = None
    """Share of each GPU's maximum cap that rack agents fall back to when a command expires;
    unset (the default) derives the safe caps from the topology so that every rack on them at once
    fits every limit. A set value is refused where it does not fit.
    """
    protect_scan_s: Annotated[float, Field(gt=0, le=1)] | None = 0.005
    """How often the racks that reported since the last look are checked for drawing over
    their caps in force while their agents hold higher ones; such a rack is sent its caps in
    force at once, between ticks (`controller.protect`). Unset: only ticks send. Units: s.
    """
    protect_min_interval_s: Annotated[float, Field(gt=0)] = 0.5
    """A rack is sent a protective cut again only after this long, so that its agent can apply
    the caps and report before it is cut again. Units: s.
    """
    ready_fresh_frac: Annotated[float, Field(ge=0, le=1)] = 0.9
    """Share of racks that must report before /readyz says ready."""
    livez_max_age_ticks: Annotated[float, Field(gt=1)] = 10.0
    """/livez fails when no tick has completed for this many periods."""
    #: Poll the policy file this often and reload it on a change; None: reload on SIGHUP only.
    watch_policy_s: PositiveW | None = None
    """Poll the policy file this often and reload it when it changes; unset: reload on SIGHUP
    only. Units: s.
    """

    @model_validator(mode="after")
    def _ttl_covers_ticks(self) -> Self:
        if self.command_ttl_s * self.refresh_frac < self.tick_period_s:
            raise ValueError("command_ttl_s * refresh_frac must be at least tick_period_s")
        return self
