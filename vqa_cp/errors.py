"""The one error type for user mistakes (bad files, bad flags, missing data)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class VQAError(Exception):
    """A mistake the user can fix. Command-line fronts print its message on one line, no traceback."""


def run_cli(main: Callable[[], T]) -> T:
    """Run a command-line entry point, turning a VQAError into `error: <message>` and exit code 2."""
    try:
        return main()
    except VQAError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
