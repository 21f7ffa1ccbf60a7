"""`rheostat schema KIND`: the JSON schema of a file kind, for editor completion and validation.

Kinds live in one small table; each maps to a pydantic model, imported only when asked for.
"""

from __future__ import annotations

import argparse
import importlib

import orjson

#: kind -> (module, model class, what it describes)
KINDS: dict[str, tuple[str, str, str]] = {
    "policy": ("controller.config", "PolicyFile", "the controller's policy file"),
    "scenario": ("simulator.scenario", "Scenario", "a simulator scenario (rheostat simulate)"),
    "snapshot": (
        "controller.snapshot",
        "SnapshotSpec",
        "recorded decision inputs (rheostat decide)",
    ),
}
#: The JSON Schema dialect pydantic emits.
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON schema of a file kind")
    parser.add_argument(
        "kind",
        choices=sorted(KINDS),
        help="; ".join(f"{k}: {v[2]}" for k, v in sorted(KINDS.items())),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    module_name, class_name, _ = KINDS[args.kind]
    model = getattr(importlib.import_module(module_name), class_name)
    schema = {"$schema": DIALECT, **model.model_json_schema()}
    print(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0
