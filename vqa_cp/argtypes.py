"""argparse types for the command-line fronts: a bad value is a one-line usage error, not a traceback later."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def _checked(kind: type, test: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` that passes `test`, else `must be WANTED, got TEXT`."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a non-negative number")
fraction = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
