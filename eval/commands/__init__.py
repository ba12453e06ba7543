"""`syncxr` subcommands of eval/ (found by engine/cli.py)."""
