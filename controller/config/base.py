"""What every policy-file section shares: frozen models that refuse unknown keys, unit types.

Sections document their fields with attribute docstrings (`use_attribute_docstrings`), which
`rheostat schema` and the README's tables read; units are in every field name.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from policies.tiers import N_TIERS

PositiveW = Annotated[float, Field(gt=0)]
Tier = Annotated[int, Field(ge=0, le=N_TIERS - 1)]
#: A share in [0, 1): tolerated slowdowns, shed fractions.
Fraction = Annotated[float, Field(ge=0, lt=1)]
Seconds = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    """A policy-file section: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class FiniteSection(Section):
    """A section of plain numbers: infinity and NaN are refused as well as values out of range."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
