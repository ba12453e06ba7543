"""`syncxr` subcommands of train/ (found by engine/cli.py)."""
