"""Rheostat's decision core: pure numpy functions from a fleet snapshot and limits to caps, clocks.

Nothing in this package performs I/O, reads a clock or logs; an import-linter contract enforces it,
so every decision can be replayed, tested and benchmarked on recorded data.
"""
