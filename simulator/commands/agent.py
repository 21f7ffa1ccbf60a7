"""`rheostat agent --config FILE`: the node agent on a GPU server (see `agent/`).

The backend is chosen by name here, the one place that may import both the NVML bindings and the
simulator's GPU backend. It lives with the simulator's commands because the simulator's layer is
the lowest that may import both; the `agent` package itself never imports the simulator, and the
daemon's package imports neither.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agent.backend import GpuBackend
from agent.config import AgentConfig, load_agent_config
from agent.node import ClassSource
from controller import extras
from controller.logs import configure_logging


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("agent", help="run the node agent on a GPU server")
    parser.add_argument("--config", type=Path, help="agent file (YAML); defaults without one")
    parser.add_argument("--backend", choices=("nvml", "sim"), help="overrides the file's backend")
    parser.add_argument("--once", action="store_true", help="print one reading and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument(
        "--read-only", action="store_true", help="read and publish, never set a limit or clock"
    )
    parser.set_defaults(func=_run)


def make_backend(config: AgentConfig) -> tuple[GpuBackend, ClassSource | None]:
    if config.backend == "nvml":
        from agent.nvml import NvmlBackend  # noqa: PLC0415 - only needed on GPU servers

        extras.check("pynvml", "the agent's nvml backend")
        if config.pods is not None:
            extras.check("grpc", "pods: in the agent file (the kubelet's PodResources API)")

        backend = NvmlBackend(
            config.gpus, min_call_interval_s=config.min_call_interval_s, read_only=config.read_only
        )
        classes: ClassSource | None = None
        if config.pods is not None:
            from agent.k8s_pods import PodClasses  # noqa: PLC0415 - Kubernetes nodes only

            classes = PodClasses(
                backend.identity().uuid,
                node=config.node,
                default=config.workload_class,
                refresh_s=config.pods.refresh_s,
                socket_path=config.pods.socket,
                api_url=config.pods.api_url,
            )
        return backend, classes
    from simulator.gpu_backend import SimGpuBackend  # noqa: PLC0415 - the sim backend only

    sim = SimGpuBackend.standalone(gpus=config.sim_gpus)
    return sim, sim.workload_classes


def _run(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    updates: dict[str, object] = {}
    if args.backend is not None:
        updates["backend"] = args.backend
    if args.read_only or args.once:
        updates["read_only"] = True
    config = config.model_copy(update=updates)
    configure_logging("auto", "info")
    backend, classes = make_backend(config)
    from agent.main import print_once, serve_agent  # noqa: PLC0415 - keeps --help light

    if args.once:
        print_once(backend, config, as_json=args.json)
        return 0
    asyncio.run(serve_agent(config, backend, classes))
    return 0
