"""Commands may carry each GPU's safe cap; a bad one rejects the whole command."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from controller import wire
from policies.errors import ProtocolError


def body(**extra: Any) -> bytes:
    cmd = {
        "v": wire.PROTOCOL_VERSION,
        "rack": "r0",
        "epoch": 0,
        "ctl": "c1",
        "seq": 3,
        "issued_at": 10.0,
        "ttl_s": 30.0,
        "cap_w": [400.0, 500.0],
        "sm_clock_max_mhz": [1980.0, 1980.0],
    }
    return orjson.dumps(cmd | extra)


def test_safe_caps_round_trip_and_are_optional() -> None:
    assert wire.decode_command(body(), rack="r0").safe_cap_w is None
    assert wire.decode_command(body(safe_cap_w=None), rack="r0").safe_cap_w is None
    cmd = wire.decode_command(body(safe_cap_w=[300.0, 250.5]), rack="r0")
    assert cmd.safe_cap_w is not None
    np.testing.assert_array_equal(cmd.safe_cap_w, [300.0, 250.5])
    again = wire.decode_command(wire.encode_command(cmd), rack="r0")
    assert again.safe_cap_w is not None
    np.testing.assert_array_equal(again.safe_cap_w, cmd.safe_cap_w)


def test_encoded_safe_caps_are_rounded_down() -> None:
    cmd = wire.Command(
        rack="r0",
        seq=1,
        issued_at_s=0.0,
        ttl_s=5.0,
        cap_w=np.array([400.0]),
        sm_clock_max_mhz=np.array([1980.0]),
        safe_cap_w=np.array([349.99]),
    )
    decoded = wire.decode_command(wire.encode_command(cmd))
    assert decoded.safe_cap_w is not None
    assert decoded.safe_cap_w.tolist() == [349.9]


@pytest.mark.parametrize(
    "safe",
    [[300.0], [300.0, -1.0], [300.0, 1e9], "300", [300.0, "x"], [[300.0], [300.0]]],
)
def test_a_bad_safe_cap_rejects_the_command(safe: Any) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_command(body(safe_cap_w=safe), rack="r0")
