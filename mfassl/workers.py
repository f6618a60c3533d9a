"""Worker processes that end with their parent, even when the parent is killed with ``kill -9``.

A ``concurrent.futures.ProcessPoolExecutor`` worker waits on its call queue, whose write end every worker
inherits: when the parent dies without shutting the pool down (``SIGKILL``, the OOM killer), nothing ever
closes that queue and the workers wait on, orphaned, holding their memory. (``multiprocessing.Pool``
workers close their copy of the write end, which is why the faces ``landmarks`` pool ends by itself.)
:func:`die_with_parent`, called in the worker's initializer, makes the kernel send the worker ``SIGKILL``
when its parent ends (Linux ``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid
and ends the worker within ``poll_seconds``::

    ProcessPoolExecutor(max_workers=n, initializer=die_with_parent, initargs=(os.getpid(),))
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _watch(parent_pid: int, poll_seconds: float) -> None:
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(1)


def _pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = None, poll_seconds: float = 1.0) -> None:
    """End this process when the process ``parent_pid`` ends (call it first thing in a pool worker).

    Args:
        parent_pid: the parent's pid as the parent saw it (``os.getpid()`` passed through ``initargs``); None
            takes the current parent. A parent that already died before the call ends this process at once.
        poll_seconds: how often the fallback thread checks (platforms without ``PR_SET_PDEATHSIG``).
    """
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    armed = _pdeathsig()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch, args=(parent, float(poll_seconds)), daemon=True,
                         name="die-with-parent").start()
