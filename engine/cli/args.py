"""What most subcommands' parsers share: the config file and the output directory."""
from __future__ import annotations

CONFIG_HELP = "YAML config (default: configs/local.yaml)"


def command_parser(sub, name: str, summary: str, description: str, out_help: str | None = "output directory"):
    """A subcommand parser with --config (and --out, unless out_help is None)."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("--config", default=None, help=CONFIG_HELP)
    if out_help:
        p.add_argument("--out", required=True, help=out_help)
    return p


def backend_overrides(p, section: str, backends: str, model_help: str) -> None:
    """--backend and --model: one run with another backend than the config names."""
    p.add_argument("--backend", default=None, help=f"override {section}.backend ({backends})")
    p.add_argument("--model", default=None, help=f"override {section}.model ({model_help})")
