"""Process lifetime helpers shared by the worker launcher and the checkpoint writer process."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool | None:
    """Have the kernel SIGKILL this process when `parent_pid` (its parent) dies (Linux).

    True: set up, and the parent is still alive. False: the parent died before the request took effect (the caller
    should stop now). None: not available on this platform."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return os.getppid() == parent_pid
