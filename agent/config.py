"""The agent's configuration file (YAML), validated by pydantic with file:line errors.

One file per server, usually generated from the inventory: which rack the node sits in and where
its GPUs fall in that rack's arrays (`first_gpu`, `rack_gpus`), the broker, the backend and the
safe cap applied when the controller goes quiet. Nothing here is read again after start.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from controller.wire import ID_CHARS, MAX_NODE_GPUS, is_id
from policies.errors import ConfigError, ConfigErrors


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgentTls(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class AgentMqtt(_Section):
    """The broker. With a password the agent logs in as its rack id unless `username` says
    otherwise: the broker's ACL (`deploy/mosquitto/acl`) keeps a node inside its rack's topics."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: AgentTls | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 15
    #: Longest wait between reconnect attempts (jittered, doubling from 0.1 s). Units: s.
    max_backoff_s: Annotated[float, Field(gt=0, le=2.0)] = 2.0

    def password(self) -> str | None:
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"{self.password_env} is not set", field="mqtt.password_env")
            return value
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read: {exc.strerror}", field="mqtt.password_file"
                ) from None
        return None


class RedfishPower(_Section):
    """The BMC's Redfish power resource, e.g. `https://bmc/redfish/v1/Chassis/1/Power`."""

    kind: Literal["redfish"]
    url: str
    username: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 2.0


class IpmiDcmiPower(_Section):
    """`ipmitool dcmi power reading` on the local BMC (needs /dev/ipmi0)."""

    kind: Literal["ipmi-dcmi"]
    command: tuple[str, ...] = ("ipmitool", "dcmi", "power", "reading")
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 3.0


class PodsSection(_Section):
    """Workload classes from the node's pods on Kubernetes (`agent/k8s_pods.py`): the kubelet's
    PodResources socket says which pod holds which GPU, the API server each pod's
    `rheostat.io/class` label. `api_url` None: the in-cluster API server with the pod's token."""

    socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    api_url: str | None = None
    refresh_s: Annotated[float, Field(ge=1, le=3600)] = 10.0


def _hostname_id() -> str:
    """`RHEOSTAT_NODE` (a DaemonSet sets it to the node's name), else the short hostname."""
    short = os.environ.get("RHEOSTAT_NODE") or socket.gethostname().split(".")[0]
    cleaned = "".join(c if c in ID_CHARS else "-" for c in short)[:64]
    return cleaned or "node"


class AgentConfig(_Section):
    """One node agent. Units: W, s."""

    site: Annotated[str, Field(min_length=1, max_length=64)] = "site"
    rack: Annotated[str, Field(min_length=1, max_length=64)] = "rack"
    #: The node's id on the wire and in the inventory; the short hostname when absent.
    node: str = Field(default_factory=_hostname_id)
    #: Index of this node's first GPU in its rack's arrays, and the rack's GPU count: the agent
    #: takes its slice of the rack's commands.
    first_gpu: Annotated[int, Field(ge=0)] = 0
    rack_gpus: Annotated[int, Field(gt=0)] | None = None
    #: The node inventory the controller uses (`controller/inventory.py` format): when given,
    #: `rack`, `first_gpu` and `rack_gpus` come from this node's entry in it, so one agent file
    #: serves every server (a DaemonSet's ConfigMap).
    inventory: Path | None = None
    backend: Literal["nvml", "sim"] = "nvml"
    #: On-host GPU indexes to manage (all when absent).
    gpus: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    #: `node`: telemetry per node (`telemetry/<rack>/<node>`, the controller needs an inventory);
    #: `rack`: one rack-level message (`telemetry/<rack>`), for an agent holding its whole rack.
    telemetry: Literal["node", "rack"] = "node"
    #: Applied when a command's TTL runs out and the command carried no `safe_cap_w`: a float for
    #: every GPU, or one value per GPU; clipped to each GPU's limit constraints. Absent: each GPU's
    #: minimum limit, the one value safe whatever the rest of the fleet does.
    safe_cap_w: float | tuple[float, ...] | None = None
    read_only: bool = False
    #: Spacing of NVML calls (rate limit). Units: s.
    min_call_interval_s: Annotated[float, Field(ge=0, le=0.1)] = 0.002
    #: Workload class reported for every GPU (the tier mapping names it) until a job mapping
    #: (Slurm, Kubernetes) says otherwise.
    workload_class: Annotated[str, Field(min_length=1, max_length=64)] = "unknown"
    #: GPUs per node for the `sim` backend's standalone server.
    sim_gpus: Annotated[int, Field(gt=0, le=MAX_NODE_GPUS)] = 8
    mqtt: AgentMqtt = AgentMqtt()
    #: Kubernetes: classes from the pods holding the GPUs. None: `workload_class` for every GPU.
    pods: PodsSection | None = None
    node_power: RedfishPower | IpmiDcmiPower | None = Field(default=None, discriminator="kind")

    @model_validator(mode="after")
    def _ids(self) -> Self:
        for key in ("site", "rack", "node"):
            if not is_id(getattr(self, key)):
                raise ValueError(f"{key} must be 1-64 chars of [A-Za-z0-9._:-]")
        if self.rack_gpus is not None and self.rack_gpus <= self.first_gpu:
            raise ValueError("first_gpu must be inside the rack (below rack_gpus)")
        if self.telemetry == "rack" and self.first_gpu != 0:
            raise ValueError("rack telemetry needs the whole rack (first_gpu 0)")
        return self


def place_from_inventory(config: AgentConfig) -> AgentConfig:
    """`rack`, `first_gpu` and `rack_gpus` from the inventory entry of `config.node`."""
    if config.inventory is None:
        return config
    source = str(config.inventory)
    try:
        data = YAML(typ="safe").load(config.inventory.read_text(encoding="utf-8"))
    except (OSError, MarkedYAMLError) as exc:
        raise ConfigError(f"cannot read the inventory: {exc}", file=source) from None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise ConfigError("the inventory needs a nodes list", file=source)
    mine = [n for n in nodes if n.get("hostname") == config.node]
    if len(mine) != 1:
        raise ConfigError(f"node {config.node!r} is listed {len(mine)} times", file=source)
    rack = mine[0].get("rack")
    siblings = [n for n in nodes if n.get("rack") == rack]
    gpus = [n.get("gpus", 8) for n in siblings]
    if not is_id(rack) or not all(type(g) is int and 0 < g <= MAX_NODE_GPUS for g in gpus):
        raise ConfigError(f"bad rack or gpus in node {config.node!r}'s entry", file=source)
    first = sum(gpus[: siblings.index(mine[0])])
    return config.model_copy(update={"rack": rack, "first_gpu": first, "rack_gpus": sum(gpus)})


def load_agent_config(path: Path | str | None) -> AgentConfig:
    """The agent's configuration (defaults without a file); raises `ConfigErrors` with lines."""
    if path is None:
        return AgentConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = YAML(typ="rt").load(text)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=source) from None
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(f"not valid YAML: {exc.problem}", file=source, line=line) from None
    if not isinstance(data, dict):
        raise ConfigError("must be a YAML mapping", file=source)
    try:
        return place_from_inventory(AgentConfig.model_validate(data))
    except ValidationError as exc:
        raise ConfigErrors.from_validation(exc.errors(), doc=data, source=source) from None
