"""`syncxr` subcommands of eval/ (found by engine/cli/__init__.py)."""
