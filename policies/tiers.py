"""The Flex tiers every part of the system shares: how many there are and what each tolerates.

A leaf: the wire protocol, the policy-file schema and the decision core's index tables all need
the tier count, and nothing here needs them back.
"""

from __future__ import annotations

#: Flex tiers: 0 is never slowed unless the hard limits leave no choice, 3 tolerates the most.
N_TIERS = 4

#: Slowdown each Flex tier tolerates, as a fraction (tier index -> tolerance): the tiers of the
#: 2025 field demonstration (Emerald AI's Conductor: Flex 0/1/2/3 = 0/10/25/50 %).
DEFAULT_FLEX_TOLERANCES: tuple[float, float, float, float] = (0.0, 0.10, 0.25, 0.50)
