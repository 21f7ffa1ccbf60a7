"""Workloads as per-job state broadcast to GPUs: synchronous training, LLM inference, idle.

Each job owns a contiguous range of GPUs (in topology order), so per-job reductions over its GPUs
are one `np.minimum.reduceat` / `np.add.reduceat` and per-job values reach GPUs by one fancy index.
Python loops run over jobs only, never over GPUs, and jobs are few.

Work is accounted per job (training iterations, inference tokens served) from the speed the
physics actually delivered, so throughput lost to caps is measured, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from simulator.physics import ALPHA_COMPUTE, ALPHA_DECODE
from simulator.queues import ServiceQueue, weighted_quantile

FloatArray = NDArray[np.float64]

#: Workload-class names as sent in telemetry; index = class code.
CLASSES: tuple[str, ...] = ("idle", "training", "inference")
IDLE, TRAINING, INFERENCE = 0, 1, 2

#: SM activity of a GPU in a training step's communication phase and in a checkpoint pause
#: (fractions of full dynamic power at a given clock; *estimates*: large dips during all-reduce).
TRAIN_COMM_ACTIVITY = 0.30
CHECKPOINT_ACTIVITY = 0.08
#: Compute-phase activity of large LLM pre-training, the default training profile: such jobs
#: draw their TDP (DGX H100: GPUs ~5.6 kW of 8, i.e. ~700 W each, in training).
TRAIN_COMPUTE_ACTIVITY = 0.97
#: Activity of prefill (compute-bound) and decode (memory-bound) on the H100 reference; scenarios
#: set them per service from the phase's uncapped draw (`PREFILL_DRAW_FRAC`, `DECODE_DRAW_FRAC`).
PREFILL_ACTIVITY = 0.92
DECODE_ACTIVITY = 0.22
#: Uncapped draw of prefill and decode as fractions of TDP. Prefill is compute-bound like training
#: (*estimate*: the H100 activity 0.92); decode draws 137-300 W of 700 W on H200 (arXiv
#: 2605.11999): the midpoint, 218 W. See simulator/data/CALIBRATION.md.
PREFILL_DRAW_FRAC = 0.93
DECODE_DRAW_FRAC = 0.31

TrainingProfileName = Literal[
    "llm-pretrain", "finetune", "vision", "small-cnn", "speech", "memory-bound"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingProfile:
    """What a kind of training job draws uncapped and how its speed follows the clock.

    `draw_frac` is the compute phase's uncapped draw as a fraction of TDP (the activity follows
    from it per GPU model, `simulator.physics.activity_for_draw`); `alpha` is the throughput
    exponent: compute-bound work slows with the clock, memory-bound work (like decode) barely.
    Sources per profile in simulator/data/CALIBRATION.md.
    """

    draw_frac: float
    alpha: float


#: Defaults per kind of training job. The Zeus NSDI'23 sweeps (`simulator/data/zeus-nsdi23`,
#: median uncapped draw over batch sizes, A40 / V100) give all but the first.
TRAINING_PROFILES: dict[TrainingProfileName, TrainingProfile] = {
    # Large LLM pre-training draws its TDP in the compute phase (DGX H100 measurements).
    "llm-pretrain": TrainingProfile(draw_frac=0.974, alpha=ALPHA_COMPUTE),
    # Transformer fine-tuning, BERT-base on SQuAD / Sentiment140: 0.88-0.91 of TDP.
    "finetune": TrainingProfile(draw_frac=0.89, alpha=ALPHA_COMPUTE),
    # ResNet-50 on ImageNet: 0.80 (A40), 0.89 (V100).
    "vision": TrainingProfile(draw_frac=0.85, alpha=ALPHA_COMPUTE),
    # ShuffleNetV2 on CIFAR-100: 0.63 (A40), 0.60 (V100).
    "small-cnn": TrainingProfile(draw_frac=0.61, alpha=ALPHA_COMPUTE),
    # DeepSpeech2 on LibriSpeech: 0.59 (A40), 0.68 (V100).
    "speech": TrainingProfile(draw_frac=0.64, alpha=ALPHA_COMPUTE),
    # NCF on MovieLens-1M: 0.29 (A40), 0.15 (V100), flat under every cap: memory-bound, as decode.
    "memory-bound": TrainingProfile(draw_frac=0.22, alpha=ALPHA_DECODE),
}
#: Job speed below which a job is stalled (a tripped rack holds one of its GPUs dark).
STALLED_SPEED = 1e-3
#: Tokens one H100 processes per second at the top clock, batched (*estimates*, order of magnitude
#: of published serving benchmarks): prompt tokens are cheap, generated tokens dear.
PREFILL_TOKENS_PER_GPU_S = 10_000.0
DECODE_TOKENS_PER_GPU_S = 500.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingJob:
    """A synchronous job: every step is compute then communication; the slowest GPU gates it."""

    name: str
    tier: int
    start_gpu: int
    n_gpus: int
    start_s: float
    end_s: float
    iteration_s: float
    comm_frac: float
    checkpoint_every_s: float
    checkpoint_s: float
    #: Compute-phase activity (from the job's uncapped draw) and throughput exponent.
    compute_activity: float = TRAIN_COMPUTE_ACTIVITY
    alpha: float = ALPHA_COMPUTE


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceService:
    """An LLM service fed by per-tick token arrivals (prefill and decode), in GPU-seconds at the
    top clock: `prefill_gpu_s[t]` is the GPU time the tick's prompts need at full speed."""

    name: str
    tier: int
    start_gpu: int
    n_gpus: int
    start_s: float
    end_s: float
    prefill_gpu_s: FloatArray
    decode_gpu_s: FloatArray
    prefill_tokens_per_gpu_s: float = PREFILL_TOKENS_PER_GPU_S
    decode_tokens_per_gpu_s: float = DECODE_TOKENS_PER_GPU_S
    prefill_activity: float = PREFILL_ACTIVITY
    decode_activity: float = DECODE_ACTIVITY
    #: Requests arriving per tick (a trace's); None weighs each tick's latency by its work.
    requests: FloatArray | None = None


@dataclass(eq=False, kw_only=True)
class WorkloadSet:
    """All jobs of a run and their evolving state. Build with `WorkloadSet.create`."""

    n_gpus: int
    training: tuple[TrainingJob, ...]
    inference: tuple[InferenceService, ...]
    tick_s: float
    gpu_job: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    seg_starts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    seg_job: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    job_tier: NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))
    job_class: NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))
    job_n_gpus: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: Throughput exponent of each training job (memory-bound ones barely slow with the clock).
    train_alpha: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: Progress: iterations (training, fractional) and token-equivalents (inference).
    work: FloatArray = field(default_factory=lambda: np.zeros(0))
    train_phase: FloatArray = field(default_factory=lambda: np.zeros(0))
    backlog_gpu_s: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: Share of each job's GPUs with power (a tripped rack takes its GPUs away).
    job_powered_frac: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: Each service's queue of arrivals, prefill and decode served at their own speeds.
    queues: list[ServiceQueue] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        n_gpus: int,
        training: tuple[TrainingJob, ...],
        inference: tuple[InferenceService, ...],
        tick_s: float,
    ) -> WorkloadSet:
        """Index arrays: job k = training jobs, then services; the last job is the idle pool."""
        jobs: list[TrainingJob | InferenceService] = [*training, *inference]
        n_jobs = len(jobs) + 1
        gpu_job = np.full(n_gpus, n_jobs - 1, dtype=np.int32)
        for k, job in enumerate(jobs):
            gpu_job[job.start_gpu : job.start_gpu + job.n_gpus] = k
        change = np.flatnonzero(np.diff(gpu_job)) + 1
        seg_starts = np.concatenate(([0], change)).astype(np.int64)
        tiers = [j.tier for j in jobs] + [3]
        classes = [TRAINING] * len(training) + [INFERENCE] * len(inference) + [IDLE]
        return cls(
            n_gpus=n_gpus,
            training=training,
            inference=inference,
            tick_s=tick_s,
            gpu_job=gpu_job,
            seg_starts=seg_starts,
            seg_job=gpu_job[seg_starts],
            job_tier=np.array(tiers, dtype=np.int8),
            job_class=np.array(classes, dtype=np.int16),
            job_n_gpus=np.bincount(gpu_job, minlength=n_jobs).astype(np.float64),
            train_alpha=np.array([j.alpha for j in training], dtype=np.float64),
            work=np.zeros(n_jobs),
            train_phase=np.zeros(len(training)),
            backlog_gpu_s=np.zeros(len(inference)),
            job_powered_frac=np.ones(n_jobs),
            queues=[ServiceQueue() for _ in inference],
        )

    @property
    def n_jobs(self) -> int:
        return int(self.job_tier.size)

    def set_powered(self, gpu_powered: NDArray[np.bool_]) -> None:
        """Record which GPUs have power (after a breaker trip)."""
        on = np.bincount(
            self.gpu_job, weights=gpu_powered.astype(np.float64), minlength=self.n_jobs
        )
        self.job_powered_frac = on / np.maximum(self.job_n_gpus, 1.0)

    def gpu_tier(self) -> NDArray[np.int8]:
        return self.job_tier[self.gpu_job]

    def sync_job(self) -> NDArray[np.int32]:
        """Per GPU, its training job's index, -1 elsewhere: what a scheduler tells a controller."""
        n_train = len(self.training)
        return np.where(self.gpu_job < n_train, self.gpu_job, -1).astype(np.int32)

    def gpu_class(self) -> NDArray[np.int16]:
        return self.job_class[self.gpu_job]

    def job_names(self) -> list[str]:
        return [j.name for j in self.training] + [s.name for s in self.inference] + ["idle"]

    def demand(
        self, now_s: float, job_speed: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per-job activity, throughput exponent and memory activity for this tick.

        Also advances each job's progress by what `job_speed` (the slowest GPU's speed for a
        synchronous job, the mean for a service; measured over the previous tick) allowed.
        """
        n = self.n_jobs
        activity = np.zeros(n)
        alpha = np.full(n, ALPHA_COMPUTE)
        mem = np.zeros(n)
        dt = self.tick_s
        for k, job in enumerate(self.training):
            if not job.start_s <= now_s < job.end_s:
                continue
            since = now_s - job.start_s
            if job.checkpoint_every_s > 0 and (since % job.checkpoint_every_s) >= (
                job.checkpoint_every_s - job.checkpoint_s
            ):
                activity[k] = CHECKPOINT_ACTIVITY
                mem[k] = 0.1
                continue
            if job_speed[k] < STALLED_SPEED:
                continue  # a GPU of the job is dark: the collective waits, nothing progresses
            compute_s = (1.0 - job.comm_frac) / float(job_speed[k])
            step_s = job.iteration_s * (compute_s + job.comm_frac)
            # Phase counts iterations; compute fills the first share of each at the slowed rate.
            share = compute_s / (compute_s + job.comm_frac)
            p0 = self.train_phase[k]
            p1 = p0 + dt / step_s
            busy_time = (_compute_cum(p1, share) - _compute_cum(p0, share)) / (p1 - p0)
            activity[k] = job.compute_activity * busy_time + TRAIN_COMM_ACTIVITY * (1.0 - busy_time)
            alpha[k] = job.alpha
            mem[k] = 0.45 * busy_time + 0.2 * (1.0 - busy_time)
            self.train_phase[k] = p1
            self.work[k] = p1
        base = len(self.training)
        for i, svc in enumerate(self.inference):
            k = base + i
            if not svc.start_s <= now_s < svc.end_s:
                continue
            idx = min(max(int(now_s / dt), 0), svc.prefill_gpu_s.size - 1)
            queue = self.queues[i]
            arr_p, arr_d = float(svc.prefill_gpu_s[idx]), float(svc.decode_gpu_s[idx])
            weight = arr_p + arr_d if svc.requests is None else float(svc.requests[idx])
            queue.push(now_s, arr_p, arr_d, weight)
            x = float(job_speed[k])
            if x < STALLED_SPEED:
                self.backlog_gpu_s[i] = sum(queue.pending())
                continue
            prefill_speed = x**ALPHA_COMPUTE
            decode_speed = x**ALPHA_DECODE
            # Prefill first, then decode, each at its own speed and credited at its own rate:
            # prompt work that waits is still prompt work when it is served.
            capacity_s = svc.n_gpus * dt * float(self.job_powered_frac[k])
            served_p = queue.serve_prefill(capacity_s * prefill_speed)
            time_p = min(served_p / prefill_speed, capacity_s)
            served_d = queue.serve_decode((capacity_s - time_p) * decode_speed, now_s)
            time_d = min(served_d / decode_speed, capacity_s - time_p)
            self.backlog_gpu_s[i] = sum(queue.pending())
            busy_p, busy_d = time_p / capacity_s, time_d / capacity_s
            activity[k] = svc.prefill_activity * busy_p + svc.decode_activity * busy_d
            mem[k] = 0.3 * busy_p + 0.85 * busy_d
            if busy_p + busy_d > 0:
                alpha[k] = (busy_p * ALPHA_COMPUTE + busy_d * ALPHA_DECODE) / (busy_p + busy_d)
            self.work[k] += (
                served_p * svc.prefill_tokens_per_gpu_s + served_d * svc.decode_tokens_per_gpu_s
            )
        return activity, alpha, mem

    def latency_by_tier(self, now_s: float) -> dict[int, dict[str, float]]:
        """Per Flex tier with services: queueing delay p50/p99 (s) of requests that arrived at
        t >= 0, unfinished ones counted at their wait so far, and the weight measured."""
        out: dict[int, dict[str, float]] = {}
        for tier in sorted({s.tier for s in self.inference}):
            values: list[float] = []
            weights: list[float] = []
            for svc, queue in zip(self.inference, self.queues, strict=True):
                if svc.tier == tier:
                    d, w = queue.delays(now_s)
                    values += d
                    weights += w
            out[tier] = {
                "p50": weighted_quantile(values, weights, 0.50),
                "p99": weighted_quantile(values, weights, 0.99),
                "weight": float(sum(weights)),
            }
        return out

    def job_speed(self, gpu_clock_frac: FloatArray) -> FloatArray:
        """Per-job speed from per-GPU clocks (0 for a dark GPU).

        A synchronous job runs at its slowest GPU's pace: (min clock)^alpha with the job's own
        exponent, since x^alpha is monotonic. A service spreads load over its GPUs, so its mean
        clock sets its capacity.
        """
        seg_min = np.minimum.reduceat(gpu_clock_frac, self.seg_starts)
        clock_min = np.ones(self.n_jobs)
        np.minimum.at(clock_min, self.seg_job, seg_min)
        seg_sum = np.add.reduceat(gpu_clock_frac, self.seg_starts)
        clock_sum = np.bincount(self.seg_job, weights=seg_sum, minlength=self.n_jobs)
        powered = np.maximum(self.job_n_gpus * self.job_powered_frac, 1.0)
        mean_clock = clock_sum / powered  # over the GPUs that have power
        n_train = len(self.training)
        speed = mean_clock.astype(np.float64, copy=True)
        speed[:n_train] = clock_min[:n_train] ** self.train_alpha
        return speed


def _compute_cum(phase: float, compute: float) -> float:
    """Iterations' worth of compute time completed by `phase` (compute comes first in a step)."""
    whole = np.floor(phase)
    return float(whole * compute + min(phase - whole, compute))
