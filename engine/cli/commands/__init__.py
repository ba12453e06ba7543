"""CLI subcommands. Each module here exposes `register(subparsers)`; engine.cli discovers them,
so a feature adds its command without touching the CLI core."""
