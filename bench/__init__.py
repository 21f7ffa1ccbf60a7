"""Rheostat's benchmarks: each module measures one thing against a baseline in the same run.

A benchmark module exposes `NAME`, `HELP`, `add_arguments(parser)`, `run(args) -> list[dict]`
(one JSON-ready row per configuration measured), optionally `DEFAULT_ARGS` (the argument list
`make bench` uses), and is listed, one line, in `bench._registry.BENCHMARKS`.
`rheostat bench NAME [--json]` runs one; `python -m bench.run_all` runs all,
writing `bench/results/NAME.json` and printing a table. Ratios against an in-run baseline matter
more than absolute times: the machines are shared and noisy.
"""
