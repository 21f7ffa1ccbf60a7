"""bench/device_check.sh: the read-only NVML report, here on whatever this machine has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_check_reports_json_with_or_without_a_gpu(tmp_path: Path):
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "device_check.sh"), "--repeats", "2", "--reads", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)},
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout)
    assert json.loads((tmp_path / "device_check.json").read_text()) == report
    init = report["raw"]["nvmlInit"]
    if "error" in init:  # no GPU or no driver here: a clean report and exit 2
        assert done.returncode == 2
        assert "NVML" in init["error"]
    else:  # a GPU machine: every GPU read, and the backend refused to set anything
        assert done.returncode == 0, done.stderr
        assert report["raw"]["gpus"]
        assert report["backend"]["read_only_refused_apply"] is True
