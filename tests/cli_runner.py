"""A command line run in the test's own interpreter: what ``python -m PACKAGE ARGS`` does, without the child's
start-up (about 10 s of torch and MONAI imports on a 2-core machine, paid once per test session instead).

The arguments are the strings a user types and go through the package's own ``main(argv)``; stdout, stderr (the
command's logging included, configured by the command as in a fresh interpreter) and the exit status come back as
a :class:`subprocess.CompletedProcess`. What only a child process shows (the ``python -m`` wiring, signals,
worker processes that must die with the command, a full disk under a separate interpreter) stays with
``subprocess`` in the tests that prove it; ``tests/core/test_command_help.py`` runs every entry point as a child.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
from pathlib import Path


def run_main(package: str, *args: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``python -m <package> <args>`` in this interpreter.

    Args:
        package: the package whose ``__main__.main(argv) -> int`` runs (``"mfassl_medical"``, ``"mfassl_faces"``).
        args: the command line after the package name, as strings.
        cwd: the working folder of the run (restored after).

    Returns:
        ``CompletedProcess(args, returncode, stdout, stderr)``: ``returncode`` is ``main``'s return value or the
        code of a ``SystemExit`` (argparse's 2 for a usage error).
    """
    main = importlib.import_module(f"{package}.__main__").main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []  # as in a fresh interpreter: the command's logging.basicConfig takes effect
    old_cwd = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if not isinstance(stop.code, (int, type(None))):
                    print(stop.code, file=err)
            finally:
                for h in root.handlers:
                    h.flush()
    finally:
        os.chdir(old_cwd)
        for h in root.handlers:
            if h not in saved_handlers:
                h.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
    return subprocess.CompletedProcess([f"python -m {package}", *argv], int(code or 0), out.getvalue(),
                                       err.getvalue())
