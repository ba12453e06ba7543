"""argparse types with their ranges, for every package's commands: a value out of range is
refused when the command line is read, naming the flag (argparse adds it), before any work."""
from __future__ import annotations

import argparse


def _number(kind, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, what="an integer of at least 1")
nonneg_int = _number(int, 0, what="an integer of at least 0")
positive_float = _number(float, 0, low_open=True, what="a number greater than 0")
nonneg_float = _number(float, 0, what="a number of at least 0")
unit_float = _number(float, 0, 1, what="a number from 0 to 1")
cosine = _number(float, -1, 1, what="a cosine from -1 to 1")
