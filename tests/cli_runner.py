"""Command lines run in the test's own interpreter: what ``python -m PACKAGE ARGS`` and ``python -m monai.bundle
ARGS`` do, without a child's start-up (about 10 s of torch and MONAI imports on a 2-core machine, paid once per
test session instead).

The arguments are the strings a user types. :func:`run_main` hands them to the package's own ``main(argv)``;
:func:`run_monai_bundle` parses them with ``fire`` exactly as ``python -m monai.bundle`` does (``--epochs 2`` an
int, ``--mirror false`` the string ``'false'``, ``--roi_size [32,32,32]`` a list). stdout, stderr (the command's
logging included, configured as in a fresh interpreter; an uncaught exception's traceback) and the exit status
come back as a :class:`subprocess.CompletedProcess`. What only a child process shows (the ``python -m`` wiring,
signals, worker processes that must die with the command, several ranks, a socket-less interpreter) stays with
``subprocess`` in the tests that prove it; ``tests/core/test_command_help.py`` runs every entry point as a child.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

PROJECT_PACKAGES = ("mfassl", "mfassl_medical", "mfassl_faces")
"""Whose loggers a command run starts with as a fresh interpreter has them (an earlier test may have set a level)."""

BUNDLE_COMMANDS = ("run", "run_workflow", "ckpt_export", "verify_metadata", "verify_net_in_out", "init_bundle")
"""The ``python -m monai.bundle`` commands :func:`run_monai_bundle` offers (those of ``monai.bundle.__main__``
that need no network)."""


@contextlib.contextmanager
def as_a_command(cwd: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Run the body as a fresh command would: its own stdout and stderr (yielded, also the stream of the console
    handlers libraries made at import), no root logging handlers until the command configures them and the
    project's loggers at their import-time state (no level, enabled), no
    ``torch.compile`` state of earlier runs (a fresh interpreter compiles with static shapes first), ``cwd`` as
    the working folder and ``env`` added to the environment; all restored after."""
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    ours = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
            if name.split(".")[0] in PROJECT_PACKAGES]
    saved_loggers = [(lg, lg.level, lg.disabled) for lg in ours]
    for lg in ours:
        lg.setLevel(logging.NOTSET)
        lg.disabled = False
    # console handlers that libraries made at import (MONAI's StreamHandler(sys.stdout)) write to this run's
    # stdout or stderr, as they would to a fresh interpreter's
    consoles = [h for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
                for h in lg.handlers if type(h) is logging.StreamHandler]
    saved_streams = [(h, h.stream) for h in consoles]
    for h in consoles:  # assigned, not setStream(): that flushes the old stream, which a finished test may have closed
        h.stream = err if h.stream is sys.__stderr__ or getattr(h.stream, "name", "") == "<stderr>" else out
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    old_cwd = Path.cwd()
    root.handlers = []
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                yield out, err
            finally:
                for h in root.handlers:
                    h.flush()
    finally:
        os.chdir(old_cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for h in root.handlers:
            if h not in saved_handlers:
                h.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for lg, level, disabled in saved_loggers:
            lg.setLevel(level)
            lg.disabled = disabled
        for h, stream in saved_streams:
            h.stream = stream


def _exit_status(call: Callable[[], object], err: io.StringIO) -> int:
    """``call()``'s exit status as an interpreter gives it: an int it returns, a ``SystemExit``'s code, 1 and the
    traceback on stderr for an uncaught exception."""
    try:
        code = call()
    except SystemExit as stop:
        release_frames(stop)
        if stop.code is None or isinstance(stop.code, int):
            return int(stop.code or 0)
        print(stop.code, file=err)
        return 1
    except Exception as exc:  # what the interpreter does with it: the traceback on stderr, status 1
        traceback.print_exc(file=err)
        release_frames(exc)
        return 1
    return int(code) if isinstance(code, int) else 0


def release_frames(exc: BaseException) -> None:
    """Clear the local variables of the frames in ``exc``'s tracebacks (its causes' too), as an interpreter's exit
    would free them: a failed run's ``DataLoader`` iterator stops its worker processes now. Left in the traceback's
    reference cycle, it is collected during a later test, whose garbage collection waited 5 s a worker."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        traceback.clear_frames(cur.__traceback__)
        cur = cur.__cause__ or cur.__context__


def run_main(package: str, *args: str, cwd: str | os.PathLike | None = None,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <package> <args>`` in this interpreter.

    Args:
        package: the package whose ``__main__.main(argv) -> int`` runs (``"mfassl_medical"``, ``"mfassl_faces"``).
        args: the command line after the package name, as strings.
        cwd: the working folder of the run.
        env: environment variables set for the run.

    Returns:
        ``CompletedProcess(args, returncode, stdout, stderr)``.
    """
    main = importlib.import_module(f"{package}.__main__").main
    argv = [str(a) for a in args]
    with as_a_command(cwd, env) as (out, err):
        code = _exit_status(lambda: main(argv), err)
    return subprocess.CompletedProcess([f"python -m {package}", *argv], code, out.getvalue(), err.getvalue())


def run_monai_bundle(*args: str, cwd: str | os.PathLike | None = None,
                     env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in this interpreter (``args[0]`` is the command: ``run``, ``ckpt_export``,
    ...), the arguments parsed by ``fire`` as MONAI's entry point parses them."""
    import fire
    from monai.bundle import scripts

    argv = [str(a) for a in args]
    commands = {name: getattr(scripts, name) for name in BUNDLE_COMMANDS}
    with as_a_command(cwd, env) as (out, err):
        code = _exit_status(lambda: fire.Fire(commands, command=argv, name="python -m monai.bundle"), err)
    return subprocess.CompletedProcess(["python -m monai.bundle", *argv], code, out.getvalue(), err.getvalue())


def run_monai_bundle_commands(commands: Sequence[Sequence[str]], cwd: str | os.PathLike | None = None,
                              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Several ``python -m monai.bundle`` command lines in turn, stopping at the first that fails; stdout has a
    ``COMMAND ...`` line before each and ``ALL-DONE`` when all succeeded."""
    outs, errs, code = [], [], 0
    for argv in commands:
        outs.append("COMMAND " + " ".join(argv) + "\n")
        proc = run_monai_bundle(*argv, cwd=cwd, env=env)
        outs.append(proc.stdout)
        errs.append(proc.stderr)
        code = proc.returncode
        if code != 0:
            break
    else:
        outs.append("ALL-DONE\n")
    return subprocess.CompletedProcess(["python -m monai.bundle"], code, "".join(outs), "".join(errs))
