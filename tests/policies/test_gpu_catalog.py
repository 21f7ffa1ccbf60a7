"""The GPU model catalog: NVML names, sources, site models in the policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import main
from controller.policy_file import parse_policy
from policies import gpu_models
from policies.errors import ConfigError, TopologyError
from policies.gpu_models import (
    CATALOG,
    GPU_MODELS,
    MODEL_CODE,
    GpuModel,
    model_code,
    register_model,
)

NVML_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100-SXM5",
    "NVIDIA H100 PCIe": "H100-PCIe",
    "NVIDIA H100 NVL": "H100-NVL",
    "NVIDIA H200": "H200-SXM",
    "NVIDIA H200 NVL": "H200-NVL",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
    "NVIDIA A100-SXM4-80GB": "A100-SXM4",
    "NVIDIA A100-SXM4-40GB": "A100-SXM4",
    "NVIDIA A100 80GB PCIe": "A100-PCIe-80GB",
    "NVIDIA A100-PCIE-40GB": "A100-PCIe-40GB",
    "NVIDIA L40S": "L40S",
}


@pytest.mark.parametrize(("nvml", "key"), NVML_NAMES.items())
def test_nvml_names_match_their_model(nvml: str, key: str) -> None:
    assert GPU_MODELS[model_code(nvml)].name == key
    assert model_code(nvml.lower().replace(" ", "  ")) == model_code(key)


def test_existing_codes_are_kept_and_every_model_cites_a_source() -> None:
    assert model_code("H100-SXM5") == 0
    assert model_code("A100-SXM4") == 1
    for model in CATALOG:
        assert model.source, model.name
        assert model.nvml_names, model.name
        assert model.min_cap_w < model.max_cap_w


def policy(model: str, extra: str = "") -> str:
    return f"""{extra}
limits:
  contract_w: 100000
site:
  name: dc
  topology:
    rows:
      - id: row1
        racks:
          - id: r1
            breaker_w: 30000
            servers:
              - model: {model}
                gpus: 8
"""


def test_policy_accepts_nvml_names() -> None:
    pol = parse_policy(policy("NVIDIA H100 80GB HBM3"), source="p.yaml")
    assert set(pol.topology.gpu_model.tolist()) == {0}
    pol = parse_policy(policy("'NVIDIA L40S'"), source="p.yaml")
    assert pol.topology.gpu_max_cap_w.max() == 350.0


@pytest.fixture
def catalog_restored() -> Iterator[None]:
    """A site model registers itself for the life of the process (as a policy's do); the test
    takes its own out again so later tests see the catalog alone."""
    saved = (list(GPU_MODELS), dict(MODEL_CODE), dict(gpu_models._NVML_CODE))
    try:
        yield
    finally:
        GPU_MODELS[:] = saved[0]
        MODEL_CODE.clear()
        MODEL_CODE.update(saved[1])
        gpu_models._NVML_CODE.clear()
        gpu_models._NVML_CODE.update(saved[2])


@pytest.mark.usefixtures("catalog_restored")
def test_site_model_in_the_policy() -> None:
    extra = """gpu_models:
  - name: RTX-PRO-6000-test
    nvml_names: ["NVIDIA RTX PRO 6000 Test Edition"]
    min_cap_w: 150
    max_cap_w: 600
    idle_w: 30
    min_sm_clock_mhz: 180
    max_sm_clock_mhz: 2600
    memory_clock_mhz: 14000
"""
    pol = parse_policy(policy("NVIDIA RTX PRO 6000 Test Edition", extra), source="p.yaml")
    assert pol.topology.gpu_max_cap_w.tolist() == [600.0] * 8
    again = parse_policy(policy("RTX-PRO-6000-test", extra), source="p.yaml")  # idempotent
    assert again.topology.gpu_model.tolist() == pol.topology.gpu_model.tolist()


def test_unknown_model_and_catalog_redefinition_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown GPU model 'NVIDIA Z9000'"):
        parse_policy(policy("NVIDIA Z9000"), source="p.yaml")
    with pytest.raises(TopologyError, match="catalog model"):
        register_model(
            GpuModel(
                name="H100-SXM5",
                min_cap_w=1.0,
                max_cap_w=2.0,
                idle_w=1.0,
                min_sm_clock_mhz=1.0,
                max_sm_clock_mhz=2.0,
                sm_clock_step_mhz=1.0,
                memory_clock_mhz=1.0,
                slowdown_temp_c=80.0,
                shutdown_temp_c=90.0,
            )
        )
    path = tmp_path / "p.yaml"
    path.write_text(policy("NVIDIA H100 80GB HBM3"))
    assert main(["check", str(path)]) == 0
