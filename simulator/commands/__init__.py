"""The `rheostat` subcommands that run the simulator (`demo`, `simulate`, `agent`).

They live here, not in `controller.commands`, so the daemon's package never imports the simulator;
`controller.cli` finds them through the `rheostat.commands` entry points.
"""
