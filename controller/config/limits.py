"""The policy file's `limits` (hard limits) and `tiers` (workload class to flex tier) sections."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from controller.config.base import PositiveW, Section, Tier


class LimitsSection(Section):
    """Hard limits. `contract_w` is the site's utility contract (the site limit before DR).

    `rack_breaker_w` overrides every rack's rating; `rack_derating` is the usable fraction of a
    breaker's rating (NEC plans continuous load at 0.8 of it).
    """

    contract_w: PositiveW | None = None
    """The site's utility contract, the site limit before demand response. Units: W at the wall."""
    rack_breaker_w: PositiveW | None = None
    """Overrides every rack's breaker rating. Units: W."""
    rack_derating: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Usable fraction of a breaker's rating (NEC plans continuous load at 0.8)."""
    row_limit_w: PositiveW | None = None
    """Overrides every row's limit. Units: W."""
    #: Share of wall power that reaches GPUs and server loads. Ratings, the contract, DR targets
    #: and the facility budget are wall power; they are scaled by this before the core compares
    #: them with GPU power plus `overhead_w`. 1.0: `overhead_w` already includes PSU losses (as
    #: the DGX H100 default, measured at the wall, does).
    psu_efficiency: Annotated[float, Field(gt=0.5, le=1)] = 1.0
    """Share of wall power that reaches GPUs and server loads; 1.0 when overhead_w already
    includes PSU losses.
    """


class TiersSection(Section):
    """Workload class (as telemetry names it) → flex tier, 0 = never slowed first, 3 = most.

    A class not listed, and a GPU nobody has reported yet, gets `default`.
    """

    default: Tier = 1
    """Flex tier of a workload class not listed, and of a GPU nobody has reported yet (0 to 3)."""
    classes: dict[str, Tier] = Field(default_factory=dict)
    """Workload class (as telemetry names it) to flex tier: 0 is slowed last, 3 first."""
