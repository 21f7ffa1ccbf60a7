"""Optional dependencies, imported where they are used and named by the extra that installs them.

The daemon's base install is small; the demo's embedded broker (amqtt), the report plots
(matplotlib), the OpenADR VEN (openleadr) and the agent's NVML binding (nvidia-ml-py) and gRPC
(grpcio, for the kubelet's PodResources API) come with
extras. A missing one is a `ConfigError` that says which extra to install, raised before the work
that needs it starts, never an `ImportError` from deep inside a run.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from policies.errors import ConfigError

#: top-level module -> (extra, distribution)
EXTRAS: dict[str, tuple[str, str]] = {
    "amqtt": ("demo", "amqtt"),
    "matplotlib": ("sim", "matplotlib"),
    "openleadr": ("openadr", "openleadr"),
    "pynvml": ("agent", "nvidia-ml-py"),
    "grpc": ("agent", "grpcio"),
}


def missing_message(module: str, purpose: str) -> str:
    extra, dist = EXTRAS[module]
    return (
        f"{purpose} needs {dist}, which is not installed: "
        f"pip install 'rheostat[{extra}]' (or run `make install` in a checkout)"
    )


def check(module: str, purpose: str) -> None:
    """Raise `ConfigError` naming the extra when `module` cannot be imported."""
    top = module.split(".", 1)[0]
    if importlib.util.find_spec(top) is None:
        raise ConfigError(missing_message(top, purpose))


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. `matplotlib.pyplot`), or raise `ConfigError` naming the extra."""
    check(module, purpose)
    return importlib.import_module(module)
