"""From a validated `Scenario` to the objects a run steps: topology, workloads, cluster."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.gpu_models import model_table
from policies.topology import Topology, generate_topology
from simulator.cluster import SimCluster
from simulator.physics import PhysicsParams, activity_for_draw
from simulator.rates import azure_trace_tokens, diurnal_bursty
from simulator.scenario import InferenceSpec, Scenario, TopologySpec, TrainingSpec
from simulator.workloads import (
    DECODE_DRAW_FRAC,
    DECODE_TOKENS_PER_GPU_S,
    PREFILL_DRAW_FRAC,
    PREFILL_TOKENS_PER_GPU_S,
    TRAINING_PROFILES,
    InferenceService,
    TrainingJob,
    WorkloadSet,
)

#: Non-GPU server power, as in `generate_topology` (DGX H100: 2.8 kW; an A100 HGX: 1.5 kW).
H100_SERVER_OVERHEAD_W = 2800.0
A100_SERVER_OVERHEAD_W = 1500.0


def physics_params(scenario: Scenario) -> PhysicsParams:
    return PhysicsParams(**scenario.physics.model_dump())


def full_power_w(topology: Topology, psu_efficiency: float) -> float:
    """Facility draw with every GPU at its max cap: the base of `site_limit_frac`. Units: W."""
    gpus = float(topology.gpu_max_cap_w.sum())
    return (gpus + float(topology.levels[0].overhead_w.sum())) / psu_efficiency


def build_topology(spec: TopologySpec, psu_efficiency: float, *, site: str = "sim") -> Topology:
    """A regular fleet whose rack ratings and site contract follow the scenario's fractions."""
    per_server = spec.gpus_per_server
    n_servers = spec.gpus // per_server
    probe = generate_topology(
        spec.gpus,
        site=site,
        gpus_per_server=per_server,
        servers_per_rack=spec.servers_per_rack,
        racks_per_row=spec.racks_per_row,
        a100_share=spec.a100_share,
    )
    server_model = probe.gpu_model[np.arange(n_servers) * per_server]
    server_full_w = (
        model_table("max_cap_w")[server_model] * per_server + probe.levels[0].overhead_w
    ) / psu_efficiency
    rack_full_w = np.bincount(probe.levels[0].parent, weights=server_full_w)
    rack_rating_w = np.ceil(rack_full_w * spec.rack_rating_frac / 100.0) * 100.0
    site_w = full_power_w(probe, psu_efficiency) * spec.site_limit_frac
    topo = generate_topology(
        spec.gpus,
        site=site,
        gpus_per_server=per_server,
        servers_per_rack=spec.servers_per_rack,
        racks_per_row=spec.racks_per_row,
        a100_share=spec.a100_share,
        rack_derating=spec.rack_derating,
        site_limit_w=site_w,
        row_limit_w=float("inf"),
    )
    topo.racks.limit_w[:] = rack_rating_w
    return topo


def build_workloads(
    scenario: Scenario,
    n_ticks: int,
    *,
    warmup_s: float = 0.0,
    gpu_model: NDArray[np.int8] | None = None,
) -> WorkloadSet:
    """Jobs take contiguous GPU ranges in the order listed; the rest of the fleet idles.

    Jobs that start at 0 are already running when a warm-up begins (at -`warmup_s`). Each job's
    activities follow from its uncapped draw on its GPUs' models (`gpu_model`, per GPU; the
    H100 when not given), averaged over the job's GPUs.
    """
    models = gpu_model if gpu_model is not None else np.zeros(scenario.topology.gpus, dtype=np.int8)

    def activity(draw_frac: float, first: int, n: int) -> float:
        return float(activity_for_draw(np.full(n, draw_frac), models[first : first + n]).mean())

    rng = np.random.default_rng(scenario.seed)
    training: list[TrainingJob] = []
    inference: list[InferenceService] = []
    start = 0
    tick = scenario.tick_s
    for spec in scenario.workloads:
        end_s = spec.end_s if spec.end_s is not None else float("inf")
        if isinstance(spec, TrainingSpec):
            profile = TRAINING_PROFILES[spec.profile]
            training.append(
                TrainingJob(
                    name=spec.name,
                    tier=spec.tier,
                    start_gpu=start,
                    n_gpus=spec.gpus,
                    start_s=spec.start_s if spec.start_s > 0 else -warmup_s,
                    end_s=end_s,
                    iteration_s=spec.iteration_s,
                    comm_frac=spec.comm_frac,
                    checkpoint_every_s=spec.checkpoint_every_s,
                    checkpoint_s=spec.checkpoint_s,
                    compute_activity=activity(
                        spec.uncapped_draw_frac or profile.draw_frac, start, spec.gpus
                    ),
                    alpha=profile.alpha,
                )
            )
        else:
            prefill, decode = _service_demand(spec, n_ticks, tick, rng)
            inference.append(
                InferenceService(
                    name=spec.name,
                    tier=spec.tier,
                    start_gpu=start,
                    n_gpus=spec.gpus,
                    start_s=spec.start_s if spec.start_s > 0 else -warmup_s,
                    end_s=end_s,
                    prefill_gpu_s=prefill,
                    decode_gpu_s=decode,
                    prefill_activity=activity(
                        spec.prefill_draw_frac or PREFILL_DRAW_FRAC, start, spec.gpus
                    ),
                    decode_activity=activity(
                        spec.decode_draw_frac or DECODE_DRAW_FRAC, start, spec.gpus
                    ),
                )
            )
        start += spec.gpus
    # Training jobs come first in job order; GPU ranges stay as listed.
    return WorkloadSet.create(scenario.topology.gpus, tuple(training), tuple(inference), tick)


def _service_demand(
    spec: InferenceSpec, n_ticks: int, tick_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """GPU-seconds at top clock demanded per tick for prefill and decode, scaled to utilisation."""
    capacity_s = spec.gpus * tick_s
    if spec.source == "trace":
        prompt, generated = azure_trace_tokens(n_ticks, tick_s, time_scale=spec.trace_time_scale)
        prefill = prompt / PREFILL_TOKENS_PER_GPU_S
        decode = generated / DECODE_TOKENS_PER_GPU_S
        total = float((prefill + decode).mean()) or 1.0
        scale = spec.utilization * capacity_s / total
        return prefill * scale, decode * scale
    shape = diurnal_bursty(
        n_ticks,
        tick_s,
        rng=rng,
        start_hour=spec.start_hour,
        peak_to_trough=spec.peak_to_trough,
        bursts_per_hour=spec.bursts_per_hour,
        burst_factor=spec.burst_factor,
    )
    demand = shape * spec.utilization * capacity_s
    return demand * spec.prefill_time_share, demand * (1.0 - spec.prefill_time_share)


def build_cluster(
    scenario: Scenario,
    *,
    enforce_breakers: bool = True,
    site: str = "sim",
    warmup_s: float = 0.0,
) -> SimCluster:
    """The cluster of a scenario, ready to step from t = -`warmup_s`."""
    params = physics_params(scenario)
    topology = build_topology(scenario.topology, params.psu_efficiency, site=site)
    n_ticks = int(np.ceil(scenario.duration_s / scenario.tick_s))
    workloads = build_workloads(scenario, n_ticks, warmup_s=warmup_s, gpu_model=topology.gpu_model)
    cluster = SimCluster(
        topology,
        workloads,
        params,
        tick_s=scenario.tick_s,
        seed=scenario.seed,
        enforce_breakers=enforce_breakers,
    )
    cluster.now_s = -warmup_s
    return cluster
