"""Reading a policy file: YAML with line numbers, pydantic validation, the topology it describes.

ruamel's round-trip loader keeps each key's position, so every pydantic error is reported with
its file, 1-based line and dotted field path, all at once (`ConfigErrors`), rather than one per
run. The result, `Policy`, is what the daemon holds and swaps atomically on reload.

Every rule lives here, once: `parse_policy` applies the rules about one file (schema, topology,
safe caps that fit), and `check_reload` the rules about replacing a running policy with another
(what only a restart may change). `rheostat check` and the daemon's reload call the same two
functions, so a file that one accepts the other cannot refuse.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from controller.config import InlineTopology, PolicyFile, RowSpec, TopologySection
from controller.inventory import Inventory, apply_model_overrides, check_inventory, load_inventory
from controller.settings import blame_environment, environment_overrides, merge
from policies.errors import ConfigError, ConfigErrors, TopologyError
from policies.facility import it_budget
from policies.gpu_models import model_code
from policies.safe_caps import configured_safe_caps, derive_safe_caps, safe_cap_overruns
from policies.stages import dc_w
from policies.topology import Level, Topology, dc_side, generate_topology

DEFAULT_POLICY_RESOURCE = "default_policy.yaml"


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Policy:
    """A validated policy file and the topology it describes; immutable, swapped whole on reload.

    `safe_cap_w` is each GPU's safe cap (W), what its agent applies when its last command's TTL
    runs out; commands carry them. All of them together fit every limit of the topology. Left
    out, they are worked out from the config and the topology (see `safe_caps`).
    """

    config: PolicyFile
    topology: Topology
    source: str
    safe_cap_w: np.ndarray[Any, np.dtype[np.float64]] = field(default_factory=lambda: np.zeros(0))
    #: The node inventory (`nodes:` in the policy), when the fleet runs node agents.
    inventory: Inventory | None = None

    def __post_init__(self) -> None:
        if self.safe_cap_w.shape != (self.topology.n_gpus,):
            caps = safe_caps(self.config, self.topology, source=self.source)
            object.__setattr__(self, "safe_cap_w", caps)

    @property
    def site(self) -> str:
        return self.config.site.name


def _yaml_line(root: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node on `loc` that exists in the parsed YAML."""
    node, line = root, None
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            if step not in (node.lc.data or {}):  # set from the environment, not the file
                break
            line = node.lc.key(step)[0] + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            line = node.lc.item(step)[0] + 1
            node = node[step]
        else:
            break
    if line is None and isinstance(node, CommentedMap | CommentedSeq):
        line = node.lc.line + 1
    return line


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for step in loc:
        path += f"[{step}]" if isinstance(step, int) else (f".{step}" if path else str(step))
    return path


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(f"not valid YAML: {exc.problem}", file=source, line=line) from None


def _validate(model: type[Any], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError("must be a YAML mapping", file=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            ConfigError(
                err["msg"],
                file=source,
                line=_yaml_line(data, tuple(err["loc"])),
                field=_field_path(tuple(err["loc"])) or None,
            )
            for err in exc.errors()
        ]
        raise ConfigErrors(errors) from None


def parse_policy(
    text: str,
    *,
    source: str,
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Policy:
    """Validate policy-file text; raises `ConfigError`/`ConfigErrors` naming every problem.

    `overrides` (from the environment) are merged over the file's fields before validation.
    """
    data = _parse_yaml(text, source)
    if overrides and isinstance(data, dict):
        data = merge(data, overrides)
    config: PolicyFile = _validate(PolicyFile, data, source)
    topology = dc_side(
        build_topology(config, source=source, base_dir=base_dir or Path()),
        config.limits.psu_efficiency,
    )
    inventory = None
    if config.nodes is not None:
        inventory = load_inventory((base_dir or Path()) / config.nodes)
        problems = check_inventory(inventory, topology)
        if problems:
            raise ConfigErrors(problems)
        topology = apply_model_overrides(topology, inventory)
    safe_cap_w = safe_caps(config, topology, source=source, data=data)
    return Policy(
        config=config, topology=topology, source=source, safe_cap_w=safe_cap_w, inventory=inventory
    )


def safe_caps(
    config: PolicyFile, topology: Topology, *, source: str, data: Any = None
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each GPU's safe cap (W): `control.safe_cap_frac` of its max cap when the file sets it,
    else derived from the topology; refused, naming every group, unless all of them at once fit
    every usable limit and the contract (with the site margin the allocation keeps). With a
    `facility` section the contract is at the facility meter: the IT power it leaves at the
    design outdoor temperature, with no meter reading, is the site's limit here."""
    frac = config.control.safe_cap_frac
    margin = config.capping.site_margin_frac
    site_limit_w = _facility_it_limit_w(config)
    if frac is None:
        cap = derive_safe_caps(topology, site_limit_w=site_limit_w, site_margin_frac=margin)
        at = "site.topology"
        why = "even min caps do not fit"
    else:
        cap = configured_safe_caps(topology, frac)
        at = "control.safe_cap_frac"
        why = "does not fit"
    overruns = safe_cap_overruns(topology, cap, site_limit_w=site_limit_w, site_margin_frac=margin)
    if overruns:
        line = _yaml_line(data, tuple(at.split("."))) if data is not None else None
        raise ConfigErrors(
            [
                ConfigError(f"{why}: {o.describe()}", file=source, line=line, field=at)
                for o in overruns
            ]
        )
    return cap


def _facility_it_limit_w(config: PolicyFile) -> float | None:
    """The IT power (core side, W) a facility contract allows with no meter reading, or None."""
    section = config.facility
    if section is None:
        return None
    contract = section.contract_w if section.contract_w is not None else config.limits.contract_w
    if contract is None:
        return None
    budget = it_budget(contract, outdoor_c=section.design_outdoor_c, settings=section.settings())
    return dc_w(budget.budget_w, config.limits.psu_efficiency)


def reload_problems(running: Policy, new: Policy) -> list[ConfigError]:
    """Why `new` cannot replace `running` without a restart (empty: it can).

    The site name names every topic the controller subscribes and publishes, and the mqtt
    section its session with the broker: a running controller keeps both until it restarts.
    """
    problems = []
    if new.site != running.site:
        problems.append(
            ConfigError(
                f"the running controller serves site {running.site!r}; "
                "a new site name takes a restart",
                file=new.source,
                field="site.name",
            )
        )
    if new.config.mqtt != running.config.mqtt:
        changed = [
            name
            for name in type(new.config.mqtt).model_fields
            if getattr(new.config.mqtt, name) != getattr(running.config.mqtt, name)
        ]
        problems.extend(
            ConfigError("changes only with a restart", file=new.source, field=f"mqtt.{name}")
            for name in changed
        )
    # Leadership is campaigned for under the section's backend and key at start-up, and ingest
    # workers hold the fleet's shared arrays: both keep their settings until a restart.
    if new.config.ha != running.config.ha:
        problems.append(
            ConfigError("the ha section changes only with a restart", file=new.source, field="ha")
        )
    if running.config.ingest.workers and new.config.ingest != running.config.ingest:
        problems.append(
            ConfigError(
                "with ingest workers the ingest section changes only with a restart",
                file=new.source,
                field="ingest",
            )
        )
    if running.config.ingest.workers and not _same_fleet(running, new):
        problems.append(
            ConfigError(
                "with ingest workers the fleet (racks and GPU models) changes only with a restart",
                file=new.source,
                field="site.topology",
            )
        )
    return problems


def _same_fleet(running: Policy, new: Policy) -> bool:
    return new.topology.racks.ids == running.topology.racks.ids and np.array_equal(
        new.topology.gpu_model, running.topology.gpu_model
    )


def check_reload(running: Policy, new: Policy) -> None:
    """Raise `ConfigErrors` when `new` may not replace `running` on a reload."""
    problems = reload_problems(running, new)
    if problems:
        raise ConfigErrors(problems)


def load_policy(path: Path | str, *, environment: bool = True) -> Policy:
    """Read and validate a policy file; with `environment`, `RHEOSTAT_<SECTION>__<FIELD>`
    variables override its fields (`controller.settings`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    overrides = environment_overrides() if environment else None
    try:
        return parse_policy(text, source=str(path), base_dir=path.parent, overrides=overrides)
    except ConfigErrors as exc:
        if not overrides:
            raise
        raise ConfigErrors(blame_environment(exc.errors, overrides)) from None


def default_policy_text() -> str:
    """The embedded policy `rheostat demo` runs when given no file."""
    return (importlib.resources.files("controller") / DEFAULT_POLICY_RESOURCE).read_text("utf-8")


def build_topology(config: PolicyFile, *, source: str, base_dir: Path) -> Topology:
    section: TopologySection = config.site.topology
    limits = config.limits
    try:
        if section.generate is not None:
            gen = section.generate
            return generate_topology(
                gen.gpus,
                site=config.site.name,
                gpus_per_server=gen.gpus_per_server,
                servers_per_rack=gen.servers_per_rack,
                racks_per_row=gen.racks_per_row,
                a100_share=gen.a100_share,
                rack_limit_w=limits.rack_breaker_w,
                rack_derating=limits.rack_derating,
                row_limit_w=limits.row_limit_w,
                site_limit_w=limits.contract_w,
            )
        rows = section.rows
        if rows is None:
            assert section.inventory is not None  # guaranteed by TopologySection
            inv_path = base_dir / section.inventory
            try:
                text = inv_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read inventory {inv_path}: {exc.strerror}",
                    file=source,
                    field="site.topology.inventory",
                ) from None
            inventory: InlineTopology = _validate(
                InlineTopology, _parse_yaml(text, str(inv_path)), str(inv_path)
            )
            rows = inventory.rows
        return _topology_from_rows(config, rows)
    except TopologyError as exc:
        field = f"site.topology.{exc.field}" if exc.field else "site.topology"
        raise ConfigError(str(exc), file=source, field=field) from None


def _topology_from_rows(config: PolicyFile, rows: list[RowSpec]) -> Topology:
    """Explicit inventory → index arrays. Runs once per load, so plain Python loops are fine."""
    limits = config.limits
    racks = [(r, rack) for r, row in enumerate(rows) for rack in row.racks]
    servers = [(k, srv) for k, (_, rack) in enumerate(racks) for srv in rack.servers]
    gpu_model = np.concatenate([np.full(s.gpus, model_code(s.model), np.int8) for _, s in servers])
    gpu_server = np.repeat(np.arange(len(servers), dtype=np.int32), [s.gpus for _, s in servers])
    rack_rating = [limits.rack_breaker_w or rack.breaker_w for _, rack in racks]
    if len({rack.id for _, rack in racks}) != len(racks):
        raise TopologyError("rack ids must be unique", field="rows")
    levels = (
        Level(
            name="server",
            ids=tuple(f"{racks[k][1].id}.s{i}" for i, (k, _) in enumerate(servers)),
            parent=np.array([k for k, _ in servers], np.int32),
            limit_w=np.array([s.limit_w or np.inf for _, s in servers]),
            derating=np.ones(len(servers)),
            overhead_w=np.array([s.overhead_w for _, s in servers]),
        ),
        Level(
            name="rack",
            ids=tuple(rack.id for _, rack in racks),
            parent=np.array([r for r, _ in racks], np.int32),
            limit_w=np.array(rack_rating, np.float64),
            derating=np.full(len(racks), limits.rack_derating),
            overhead_w=np.zeros(len(racks)),
        ),
        Level(
            name="row",
            ids=tuple(row.id for row in rows),
            parent=np.zeros(len(rows), np.int32),
            limit_w=np.array([limits.row_limit_w or row.limit_w or np.inf for row in rows]),
            derating=np.ones(len(rows)),
            overhead_w=np.zeros(len(rows)),
        ),
        Level(
            name="site",
            ids=(config.site.name,),
            parent=np.zeros(1, np.int32),
            limit_w=np.array([limits.contract_w or np.inf]),
            derating=np.ones(1),
            overhead_w=np.zeros(1),
        ),
    )
    return Topology.create(
        site=config.site.name,
        gpu_model=gpu_model,
        gpu_server=gpu_server,
        levels=levels,
        rack_level="rack",
    )
