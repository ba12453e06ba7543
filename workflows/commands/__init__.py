"""`syncxr` subcommands of workflows/ (found by engine/cli/__init__.py)."""
