"""The running simulator's physics against measured power-limit sweeps (Zeus, NSDI 2023).

Nothing is fitted here: `step_gpus` runs with the shipped parameters of the GPU each sweep was
measured on (`simulator.gpu_power.SWEEP_GPUS`: A40, V100 PCIe; idle power, clocks, voltage knee,
static-when-active share) at every cap the sweep set, each workload given the activity a
scenario would give it: from its measured uncapped draw with its profile's throughput exponent
(`bench.calibration`, which `rheostat bench calibration` prints; the knee and static share were
calibrated there by `fit_power_model`, and `--fit` reproduces them).

Per compute-bound workload the throughput ratio (time per epoch at the top limit / at the cap)
must be within 0.05 on average and 0.10 at worst, and the energy-optimal cap (the lowest cap
within 3 % of the least energy per epoch, one function for data and simulation) within 0.05 of
TDP of the measured one. Rows the model cannot meet are listed in `KNOWN_MISSES` with their
figures and run as strict expected failures: the bound stays, and a row that starts to meet it
fails the suite until it is taken off the list.
"""

from __future__ import annotations

from dataclasses import replace
from typing import get_args

import numpy as np
import orjson
import pytest

from bench.calibration import (
    ENERGY_TOLERANCE,
    MAX_ERROR,
    MAX_MAE,
    MAX_OPT_CAP_ERROR,
    ZEUS_PROFILE,
    compare,
    compute_bound,
    energy_noise,
    energy_optimal_cap,
    load_sweeps,
    simulate,
)
from controller.cli import main
from policies.gpu_models import GPU_MODELS
from simulator.build import build_cluster
from simulator.gpu_power import FLEET, SWEEP_GPUS, fleet_models
from simulator.physics import ALPHA_COMPUTE, IDLE_W, PEAK_W, activity_for_draw
from simulator.scenario import Scenario
from simulator.workloads import (
    TRAIN_COMPUTE_ACTIVITY,
    TRAINING_PROFILES,
    TrainingProfileName,
)

H100, A100 = 0, 1

#: (sweep GPU, workload) -> what misses, as measured, with the A40's shipped parameters.
#: ShuffleNetV2: throughput within bounds, but its measured energy stays within 3 % of the least
#: down to 0.565 of TDP while the curve keeps saving to 0.478. DeepSpeech2 slows under caps above
#: its average draw (0.59 of TDP): its draw is bursty, and the curve sees only the average.
#: BERT/Sentiment140 (five caps only) runs faster at half of TDP than the curve allows (0.70
#: measured, 0.55 simulated), so the curve's energy at 0.5 is higher than measured.
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("a40", "cifar100/shufflenetv2"): "opt cap 0.478 simulated vs 0.565 measured",
    ("a40", "librispeech/deepspeech2"): "MAE 0.082, max 0.234 at 0.42 TDP; opt cap 0.447 vs 0.565",
    ("a40", "sentiment140/bert_base_uncased"): "max 0.152 at 0.5 TDP; opt cap 0.638 vs 0.494",
}


def cases() -> list[object]:
    out: list[object] = []
    for gpu in SWEEP_GPUS:
        for workload in sorted(ZEUS_PROFILE):
            if not compute_bound(workload):
                continue
            miss = KNOWN_MISSES.get((gpu, workload))
            marks = [pytest.mark.xfail(strict=True, reason=miss)] if miss else []
            out.append(pytest.param(gpu, workload, marks=marks))
    return out


@pytest.mark.parametrize(("gpu", "workload"), cases())
def test_shipped_physics_tracks_the_measured_sweep(gpu: str, workload: str) -> None:
    sweep = load_sweeps(gpu)[workload]
    c = compare(sweep, SWEEP_GPUS[gpu], ZEUS_PROFILE[workload])
    assert c.mae <= MAX_MAE, f"MAE {c.mae:.3f}"
    assert c.max_error <= MAX_ERROR, f"max error {c.max_error:.3f}"
    opt = abs(c.opt_cap_simulated - c.opt_cap_measured)
    assert opt <= MAX_OPT_CAP_ERROR, (
        f"energy-optimal cap {c.opt_cap_simulated:.3f} simulated, {c.opt_cap_measured:.3f} measured"
    )


def test_mean_error_is_within_the_bound_but_for_deepspeech2_on_the_a40() -> None:
    """Every matching-GPU row's mean error meets the bound but one workload's, and the list of
    misses cannot grow past a third of the rows (3 of 10 when written)."""
    rows = [(g, w) for g in SWEEP_GPUS for w in ZEUS_PROFILE if compute_bound(w)]
    assert len(KNOWN_MISSES) <= len(rows) // 3
    for gpu, workload in rows:
        c = compare(load_sweeps(gpu)[workload], SWEEP_GPUS[gpu], ZEUS_PROFILE[workload])
        if (gpu, workload) != ("a40", "librispeech/deepspeech2"):
            assert c.mae <= MAX_MAE, (gpu, workload, c.mae)


def test_the_sweep_gpus_own_parameters_beat_the_fleets_on_the_a40() -> None:
    """Why each sweep runs its own GPU's parameters: with the H100 or A100 curve (no static share,
    knee 0.85) the A40's ResNet-50 energy optimum lands near the knee clock, ~0.09-0.10 of TDP
    below the measured one, and its throughput at half of TDP 0.13-0.16 too high."""
    sweep = load_sweeps("a40")["imagenet/resnet50"]
    own = compare(sweep, SWEEP_GPUS["a40"], "vision")
    assert abs(own.opt_cap_simulated - own.opt_cap_measured) <= MAX_OPT_CAP_ERROR
    assert own.max_error <= MAX_ERROR
    for spec in fleet_models():
        other = compare(sweep, spec, "vision")
        assert other.opt_cap_measured - other.opt_cap_simulated > MAX_OPT_CAP_ERROR
        assert other.max_error > MAX_ERROR


def test_the_static_share_raises_the_energy_optimum_above_the_knee() -> None:
    """A busy GPU's clock-independent power makes running slower cost more energy per unit of
    work, so the energy-optimal cap rises with the static share (A40 ResNet-50)."""
    sweep = load_sweeps("a40")["imagenet/resnet50"]
    spec = SWEEP_GPUS["a40"]
    caps = [
        compare(sweep, replace(spec, static_active_frac=s), "vision").opt_cap_simulated
        for s in (0.0, spec.static_active_frac, 0.2)
    ]
    assert caps[0] < caps[1] < caps[2]


def test_the_tolerance_is_about_twice_the_measurement_noise() -> None:
    for gpu in SWEEP_GPUS:
        assert 1.5 * energy_noise(gpu) <= ENERGY_TOLERANCE <= 2.5 * energy_noise(gpu)


@pytest.mark.parametrize("gpu", list(SWEEP_GPUS))
@pytest.mark.parametrize("model", ["own", *FLEET])
def test_memory_bound_training_is_flat_as_measured(gpu: str, model: str) -> None:
    sweep = load_sweeps(gpu)["movielens-1m/ncf"]
    spec = SWEEP_GPUS[gpu] if model == "own" else FLEET[model]
    c = compare(sweep, spec, "memory-bound")
    assert c.alpha < 0.5  # modelled as decode
    assert c.max_error <= MAX_ERROR
    # The measurement itself is flat within the bound: what the model reproduces.
    assert np.max(np.abs(sweep.throughput - 1.0)) <= MAX_ERROR


@pytest.mark.parametrize("gpu", list(SWEEP_GPUS))
def test_one_constant_activity_does_not_fit(gpu: str) -> None:
    """Why activity follows each workload's draw: at the old constant (every job at its TDP),
    ShuffleNetV2 and DeepSpeech2, which draw ~0.6 of TDP, are off by more than the bound."""
    for workload in ("cifar100/shufflenetv2", "librispeech/deepspeech2"):
        sweep = load_sweeps(gpu)[workload]
        speed, _ = simulate(SWEEP_GPUS[gpu], sweep.cap_frac, TRAIN_COMPUTE_ACTIVITY, ALPHA_COMPUTE)
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
    spec = fleet_models()[model]
    speed, power_w = simulate(spec, np.ones(1), 0.0, ALPHA_COMPUTE)
    assert power_w[0] == pytest.approx(IDLE_W[model])
    for d, act in zip(draw, activity_for_draw(draw, models), strict=True):
        _, power_w = simulate(spec, np.ones(1), float(act), ALPHA_COMPUTE)
        assert power_w[0] == pytest.approx(d * PEAK_W[model])
    assert speed[0] == pytest.approx(1.0)


@pytest.mark.parametrize("gpu", list(SWEEP_GPUS))
def test_a_sweep_gpu_draws_the_measured_draw_uncapped(gpu: str) -> None:
    """The static share moves power under a cap, not the uncapped draw the activity is set by."""
    spec = SWEEP_GPUS[gpu]
    for workload, sweep in load_sweeps(gpu).items():
        c = compare(sweep, spec, ZEUS_PROFILE[workload])
        _, power_w = simulate(spec, np.ones(1), c.activity, c.alpha)
        assert power_w[0] == pytest.approx(sweep.draw_frac * spec.tdp_w)


def test_energy_optimal_cap_is_the_lowest_cap_within_the_tolerance() -> None:
    caps = np.array([0.4, 0.5, 0.6, 0.7, 0.8])
    # Least at 0.6 (1.0); 3 % above it (1.03) is crossed halfway between 0.5 (1.06) and 0.6.
    energy = np.array([1.2, 1.06, 1.0, 1.01, 1.1])
    assert energy_optimal_cap(caps, energy) == pytest.approx(0.55)
    # A flat bottom: the lowest cap within noise of the least, not the noisy lowest point.
    flat = np.array([1.2, 1.01, 1.02, 1.0, 1.1])
    assert energy_optimal_cap(caps, flat) == pytest.approx(0.4 + 0.1 * (1.2 - 1.03) / (1.2 - 1.01))
    assert energy_optimal_cap(caps, caps) == pytest.approx(0.4)
    assert energy_optimal_cap(caps, energy, tolerance=0.0) == pytest.approx(0.6)


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
    sweeps = sum(len(load_sweeps(gpu)) for gpu in SWEEP_GPUS)
    assert len(rows) == sweeps * (1 + len(GPU_MODELS))
    targets = [r for r in rows if r["role"] == "target"]
    assert {r["sim_model"] for r in targets} == {s.name for s in SWEEP_GPUS.values()}
    missing = {(r["sweep_gpu"].lower(), r["workload"]) for r in targets if not r["ok"]}
    assert missing == set(KNOWN_MISSES)
    assert main(["bench", "calibration"]) == 0
    table = capsys.readouterr().out
    assert f"Rows missing a target: {len(KNOWN_MISSES)} of {len(targets)}." in table
