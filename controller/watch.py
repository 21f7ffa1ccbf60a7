"""An optional poll of the policy file, for hosts where nothing sends SIGHUP on a change.

Polling the modification time and size (every `control.watch_policy_s`) needs no inotify and
works on network file systems and Kubernetes ConfigMap mounts (where the file is a symlink that
is swapped, so the stat is taken through the link). A change goes through the same atomic reload
as SIGHUP: a bad file is rejected and the running policy stays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_file(
    path: Path, interval_s: Callable[[], float | None], on_change: Callable[[], Awaitable[object]]
) -> None:
    """Call `on_change` whenever `path` changes; `interval_s` is read each time (None: paused).

    A file that disappears (mid-swap) is not a change; its return is.
    """
    seen = _signature(path)
    while True:
        await asyncio.sleep(interval_s() or 1.0)
        if interval_s() is None:
            continue
        current = _signature(path)
        if current is not None and current != seen:
            seen = current
            with contextlib.suppress(Exception):  # on_change reports its own failures
                await on_change()
