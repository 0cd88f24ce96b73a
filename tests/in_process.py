"""A command's ``main`` run in the test process exactly as ``pvd.errors.run_command`` runs it for
the real command, so that bad-input tests see the same one-line message and exit code without
paying ~3 s of interpreter and torch start-up per case. Each command keeps one test that runs
it in a real subprocess (the wrapper is the same for every message)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence

import pytest

from pvd.errors import run_command


def run_main(main: Callable[[list[str]], int | None], argv: Sequence, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``main([str(a) for a in argv])`` under ``run_command``."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_command(lambda: main([str(a) for a in argv]))
    finally:  # run_command installs process-wide handlers for the real command: put them back
        for s, h in handlers.items():
            signal.signal(s, h)
        sys.unraisablehook = hook
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err
