"""Wire protocol v1's constants: version, topic root, size limits, ranges, ids, reject reasons.

Every message kind's module reads its bounds from here, so a limit has one value on both sides
of the wire (the daemon, the simulator's agents, the node agent).
"""

from __future__ import annotations

import random
import re
from typing import Final

import numpy as np
from numpy.typing import NDArray

PROTOCOL_VERSION: Final = 1
TOPIC_ROOT: Final = "rheostat/v1"
#: Larger payloads are rejected before parsing: a 72-GPU rack's message is about 6 kB.
MAX_PAYLOAD_BYTES: Final = 256 * 1024

FloatArray = NDArray[np.float64]

#: Physical bounds per field: anything outside is a broken sensor or a broken agent. Units in names.
GPU_FIELD_RANGES: Final[dict[str, tuple[float, float]]] = {
    "power_w": (0.0, 3000.0),
    "sm_clock_mhz": (0.0, 5000.0),
    "util": (0.0, 1.0),
    "mem_util": (0.0, 1.0),
    "temp_c": (-40.0, 150.0),
    "cap_w": (0.0, 3000.0),
}
RACK_POWER_RANGE_W: Final = (0.0, 2.0e6)
#: Integers on the wire are JSON integers in [0, 2**53 - 1] ("safe integers": every one of them
#: survives a float64 round trip, so any JSON library on either side reads the same value).
MAX_SAFE_INT: Final = 2**53 - 1
#: Timestamps (Unix s) on the wire: finite, not negative, and before the year 5000. How far they
#: may be from the controller's own clock is the controller's check (`telemetry.max_clock_skew_s`).
TS_RANGE_S: Final = (0.0, 1.0e11)
#: Boot ids (agent) and controller instance ids: 1-64 characters of this set.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
MAX_ID_CHARS: Final = 64
#: Longest rack id accepted in a payload (the topic level names it too).
MAX_RACK_ID_CHARS: Final = 128
#: Workload-class names per telemetry message, and characters per name.
MAX_MESSAGE_CLASSES: Final = 256
MAX_CLASS_NAME_CHARS: Final = 64
#: A command's `ttl_s` lies in (0, MAX_TTL_S]. Units: s.
MAX_TTL_S: Final = 3600.0
#: Why an agent refuses a command; agents report cumulative counts per reason in telemetry.
COMMAND_REJECT_REASONS: Final = (
    "stale_epoch",
    "stale_seq",
    "wrong_rack",
    "wrong_length",
    "malformed",
    "out_of_range",
    "wrong_version",
)

#: Reconnect backoff for every client of the protocol (daemon and agents): the first retry after
#: RECONNECT_FIRST_S, each later one twice as long up to RECONNECT_MAX_S, jittered over the upper
#: half. Units: s. With it every rack has a fresh command within a few seconds of a broker's
#: return, far inside any command's TTL (an uncapped `1.5 ** attempt` reaches a minute).
RECONNECT_FIRST_S: Final = 0.25
RECONNECT_MAX_S: Final = 2.0


def reconnect_delay_s(attempt: int) -> float:
    """Jittered, capped delay before reconnect `attempt` (1-based). Units: s."""
    ceiling = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2.0 ** max(0, min(attempt, 16) - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter, not cryptography
