"""The README's first screen shows an operator the way in, and its links lead somewhere.

The first screen (40 lines) holds the two commands (`make demo`, `make test`, the README's first
commands) and the operator's path: install, configure, deploy with systemd or Kubernetes, monitor.
Every relative link and every `#section` link in the README resolves.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIRST_SCREEN = 40
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def first_screen() -> str:
    return "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_first_commands_are_make_demo_and_make_test() -> None:
    screen = first_screen()
    block = re.search(r"```sh\n(.*?)```", screen, re.DOTALL)
    assert block, "no command block in the first screen"
    assert screen.index("```sh") < screen.index("## ")  # before any section
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def test_the_first_screen_shows_the_operators_path() -> None:
    screen = first_screen()
    path = screen[screen.index("## Operator's path") :]
    # Each numbered step runs to the next one, or to the blank line that ends the list.
    numbered = re.compile(r"^\d\. \*\*(\w+)\*\*:(.*?)(?=^\d\. |^$)", re.MULTILINE | re.DOTALL)
    found = dict(numbered.findall(path))
    assert list(found) == ["Install", "Configure", "Deploy", "Monitor"]
    expected = {
        "Install": ["pip install 'rheostat[", "docker build"],
        "Configure": ["deploy/policy.example.yaml", "rheostat check"],
        "Deploy": ["deploy/systemd/rheostat.service", "kubectl apply -k deploy/k8s/"],
        "Monitor": ["/metrics", "PodMonitor", "docs/runbook.md", "deploy/grafana/"],
    }
    for step, needles in expected.items():
        for needle in needles:
            assert needle in found[step], (step, needle)


def test_every_readme_link_resolves() -> None:
    text = README.read_text()
    anchors = {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    links = LINK.findall(text)
    assert len(links) >= 10
    for target in links:
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, target
        else:
            assert (ROOT / target.split("#")[0]).exists(), target
