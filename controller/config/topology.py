"""The policy file's `site` section: the site's name and its fleet (generated, inline or a file),
and `gpu_models`, the GPU models a site adds to the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator

from controller.config.base import PositiveW, Section
from policies.gpu_models import MODEL_CODE, GpuModel, match_model


class GeneratedTopology(Section):
    """A regular fleet (`policies.topology.generate_topology`): demos, tests and benchmarks."""

    gpus: Annotated[int, Field(gt=0)]
    """Total GPUs in the fleet; a multiple of gpus_per_server."""
    gpus_per_server: Annotated[int, Field(gt=0)] = 8
    """GPUs in each server."""
    servers_per_rack: Annotated[int, Field(gt=0)] = 4
    """Servers in each rack."""
    racks_per_row: Annotated[int, Field(gt=0)] = 20
    """Racks in each row (the last row may hold fewer)."""
    a100_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Share of servers with A100 GPUs; the rest are H100 (0 to 1)."""

    @model_validator(mode="after")
    def _whole_servers(self) -> Self:
        if self.gpus % self.gpus_per_server:
            raise ValueError("gpus must be a multiple of gpus_per_server")
        return self


class ServerSpec(Section):
    """One server: its GPU model (as `nvidia-smi` names it), GPU count and non-GPU draw (W)."""

    model: str
    """GPU model, e.g. H100-SXM5 or A100-SXM4."""
    gpus: Annotated[int, Field(gt=0)] = 8
    """GPUs in this server."""
    overhead_w: Annotated[float, Field(ge=0)] = 2800.0
    """The server's non-GPU draw (CPUs, fans, NICs, PSU losses). Units: W."""
    limit_w: PositiveW | None = None
    """The server's own power limit, if any. Units: W at the wall."""

    @model_validator(mode="after")
    def _known_model(self) -> Self:
        if match_model(self.model) is None:
            raise ValueError(
                f"unknown GPU model {self.model!r} (known: {', '.join(MODEL_CODE)}, their NVML "
                "names, or a model in the policy's gpu_models)"
            )
        return self


class SiteGpuModel(Section):
    """A GPU model the catalog lacks, added by a site. Units: W, MHz, degrees C."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    """The model's key, as servers in this file may name it."""
    nvml_names: tuple[Annotated[str, Field(min_length=1, max_length=96)], ...] = ()
    """Names NVML reports for it (`nvidia-smi --query-gpu=name`)."""
    min_cap_w: PositiveW
    """Lowest power limit the GPU accepts. Units: W."""
    max_cap_w: PositiveW
    """Highest power limit (its TDP). Units: W."""
    idle_w: Annotated[float, Field(ge=0)]
    """Power drawn idle. Units: W."""
    min_sm_clock_mhz: PositiveW
    """Lowest supported SM clock. Units: MHz."""
    max_sm_clock_mhz: PositiveW
    """Highest (boost) SM clock. Units: MHz."""
    sm_clock_step_mhz: PositiveW = 15.0
    """Step between supported SM clocks. Units: MHz."""
    memory_clock_mhz: PositiveW
    """Memory clock. Units: MHz."""
    slowdown_temp_c: float = 87.0
    """Temperature at which the GPU slows itself. Units: degrees C."""
    shutdown_temp_c: float = 92.0
    """Temperature at which it shuts down. Units: degrees C."""
    source: str = "site policy"
    """Where the figures come from (a datasheet, your own nvidia-smi -q)."""

    def model(self) -> GpuModel:
        return GpuModel(**self.model_dump())


class RackSpec(Section):
    """A rack: its breaker (PDU) rating in W and its servers, in GPU order."""

    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """Rack id, as its agent names itself in topics (letters, digits, '_', '.', '-')."""
    breaker_w: PositiveW
    """The rack breaker's (PDU's) rating. Units: W."""
    servers: Annotated[list[ServerSpec], Field(min_length=1)]
    """The rack's servers, in GPU order."""


class RowSpec(Section):
    id: Annotated[str, Field(min_length=1)]
    """Row id."""
    limit_w: PositiveW | None = None
    """The row's power limit (its busway or PDU feed), if any. Units: W."""
    racks: Annotated[list[RackSpec], Field(min_length=1)]
    """The row's racks."""


class InlineTopology(Section):
    """An explicit inventory: rows of racks of servers (inline, or in `inventory` as a file)."""

    rows: Annotated[list[RowSpec], Field(min_length=1)]
    """Rows of racks of servers."""


class TopologySection(Section):
    """Exactly one of: `generate` (a regular fleet), `rows` (inline) or `inventory` (a file).

    A relative inventory path is resolved against the policy file's directory.
    """

    generate: GeneratedTopology | None = None
    """A regular fleet generated from a few counts (demos, tests, benchmarks)."""
    rows: list[RowSpec] | None = None
    """An explicit inventory: rows of racks of servers."""
    inventory: Path | None = None
    """A YAML file holding `rows`, resolved against the policy file's directory."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("generate", "rows", "inventory") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of generate, rows or inventory")
        return self


class SiteSection(Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    """Site name, the second level of every MQTT topic (letters, digits, '_', '.', '-')."""
    topology: TopologySection
    """The fleet: exactly one of generate, rows or inventory."""
