"""Moved to `controller.metrics.families`; kept for the hooks that still import it from here."""

from controller.metrics.families import describe_families

__all__ = ["describe_families"]
