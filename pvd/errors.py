"""User-facing errors and the wrapper that turns them into one-line messages for commands."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): reported in one line, exit code 2."""


_interrupted = False


def _raise_interrupt(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Re-raise a SIGINT or SIGTERM whose KeyboardInterrupt Python swallowed.

    A signal handler runs in whatever frame is active; inside a weakref callback or __del__
    its exception is printed and dropped. Long loops that write output call this so that
    the interrupt still ends them.
    """
    if _interrupted:
        raise KeyboardInterrupt


def _quiet_unraisable(unraisable) -> None:
    # The interrupt dropped inside a weakref callback is re-raised by raise_if_interrupted;
    # its "Exception ignored" traceback would only bury the one-line message.
    if _interrupted and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def run_command(main: Callable[[], int | None]) -> None:
    """Run a command's ``main``; bad input becomes ``error: ...`` on stderr and exit code 2.

    SIGINT and SIGTERM become KeyboardInterrupt so that ``with`` blocks (atomic writers) clean up.
    """
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sys.unraisablehook = _quiet_unraisable
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output was left behind", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
