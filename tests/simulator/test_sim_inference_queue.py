"""Inference services: trace files by path, prompt and decode credited at their own rates, and the
queueing delay of requests per tier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from policies.errors import ConfigErrors
from simulator.queues import ServiceQueue, weighted_quantile
from simulator.rates import azure_trace_arrivals
from simulator.scenario import Scenario, load_scenario
from simulator.workloads import (
    DECODE_TOKENS_PER_GPU_S,
    PREFILL_TOKENS_PER_GPU_S,
    InferenceService,
    WorkloadSet,
)

TRACE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.0000000,1000,10
2023-11-16 18:15:46.5000000,3000,30
2023-11-16 18:15:48.2000000,500,50
"""


def test_trace_file_is_read_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "mine.csv").write_text(TRACE)
    scenario_file = tmp_path / "site.yaml"
    scenario_file.write_text(
        "name: mine\nduration_s: 60\ntopology: {gpus: 8}\nworkloads:\n"
        "  - {kind: inference, name: i, gpus: 8, source: trace, trace_file: traces/mine.csv}\n"
    )
    sc = load_scenario(str(scenario_file))
    path = sc.workloads[0].trace_file  # type: ignore[union-attr]
    assert path == str((tmp_path / "traces" / "mine.csv").resolve())
    prompt, generated, requests = azure_trace_arrivals(4, 1.0, path=path)
    # 3.2 s of arrivals, looped: the second pass starts in tick 3.
    np.testing.assert_array_equal(requests, [2, 0, 1, 2])
    np.testing.assert_array_equal(prompt, [4000, 0, 500, 4000])
    np.testing.assert_array_equal(generated, [40, 0, 50, 40])


def test_a_missing_trace_file_names_its_field_and_line(tmp_path: Path) -> None:
    scenario_file = tmp_path / "site.yaml"
    scenario_file.write_text(
        "name: mine\nduration_s: 60\ntopology: {gpus: 8}\nworkloads:\n"
        "  - {kind: inference, name: i, gpus: 8, source: trace, trace_file: nope.csv}\n"
    )
    with pytest.raises(ConfigErrors) as err:
        load_scenario(str(scenario_file))
    assert err.value.errors[0].field == "workloads.0.trace_file"
    assert err.value.errors[0].line == 5


def test_trace_file_needs_the_trace_source() -> None:
    with pytest.raises(ValidationError, match="needs source: trace"):
        Scenario.model_validate(
            {
                "name": "x",
                "duration_s": 1,
                "topology": {"gpus": 8},
                "workloads": [{"kind": "inference", "name": "i", "gpus": 8, "trace_file": "a"}],
            }
        )


def service(prefill: list[float], decode: list[float], n_gpus: int = 1) -> WorkloadSet:
    svc = InferenceService(
        name="s",
        tier=0,
        start_gpu=0,
        n_gpus=n_gpus,
        start_s=0.0,
        end_s=float("inf"),
        prefill_gpu_s=np.asarray(prefill, dtype=np.float64),
        decode_gpu_s=np.asarray(decode, dtype=np.float64),
        requests=np.ones(len(prefill)),
    )
    return WorkloadSet.create(n_gpus, (), (svc,), 1.0)


def step(ws: WorkloadSet, ticks: int, speed: float = 1.0) -> None:
    for t in range(ticks):
        ws.demand(float(t), np.full(ws.n_jobs, speed))


def test_prompt_work_that_waits_is_credited_as_prompt_work() -> None:
    """4 GPU-s of prompts on one GPU take 4 ticks; every token is a prompt token."""
    ws = service([4.0] + [0.0] * 9, [0.0] * 10)
    step(ws, 10)
    assert ws.work[0] == pytest.approx(4.0 * PREFILL_TOKENS_PER_GPU_S)
    assert ws.backlog_gpu_s[0] == pytest.approx(0.0)
    # Decode waiting behind prompts is credited at decode's rate once it is served.
    ws = service([2.0] + [0.0] * 9, [1.0] + [0.0] * 9)
    step(ws, 10)
    assert ws.work[0] == pytest.approx(2.0 * PREFILL_TOKENS_PER_GPU_S + DECODE_TOKENS_PER_GPU_S)


def test_queueing_delay_grows_with_the_backlog_and_is_zero_with_headroom() -> None:
    ws = service([0.1] * 20, [0.3] * 20)  # 0.4 of a GPU each tick: served within its tick
    step(ws, 20)
    lat = ws.latency_by_tier(20.0)[0]
    assert lat["p50"] == 0.0
    assert lat["p99"] == 0.0
    assert lat["weight"] == 20.0
    ws = service([0.5] * 20, [1.5] * 20)  # twice what one GPU serves: the queue grows
    step(ws, 20)
    lat = ws.latency_by_tier(20.0)[0]
    # Prompts go first (0.5 a tick), so decode gets 0.5 of each tick against 1.5 arriving: tick
    # t's requests finish in tick 3t + 2 (delay 2t + 2: 2, 4, ... 12 for t <= 5); the other 14
    # still wait at the end, 20 - t each (1 ... 14).
    assert lat["p50"] == 7.0
    assert lat["p99"] == 14.0


def test_decode_waits_for_its_prefill_and_entries_finish_in_order() -> None:
    q = ServiceQueue()
    q.push(0.0, 1.0, 1.0, 1.0)
    q.push(1.0, 0.0, 1.0, 1.0)
    assert q.serve_decode(5.0, 1.0) == 0.0  # nothing prefilled yet
    assert q.serve_prefill(0.5) == 0.5
    assert q.serve_decode(5.0, 1.0) == 0.0  # the first entry's prompt is half done
    assert q.serve_prefill(5.0) == 0.5
    assert q.serve_decode(5.0, 2.0) == 2.0
    assert q.delays_s == [2.0, 1.0]
    assert q.pending() == (0.0, 0.0)
    assert weighted_quantile([1.0, 5.0, 9.0], [1.0, 1.0, 98.0], 0.5) == 9.0
    assert weighted_quantile([], [], 0.5) == 0.0
