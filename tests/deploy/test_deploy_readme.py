"""The README's first screen shows an operator the way in, and its links lead somewhere.

The first screen (40 lines) holds the two commands (`make demo`, `make test`, the README's first
commands) and the operator's path: install, configure, deploy with systemd or Kubernetes, monitor.
Every relative link and every `#section` link in the README and in the pages under `docs/`
resolves, every page under `docs/` is listed in its index, and the user-facing text speaks of the
product, never of the tracker's issue numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
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


def anchors_of(path: Path) -> set[str]:
    """The `#anchor`s a Markdown file's headings give (outside fenced code blocks)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def broken_links(path: Path) -> list[str]:
    """Links in `path` whose file or `#anchor` does not exist, relative to the file itself."""
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors_of(dest):
            broken.append(target)
    return broken


def test_every_readme_link_resolves() -> None:
    assert len(LINK.findall(README.read_text())) >= 10
    assert broken_links(README) == []


def test_every_docs_link_resolves() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    assert {page.name: broken_links(page) for page in pages} == {page.name: [] for page in pages}


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    listed = {target.partition("#")[0] for target in LINK.findall(index)}
    missing = {page.name for page in DOCS.glob("*.md")} - listed - {"README.md"}
    assert not missing, f"docs/README.md does not list {sorted(missing)}"


def test_no_issue_numbers_in_user_facing_text() -> None:
    tracker = re.compile(r"\bissue[s']*\b(?!d)|#\d+\b|\bthe owner\b", re.IGNORECASE)
    found = {
        str(path.relative_to(ROOT)): tracker.findall(path.read_text())
        for path in [README, *sorted(DOCS.glob("*.md"))]
    }
    assert {name: hits for name, hits in found.items() if hits} == {}
