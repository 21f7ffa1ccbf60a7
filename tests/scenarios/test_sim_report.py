"""The report page: one self-contained HTML file, rendered in a real headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import orjson

from controller.cli import main
from tests.services import require_binary


def _simulate(out: Path, *args: str) -> str:
    assert main(["simulate", *args, "--json", "--report", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "summary.json"]
    return (out / "report.html").read_text()


def _figures(page: str) -> list[str]:
    return re.findall(r'<figure id="([a-z_]+)"><img alt="[^"]*" src="data:image/png;base64,', page)


def test_report_without_dr_has_no_dr_plot(tmp_path: Path) -> None:
    page = _simulate(tmp_path / "r", "steady", "--duration", "2m", "--controller", "static")
    assert _figures(page) == ["site_power", "rack_power", "caps", "throughput", "clocks"]
    summary = orjson.loads((tmp_path / "r" / "summary.json").read_bytes())
    assert summary["controller"] == "static"
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_report_with_a_dr_event_plots_its_target(tmp_path: Path) -> None:
    page = _simulate(tmp_path / "r", "phoenix", "--duration", "1500")
    assert _figures(page)[-1] == "dr"


def test_report_page_renders_in_chromium(tmp_path: Path) -> None:
    chromium = require_binary("chromium")
    _simulate(tmp_path / "r", "budget-step", "--duration", "660")
    shot = tmp_path / "shot.png"
    args = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to sandbox as root
    subprocess.run(
        [
            *args,
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (tmp_path / "r/report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    pixels = plt.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    ink = pixels.mean(axis=2) < 0.9  # anything not near-white: text, axes, curves
    assert 0.02 < ink.mean() < 0.5, ink.mean()
    # the plots are drawn, not broken-image boxes: coloured curves appear below the table
    colour = pixels.max(axis=2) - pixels.min(axis=2) > 0.3
    assert colour[800:].mean() > 0.001, colour[800:].mean()
    assert float(np.std(pixels)) > 0.05
