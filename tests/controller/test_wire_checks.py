"""One set of validators: every message kind beside telemetry refuses a fault under the reason
its counter knows, whichever decoder met it."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from controller import wire
from policies.errors import ProtocolError

DECODERS: dict[str, tuple[Callable[[bytes], object], dict[str, object]]] = {
    "meter": (wire.decode_meter, {"v": 1, "ts": 5.0, "facility_w": 1000.0}),
    "signal": (
        wire.decode_signal,
        {"v": 1, "ts": 5.0, "start_ts": 5.0, "slot_s": 60, "values": [1]},
    ),
    "job": (
        lambda b: wire.decode_job(b, job="j"),
        {"v": 1, "ts": 5.0, "tier": 2, "gpus": [{"rack": "r1", "first": 0, "count": 1}]},
    ),
}


@pytest.mark.parametrize("kind", sorted(DECODERS))
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "wrong_version"),
        ({"ts": 2.0e11}, "out_of_range"),
        ({"ts": -1}, "out_of_range"),
        ({"ts": "5"}, "malformed"),
        ({"ts": True}, "malformed"),
        ({"surprise": 1}, "malformed"),
        ({"pad": "x" * wire.MAX_PAYLOAD_BYTES}, "too_large"),
    ],
)
def test_side_messages_share_reasons(kind: str, change: dict[str, object], reason: str) -> None:
    decode, good = DECODERS[kind]
    decode(orjson.dumps(good))  # the base message is valid
    with pytest.raises(ProtocolError) as err:
        decode(orjson.dumps(good | change))
    assert err.value.reason == reason
    assert err.value.reason in wire.MessageRejections.REASONS


@pytest.mark.parametrize("payload", [b"", b"[]", b"nul", b'"x"'])
def test_non_objects_are_malformed_everywhere(payload: bytes) -> None:
    for decode, _ in DECODERS.values():
        with pytest.raises(ProtocolError) as err:
            decode(payload)
        assert err.value.reason == "malformed"
    with pytest.raises(ProtocolError) as cmd:
        wire.decode_command(payload)
    assert cmd.value.reason == "malformed"


def test_safe_integer_bounds_read_the_same_in_every_kind() -> None:
    job = orjson.loads(orjson.dumps(DECODERS["job"][1]))
    job["gpus"][0]["first"] = wire.MAX_SAFE_INT + 1
    with pytest.raises(ProtocolError, match=r"first outside \[0, 2\*\*53 - 1\]") as err:
        wire.decode_job(orjson.dumps(job), job="j")
    assert err.value.reason == "out_of_range"
    status = {"v": 1, "state": "online", "ts": 1.0, "controller": "c", "epoch": 2**53}
    with pytest.raises(ProtocolError) as st:
        wire.decode_status(orjson.dumps(status))
    assert st.value.reason == "out_of_range"
