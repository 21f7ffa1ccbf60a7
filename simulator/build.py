"""From a validated `Scenario` to the objects a run steps: topology, workloads, cluster."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.gpu_models import GPU_MODELS, model_code, model_table
from policies.topology import Topology, standard_levels
from simulator.cluster import SimCluster
from simulator.physics import PhysicsParams, activity_for_draw
from simulator.rates import azure_trace_arrivals, diurnal_bursty
from simulator.scenario import InferenceSpec, Scenario, TopologySpec, TrainingSpec
from simulator.servers import server_type
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


def physics_params(scenario: Scenario) -> PhysicsParams:
    return PhysicsParams(**scenario.physics.model_dump())


def full_power_w(topology: Topology, psu_efficiency: float) -> float:
    """Facility draw with every GPU at its max cap: the base of `site_limit_frac`. Units: W."""
    gpus = float(topology.gpu_max_cap_w.sum())
    return (gpus + float(topology.overhead_under(len(topology.levels) - 1).sum())) / psu_efficiency


def server_models(scenario: Scenario) -> NDArray[np.int8]:
    """Model code of each server: the workload's model, else its rack's, else the topology's,
    else H100/A100 alternating by `a100_share` (as `generate_topology` lays them out)."""
    spec = scenario.topology
    n_servers = spec.gpus // spec.gpus_per_server
    ids = np.arange(n_servers)
    if spec.gpu_model is not None:
        models = np.full(n_servers, model_code(spec.gpu_model), dtype=np.int8)
    else:
        every = 0 if spec.a100_share <= 0 else max(1, round(1 / spec.a100_share))
        is_a100 = (ids % every == every - 1) if every else np.zeros(n_servers, dtype=bool)
        models = np.where(is_a100, model_code("A100-SXM4"), model_code("H100-SXM5"))
        models = models.astype(np.int8)
    if spec.rack_models:
        rack_codes = np.array([model_code(m) for m in spec.rack_models], dtype=np.int8)
        models = rack_codes[(ids // spec.servers_per_rack) % rack_codes.size]
    first = 0
    for w in scenario.workloads:
        if w.gpu_model is not None:
            lo, hi = first // spec.gpus_per_server, (first + w.gpus) // spec.gpus_per_server
            models[lo:hi] = model_code(w.gpu_model)
        first += w.gpus
    return models


def build_topology(
    spec: TopologySpec,
    psu_efficiency: float,
    *,
    site: str = "sim",
    server_model: NDArray[np.int8] | None = None,
) -> Topology:
    """A regular fleet: servers of the given models (H100/A100 by `a100_share` when none), racks
    of `servers_per_rack`, rows of `racks_per_row`. Rack ratings, row limits and the site
    contract follow the scenario's fractions of what the hardware draws flat out, or its
    explicit ratings. Each server's overhead is its type's peak non-GPU power."""
    per_server = spec.gpus_per_server
    n_servers = spec.gpus // per_server
    if server_model is None:
        server_model = server_models(Scenario(name="t", duration_s=1.0, topology=spec))
    n_racks = -(-n_servers // spec.servers_per_rack)
    n_rows = -(-n_racks // spec.racks_per_row)
    ids = np.arange(n_servers)
    gpu_server = np.repeat(ids, per_server).astype(np.int32)
    overhead = np.array(
        [server_type(GPU_MODELS[m].name).non_gpu_peak_w for m in server_model], dtype=np.float64
    )
    server_full_w = (model_table("max_cap_w")[server_model] * per_server + overhead) / (
        psu_efficiency
    )
    server_rack = (ids // spec.servers_per_rack).astype(np.int32)
    rack_row = (np.arange(n_racks) // spec.racks_per_row).astype(np.int32)
    rack_full_w = np.bincount(server_rack, weights=server_full_w, minlength=n_racks)
    if spec.rack_ratings_kw:
        rack_rating_w = _repeat(spec.rack_ratings_kw, n_racks) * 1e3
    else:
        rack_rating_w = np.ceil(rack_full_w * spec.rack_rating_frac / 100.0) * 100.0
    row_full_w = np.bincount(rack_row, weights=rack_full_w, minlength=n_rows)
    if spec.row_limits_kw:
        row_limit_w = _repeat(spec.row_limits_kw, n_rows) * 1e3
    elif spec.row_limit_frac is not None:
        row_limit_w = np.asarray(row_full_w * spec.row_limit_frac, dtype=np.float64)
    else:
        row_limit_w = np.full(n_rows, np.inf)
    site_w = float(server_full_w.sum()) * spec.site_limit_frac
    levels = standard_levels(
        site=site,
        server_rack=server_rack,
        rack_row=rack_row,
        server_limit_w=np.full(n_servers, np.inf),
        server_overhead_w=overhead,
        rack_limit_w=rack_rating_w.astype(np.float64),
        rack_derating=spec.rack_derating,
        row_limit_w=row_limit_w.astype(np.float64),
        site_limit_w=site_w,
    )
    return Topology.create(
        site=site,
        gpu_model=server_model[gpu_server],
        gpu_server=gpu_server,
        levels=levels,
        rack_level="rack",
    )


def _repeat(values: tuple[float, ...], n: int) -> NDArray[np.float64]:
    """`values` in order, repeated to length `n`."""
    return np.resize(np.asarray(values, dtype=np.float64), n)


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
            prefill, decode, requests = _service_demand(spec, n_ticks, tick, rng)
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
                    requests=requests,
                )
            )
        start += spec.gpus
    # Training jobs come first in job order; GPU ranges stay as listed.
    return WorkloadSet.create(scenario.topology.gpus, tuple(training), tuple(inference), tick)


def _service_demand(
    spec: InferenceSpec, n_ticks: int, tick_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GPU-seconds at top clock demanded per tick for prefill and decode, scaled to utilisation,
    and the requests arriving per tick (a trace's; None for the synthetic source)."""
    capacity_s = spec.gpus * tick_s
    if spec.source == "trace":
        prompt, generated, requests = azure_trace_arrivals(
            n_ticks, tick_s, time_scale=spec.trace_time_scale, path=spec.trace_file
        )
        prefill = prompt / PREFILL_TOKENS_PER_GPU_S
        decode = generated / DECODE_TOKENS_PER_GPU_S
        total = float((prefill + decode).mean()) or 1.0
        scale = spec.utilization * capacity_s / total
        return prefill * scale, decode * scale, requests
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
    return demand * spec.prefill_time_share, demand * (1.0 - spec.prefill_time_share), None


def build_cluster(
    scenario: Scenario,
    *,
    enforce_breakers: bool = True,
    site: str = "sim",
    warmup_s: float = 0.0,
) -> SimCluster:
    """The cluster of a scenario, ready to step from t = -`warmup_s`."""
    params = physics_params(scenario)
    topology = build_topology(
        scenario.topology, params.psu_efficiency, site=site, server_model=server_models(scenario)
    )
    n_ticks = int(np.ceil(scenario.duration_s / scenario.tick_s))
    workloads = build_workloads(scenario, n_ticks, warmup_s=warmup_s, gpu_model=topology.gpu_model)
    cluster = SimCluster(
        topology,
        workloads,
        params,
        tick_s=scenario.tick_s,
        seed=scenario.seed,
        enforce_breakers=enforce_breakers,
        non_gpu_idle_frac=scenario.topology.non_gpu_idle_frac,
    )
    cluster.now_s = -warmup_s
    return cluster
