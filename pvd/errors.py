"""User-facing errors and the wrapper that turns them into one-line messages for commands."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): reported in one line, exit code 2."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_command(main: Callable[[], int | None]) -> None:
    """Run a command's ``main``; bad input becomes ``error: ...`` on stderr and exit code 2.

    SIGTERM is turned into KeyboardInterrupt so that ``with`` blocks (atomic writers) clean up.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output was left behind", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
