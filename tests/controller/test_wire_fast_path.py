"""The one-pass telemetry check accepts only what the field-by-field checks accept, and the
reason a bad message is refused for does not depend on which path saw it first."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from controller import wire
from controller.wire import telemetry as tel
from policies.errors import TelemetryError

N = 4


def good() -> dict[str, Any]:
    msg = wire.Telemetry(
        rack="r00001",
        seq=7,
        ts_s=1.7e9,
        power_w=np.array([100.0, 200.0, 0.0, 3000.0]),
        sm_clock_mhz=np.array([1500.0, 0.0, 5000.0, 1980.0]),
        util=np.array([0.0, 1.0, 0.5, 0.25]),
        mem_util=np.array([1.0, 0.0, 0.5, 0.75]),
        temp_c=np.array([-40.0, 150.0, 60.0, 30.0]),
        cap_w=np.array([700.0, 700.0, 0.0, 3000.0]),
        classes=("training", "inference"),
        class_idx=np.array([0, 1, 1, 0]),
        rack_power_w=2000.0,
        boot="b-1",
        cmd_epoch=2,
        cmd_seq=5,
    )
    obj: dict[str, Any] = orjson.loads(wire.encode_telemetry(msg))
    return obj


def with_gpu(key: str, value: object, at: int = 1) -> dict[str, Any]:
    obj = good()
    obj[key] = [*obj[key][:at], value, *obj[key][at + 1 :]]
    return obj


def changed(**fields: object) -> dict[str, Any]:
    return good() | fields


def dropped(key: str) -> dict[str, Any]:
    obj = good()
    del obj[key]
    return obj


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("rack missing", dropped("rack"), "malformed"),
    ("rack empty", changed(rack=""), "malformed"),
    ("rack not a string", changed(rack=5), "malformed"),
    ("rack too long", changed(rack="r" * (wire.MAX_RACK_ID_CHARS + 1)), "out_of_range"),
    ("other rack", changed(rack="r00002"), "malformed"),
    ("seq missing", dropped("seq"), "malformed"),
    ("seq a float", changed(seq=7.0), "malformed"),
    ("seq a bool", changed(seq=True), "malformed"),
    ("seq negative", changed(seq=-1), "out_of_range"),
    ("seq unsafe", changed(seq=wire.MAX_SAFE_INT + 1), "out_of_range"),
    ("ts a string", changed(ts="1"), "malformed"),
    ("ts a bool", changed(ts=False), "malformed"),
    ("ts negative", changed(ts=-1.0), "out_of_range"),
    ("ts too late", changed(ts=2.0e11), "out_of_range"),
    ("rack power missing", dropped("rack_power_w"), "malformed"),
    ("rack power negative", changed(rack_power_w=-1.0), "out_of_range"),
    ("rack power too high", changed(rack_power_w=3.0e6), "out_of_range"),
    ("rack power null", changed(rack_power_w=None), "malformed"),
    ("field missing", dropped("util"), "malformed"),
    ("field not a list", changed(temp_c=30.0), "malformed"),
    ("field nested", changed(cap_w=[[1.0]] * N), "malformed"),
    ("field short", changed(power_w=[1.0] * (N - 1)), "wrong_length"),
    ("class_idx long", changed(class_idx=[0] * (N + 1)), "wrong_length"),
    ("all fields wrong count", {**good(), **{k: [0] * 3 for k in tel._GPU_KEYS}}, "wrong_length"),
    ("a null reading", with_gpu("sm_clock_mhz", None), "non_finite"),
    ("power below range", with_gpu("power_w", -0.5), "out_of_range"),
    ("power above range", with_gpu("power_w", 3000.5), "out_of_range"),
    ("clock above range", with_gpu("sm_clock_mhz", 5001.0), "out_of_range"),
    ("util above range", with_gpu("util", 1.0000001), "out_of_range"),
    ("mem util below range", with_gpu("mem_util", -1e-9), "out_of_range"),
    ("temp below range", with_gpu("temp_c", -40.5), "out_of_range"),
    ("temp above range", with_gpu("temp_c", 150.5), "out_of_range"),
    ("cap above range", with_gpu("cap_w", 3001), "out_of_range"),
    ("class index negative", with_gpu("class_idx", -1), "out_of_range"),
    ("class index past the end", with_gpu("class_idx", 2), "out_of_range"),
    ("class index a fraction", with_gpu("class_idx", 0.5), "out_of_range"),
    ("class index just under the count", with_gpu("class_idx", 1.5), "out_of_range"),
    ("class index without classes", changed(classes=[]), "out_of_range"),
    ("classes not a list", changed(classes="training"), "malformed"),
    ("a class not a string", changed(classes=["training", 1]), "malformed"),
    ("a class name too long", changed(classes=["t" * 65, "i"]), "out_of_range"),
    (
        "too many classes",
        changed(classes=[f"c{i}" for i in range(wire.MAX_MESSAGE_CLASSES + 1)]),
        "out_of_range",
    ),
    ("bad boot", changed(boot="no spaces"), "malformed"),
    ("cmd_seq unsafe", changed(cmd_seq=2**53), "out_of_range"),
    ("cmd_epoch a float", changed(cmd_epoch=1.5), "malformed"),
    ("unknown rejection reason", changed(cmd_rejected={"bored": 1}), "malformed"),
    ("fallback not a bool", changed(fallback=1), "malformed"),
]


def reason(obj: dict[str, Any], decode: Any) -> str:
    with pytest.raises(TelemetryError) as info:
        decode(obj)
    return info.value.reason


@pytest.mark.parametrize(
    ("obj", "expected"), [(o, r) for _, o, r in BAD], ids=[i for i, _, _ in BAD]
)
def test_both_paths_refuse_with_the_same_reason(obj: dict[str, Any], expected: str) -> None:
    kwargs: dict[str, Any] = {"rack": "r00001", "expected_gpus": N}
    try:
        fast = tel._decode_valid(obj, **kwargs)
    except TelemetryError as exc:  # only the agent fields can raise there, as they would later
        fast_reason: str | None = exc.reason
    else:
        assert fast is None, "the one-pass check accepted a bad message"
        fast_reason = None
    detailed = reason(obj, lambda o: tel._decode_checked(o, **kwargs))
    whole = reason(obj, lambda o: wire.decode_telemetry(orjson.dumps(o), **kwargs))
    assert detailed == whole == expected
    assert fast_reason in (None, expected)


@pytest.mark.parametrize(
    "obj",
    [
        good(),
        changed(ts=1_700_000_000, rack_power_w=0, cmd_rejected={"stale_seq": 3}, fallback=True),
        changed(**{k: [] for k in tel._GPU_KEYS}, classes=[]),
        with_gpu("class_idx", 1.0),
    ],
    ids=["floats", "integers and agent fields", "no GPUs", "a whole float index"],
)
def test_both_paths_accept_the_same_message(obj: dict[str, Any]) -> None:
    n = len(obj["power_w"])
    fast = tel._decode_valid(obj, rack="r00001", expected_gpus=n)
    detailed = tel._decode_checked(obj, rack="r00001", expected_gpus=n)
    assert fast is not None
    for name in wire.Telemetry.__slots__:
        a, b = getattr(fast, name), getattr(detailed, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, name
            assert np.array_equal(a, b), name
        elif isinstance(a, float):
            assert type(b) is float, name
            assert math.isclose(a, b), name
        else:
            assert a == b, name
