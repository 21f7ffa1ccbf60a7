"""The daemon's `rheostat` subcommands, one module each: `rheostat.commands` entry points."""
