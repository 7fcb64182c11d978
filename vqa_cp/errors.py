"""The one error type for user mistakes (bad files, bad flags, missing data)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class VQAError(Exception):
    """A mistake the user can fix. Command-line fronts print its message on one line, no traceback."""


def describe_os_error(exc: OSError) -> str:
    """One line naming the path(s) and the cause: `PATH: No space left on device`."""
    cause = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {cause}" if names else cause


def run_cli(main: Callable[[], T]) -> T:
    """Run a command-line entry point: a VQAError or an OSError becomes `error: <one line>` and exit code 2."""
    try:
        return main()
    except VQAError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # a file-system fault (read-only folder, full disk, a file where a folder belongs)
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
