"""The `rheostat` subcommands, one module each, discovered by `controller.cli`."""
