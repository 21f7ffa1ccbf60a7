"""`make bench`: every benchmark with default arguments; JSON in bench/results/, tables out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from bench._registry import modules, table_for

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    for name, module in modules().items():
        parser = argparse.ArgumentParser(prog=f"rheostat bench {name}")
        parser.add_argument("--json", action="store_true")
        module.add_arguments(parser)
        args = parser.parse_args(list(getattr(module, "DEFAULT_ARGS", [])))
        print(f"== bench {name}", flush=True)
        rows = module.run(args)
        (RESULTS / f"{name}.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
        print(table_for(module)(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
