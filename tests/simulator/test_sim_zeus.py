"""The running simulator's physics against measured power-limit sweeps (Zeus, NSDI 2023).

Nothing is fitted here: `step_gpus` runs with the shipped parameters (voltage knee, throughput
exponents, idle power, limiter) and the H100 and A100 models at every cap the A40 and V100 sweeps
set (as the same fraction of TDP), each workload given the activity a scenario would give it: from
its measured uncapped draw (`activity_for_draw`) with its profile's throughput exponent
(`bench.calibration`, which `rheostat bench calibration` prints).

Per compute-bound workload the throughput ratio (time per epoch at the top limit / at the cap)
must be within 0.05 on average and 0.10 at worst, and the cap of least energy per epoch within
0.05 of TDP of the measured one. Rows the physics' form cannot meet are listed in `KNOWN_MISSES`
with their figures and run as strict expected failures: the bound stays, and a row that starts
to meet it fails the suite until it is taken off the list.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import orjson
import pytest

from bench.calibration import (
    MAX_ERROR,
    MAX_MAE,
    MAX_OPT_CAP_ERROR,
    SWEEP_TDP_W,
    ZEUS_PROFILE,
    compare,
    compute_bound,
    energy_optimal_cap,
    load_sweeps,
    simulate,
)
from controller.cli import main
from policies.gpu_models import GPU_MODELS
from simulator.build import build_cluster
from simulator.physics import ALPHA_COMPUTE, IDLE_W, PEAK_W, activity_for_draw
from simulator.scenario import Scenario
from simulator.workloads import (
    TRAIN_COMPUTE_ACTIVITY,
    TRAINING_PROFILES,
    TrainingProfileName,
)

H100, A100 = 0, 1
MODELS = {"h100": H100, "a100": A100}

#: (sweep GPU, workload, simulated model) -> what misses, as measured. The shipped curve puts the
#: cap of least energy at the knee clock for every workload (cap = idle + (draw - idle) * 0.614),
#: while measured optima range 0.40-0.66 of TDP; and at 0.33-0.5 of TDP the A40 loses more
#: throughput than the curve's idle floor allows. DeepSpeech2 on the A40 slows under caps above
#: its average draw (0.59 of TDP): its draw is bursty, and the curve sees only the average.
KNOWN_MISSES: dict[tuple[str, str, str], str] = {
    ("a40", "cifar100/shufflenetv2", "h100"): "max 0.153 at 0.33 TDP; opt cap 0.432 vs 0.591",
    ("a40", "cifar100/shufflenetv2", "a100"): "max 0.114 at 0.33 TDP; opt cap 0.445 vs 0.591",
    ("a40", "imagenet/resnet50", "h100"): "max 0.157 at 0.5 TDP; opt cap 0.530 vs 0.616",
    ("a40", "imagenet/resnet50", "a100"): "max 0.129 at 0.5 TDP; opt cap 0.552 vs 0.616",
    ("a40", "librispeech/deepspeech2", "h100"): "MAE 0.108, max 0.348; opt cap 0.420 vs 0.608",
    ("a40", "librispeech/deepspeech2", "a100"): "MAE 0.102, max 0.339; opt cap 0.430 vs 0.608",
    ("a40", "squad/bert_base_uncased", "h100"): "max 0.126 at 0.33 TDP; opt cap 0.583 vs 0.655",
    ("a40", "squad/bert_base_uncased", "a100"): "opt cap 0.593 vs 0.655",
    ("v100", "cifar100/shufflenetv2", "a100"): "max 0.125 at 0.4 TDP",
    ("v100", "librispeech/deepspeech2", "h100"): "opt cap 0.475 vs 0.400",
    ("v100", "librispeech/deepspeech2", "a100"): "opt cap 0.494 vs 0.400",
    ("v100", "sentiment140/bert_base_uncased", "h100"): "opt cap 0.591 vs 0.519",
    ("v100", "sentiment140/bert_base_uncased", "a100"): "max 0.127 at 0.4; opt 0.602 vs 0.519",
}


def cases() -> list[object]:
    out: list[object] = []
    for gpu in SWEEP_TDP_W:
        for workload in sorted(ZEUS_PROFILE):
            if not compute_bound(workload):
                continue
            for model in MODELS:
                miss = KNOWN_MISSES.get((gpu, workload, model))
                marks = [pytest.mark.xfail(strict=True, reason=miss)] if miss else []
                out.append(pytest.param(gpu, workload, model, marks=marks))
    return out


@pytest.mark.parametrize(("gpu", "workload", "model"), cases())
def test_shipped_physics_tracks_the_measured_sweep(gpu: str, workload: str, model: str) -> None:
    sweep = load_sweeps(gpu)[workload]
    c = compare(sweep, MODELS[model], ZEUS_PROFILE[workload])
    assert c.mae <= MAX_MAE, f"MAE {c.mae:.3f}"
    assert c.max_error <= MAX_ERROR, f"max error {c.max_error:.3f}"
    opt = abs(c.opt_cap_simulated - c.opt_cap_measured)
    assert opt <= MAX_OPT_CAP_ERROR, (
        f"energy-optimal cap {c.opt_cap_simulated:.3f} simulated, {c.opt_cap_measured:.3f} measured"
    )


def test_mean_error_is_within_the_bound_but_for_deepspeech2_on_the_a40() -> None:
    """Every row's mean error meets the bound but one workload's, and the list of misses cannot
    grow past two thirds of the rows (13 of 20 when written)."""
    rows = [
        (g, w, m) for g in SWEEP_TDP_W for w in ZEUS_PROFILE if compute_bound(w) for m in MODELS
    ]
    assert len(KNOWN_MISSES) <= 2 * len(rows) // 3
    for gpu, workload, model in rows:
        c = compare(load_sweeps(gpu)[workload], MODELS[model], ZEUS_PROFILE[workload])
        if (gpu, workload) != ("a40", "librispeech/deepspeech2"):
            assert c.mae <= MAX_MAE, (gpu, workload, model, c.mae)


@pytest.mark.parametrize("gpu", list(SWEEP_TDP_W))
@pytest.mark.parametrize("model", list(MODELS))
def test_memory_bound_training_is_flat_as_measured(gpu: str, model: str) -> None:
    sweep = load_sweeps(gpu)["movielens-1m/ncf"]
    c = compare(sweep, MODELS[model], "memory-bound")
    assert c.alpha < 0.5  # modelled as decode
    assert c.max_error <= MAX_ERROR
    # The measurement itself is flat within the bound: what the model reproduces.
    assert np.max(np.abs(sweep.throughput - 1.0)) <= MAX_ERROR


@pytest.mark.parametrize("gpu", list(SWEEP_TDP_W))
def test_one_constant_activity_does_not_fit(gpu: str) -> None:
    """Why activity follows each workload's draw: at the old constant (every job at its TDP),
    ShuffleNetV2 and DeepSpeech2, which draw ~0.6 of TDP, are off by more than the bound."""
    for workload in ("cifar100/shufflenetv2", "librispeech/deepspeech2"):
        sweep = load_sweeps(gpu)[workload]
        speed, _ = simulate(H100, sweep.cap_frac, TRAIN_COMPUTE_ACTIVITY, ALPHA_COMPUTE)
        assert float(np.mean(np.abs(speed - sweep.throughput))) > MAX_MAE


def test_a_single_power_law_would_not_fit() -> None:
    """Why the voltage knee exists: throughput = (P/Pmax)^r misses the A40 sweep by > 0.1."""
    sweep = load_sweeps("a40")["imagenet/resnet50"]
    best = min(
        float(np.max(np.abs(np.clip(sweep.cap_frac / peak, 0, 1) ** r - sweep.throughput)))
        for r in np.arange(0.3, 2.0, 0.05)
        for peak in np.arange(0.5, 1.0, 0.02)
    )
    assert best > MAX_MAE


@pytest.mark.parametrize("model", [H100, A100])
def test_activity_for_draw_reproduces_the_uncapped_draw(model: int) -> None:
    draw = np.array([0.2, 0.6, 0.89, 1.0])
    models = np.full(draw.size, model, dtype=np.int8)
    speed, power_w = simulate(model, np.ones(1), 0.0, ALPHA_COMPUTE)
    assert power_w[0] == pytest.approx(IDLE_W[model])
    for d, act in zip(draw, activity_for_draw(draw, models), strict=True):
        _, power_w = simulate(model, np.ones(1), float(act), ALPHA_COMPUTE)
        assert power_w[0] == pytest.approx(d * PEAK_W[model])
    assert speed[0] == pytest.approx(1.0)


def test_energy_optimal_cap_finds_a_vertex_between_grid_points() -> None:
    caps = np.array([0.4, 0.5, 0.6, 0.7, 0.8])
    assert energy_optimal_cap(caps, (caps - 0.57) ** 2) == pytest.approx(0.57)
    assert energy_optimal_cap(caps, caps) == pytest.approx(0.4)


def test_profiles_are_the_scenario_choices() -> None:
    assert set(get_args(TrainingProfileName)) == set(TRAINING_PROFILES)
    assert set(ZEUS_PROFILE.values()) <= set(TRAINING_PROFILES)


def _scenario(jobs: list[dict[str, object]], a100_share: float = 0.0) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "profiles",
            "duration_s": 120,
            "topology": {"gpus": 64, "a100_share": a100_share, "rack_rating_frac": 1.5},
            "physics": {"sensor_noise_frac": 0.0, "actuation_lag_s": 0.0},
            "workloads": jobs,
        }
    )


def test_scenario_jobs_carry_their_profile_activity() -> None:
    sc = _scenario(
        [
            {"kind": "training", "name": "llm", "gpus": 16},
            {"kind": "training", "name": "ft", "gpus": 16, "profile": "finetune"},
            {"kind": "training", "name": "own", "gpus": 16, "uncapped_draw_frac": 0.5},
            {"kind": "training", "name": "rec", "gpus": 16, "profile": "memory-bound"},
        ]
    )
    jobs = build_cluster(sc).workloads.training
    h100 = np.zeros(1, dtype=np.int8)
    expect = [
        TRAINING_PROFILES["llm-pretrain"].draw_frac,
        TRAINING_PROFILES["finetune"].draw_frac,
        0.5,
        TRAINING_PROFILES["memory-bound"].draw_frac,
    ]
    for job, draw in zip(jobs, expect, strict=True):
        assert job.compute_activity == pytest.approx(activity_for_draw(np.array([draw]), h100)[0])
    # Large LLM training stays near TDP, as before per-job activities.
    assert jobs[0].compute_activity == pytest.approx(TRAIN_COMPUTE_ACTIVITY, abs=0.005)
    assert jobs[3].alpha < 0.5 < jobs[0].alpha


def test_memory_bound_training_barely_slows_with_the_clock_in_the_running_simulator() -> None:
    sc = _scenario(
        [
            {"kind": "training", "name": "llm", "gpus": 32, "comm_frac": 0.0},
            {
                "kind": "training",
                "name": "rec",
                "gpus": 32,
                "comm_frac": 0.0,
                "profile": "memory-bound",
            },
        ]
    )
    cluster = build_cluster(sc)
    max_mhz = GPU_MODELS[H100].max_sm_clock_mhz
    cluster.command(cluster.cap_w, np.full(64, 0.5 * max_mhz))
    for _ in range(30):
        cluster.step()
    llm, rec = cluster.job_speed[0], cluster.job_speed[1]
    assert llm == pytest.approx(0.5**ALPHA_COMPUTE, rel=0.02)
    assert rec == pytest.approx(0.5 ** TRAINING_PROFILES["memory-bound"].alpha, rel=0.02)
    assert rec > 0.85


def test_a_job_on_a100s_gets_the_activity_of_its_draw_there() -> None:
    sc = _scenario([{"kind": "training", "name": "ft", "gpus": 64, "profile": "finetune"}], 1.0)
    job = build_cluster(sc).workloads.training[0]
    a100 = np.ones(1, dtype=np.int8)
    draw = TRAINING_PROFILES["finetune"].draw_frac
    assert job.compute_activity == pytest.approx(activity_for_draw(np.array([draw]), a100)[0])


def test_bench_prints_every_row_as_json_and_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "calibration", "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    sweeps = sum(len(load_sweeps(gpu)) for gpu in SWEEP_TDP_W)
    assert len(rows) == sweeps * len(GPU_MODELS)
    missing = {
        (r["sweep_gpu"].lower(), r["workload"], r["sim_model"][:4].lower())
        for r in rows
        if not r["ok"]
    }
    assert missing == set(KNOWN_MISSES)
    assert main(["bench", "calibration"]) == 0
    table = capsys.readouterr().out
    assert f"Rows missing a target: {len(KNOWN_MISSES)} of {len(rows)}." in table
