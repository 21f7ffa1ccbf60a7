"""The daemon's features, built from its policy: their hooks, and the table that feeds them.

Each enabled section of the policy file becomes a hook that owns the feature's I/O (topics,
files, metrics) around an algorithm of the decision core; `build_hooks` makes them once per
daemon (a section's changes take effect at the next restart), `subscription_table` gives each
its topics and handler, and `controller.stages.build_stages` turns them into the tick's stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller import wire
from controller.carbon import CarbonHook
from controller.facility import FacilityHook
from controller.grid.hook import GridHook
from controller.jobs import SyncJobs
from controller.nodes import NodeAssembler
from controller.policy_file import Policy
from controller.stages import Hooks
from controller.subscriptions import Handler, SubscriptionTable
from controller.wire import MessageRejections


def build_hooks(
    policy: Policy,
    *,
    policy_path: Path | None,
    clock: Callable[[], float],
    rejections: MessageRejections,
) -> Hooks:
    """Every enabled feature's hook; the synchronous jobs are always listened for."""
    config, base_dir = policy.config, None if policy_path is None else policy_path.parent
    grid = None
    dr = config.demand_response
    if dr is not None and dr.enabled:
        grid = GridHook(
            dr,
            site=policy.site,
            clock=clock,
            base_dir=base_dir,
            tick_s=config.control.tick_period_s,
            psu_efficiency=config.limits.psu_efficiency,
        )
        grid.topic.rejections = rejections
    facility = None
    if config.facility is not None:
        facility = FacilityHook(
            section=config.facility,
            site=policy.site,
            base_dir=base_dir,
            psu_efficiency=config.limits.psu_efficiency,
            fallback_contract_w=config.limits.contract_w,
        )
    carbon = None
    if config.carbon is not None and config.carbon.enabled:
        carbon = CarbonHook(
            section=config.carbon, site=policy.site, topology=policy.topology, base_dir=base_dir
        )
        if grid is not None and config.carbon.signal == "price":
            grid.price_sink = carbon.take_forecast  # OpenADR prices become the forecast
    jobs = SyncJobs(
        site=policy.site,
        topology=policy.topology,
        max_jobs=config.telemetry.max_jobs,
        rejections=rejections,
    )
    return Hooks(jobs=jobs, grid=grid, facility=facility, carbon=carbon)


def subscription_table(
    hooks: Hooks,
    *,
    site: str,
    clock: Callable[[], float],
    nodes: NodeAssembler | None,
    telemetry: Handler,
    telemetry_here: bool,
) -> SubscriptionTable:
    """Each feature's topics and handler, in the order handlers see a message.

    The synchronous jobs see job messages first and pass them on to the carbon plan, which
    takes flexible jobs from the same retained topics; telemetry goes last, to ingest
    (`telemetry_here` False: the ingest workers subscribe to it themselves).
    """
    table = SubscriptionTable()
    jobs, carbon, facility, grid = hooks.jobs, hooks.carbon, hooks.facility, hooks.grid
    forward = carbon is not None

    def job_message(topic: str, payload: bytes) -> bool:
        return jobs.handle(topic, payload) and not forward

    table.add("jobs", job_message, filters=jobs.topics, qos=1)
    if carbon is not None:

        def carbon_message(topic: str, payload: bytes) -> bool:
            return carbon.handle(topic, payload, now_s=clock())

        table.add("carbon", carbon_message, filters=carbon.topics, qos=1)
    if facility is not None:

        def meter_message(topic: str, payload: bytes) -> bool:
            return facility.handle(topic, payload, now_s=clock())

        table.add("facility", meter_message, filters=facility.topics, qos=0)
    if grid is not None:
        table.add("grid", grid.handle, filters=grid.topics, qos=1)
    if nodes is not None:
        table.add("nodes", nodes.handle, filters=(wire.node_telemetry_filter(site),), qos=0)
    table.add(
        "telemetry",
        telemetry,
        filters=(wire.telemetry_filter(site),) if telemetry_here else (),
        qos=0,
    )
    return table
