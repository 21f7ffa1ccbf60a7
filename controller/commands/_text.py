"""Plain-text output for people: summaries as aligned `key  value` lines and fixed-width tables.

No JSON or Python reprs in what a person reads: nested values are flattened into dotted keys,
lists are joined with commas, `None` is shown as a dash and booleans as yes/no. `--json` is the
machine-readable form of the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def human(value: Any) -> str:
    """One scalar or list of scalars as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(human(v) for v in value) if value else "none"
    return str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) pairs; dicts and lists of dicts become several rows, not one blob."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                yield from flatten(value, f"{name}.")
            else:
                yield name, "none"
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from flatten(item, f"{name}[{i}].")
                else:
                    yield f"{name}[{i}]", human(item)
        else:
            yield name, human(value)


def key_values(data: Mapping[str, Any]) -> str:
    rows = list(flatten(data))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table; every cell through `human`, columns as wide as their widest cell."""
    cells = [[human(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )
    return "\n".join(lines)
