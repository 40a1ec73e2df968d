"""What a supervisor of worker processes needs: children that die with it, and restarts
with backoff (a worker that dies at once does not respawn five times a second forever)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn_child(argv: Sequence[str]) -> subprocess.Popen:
    """Start argv as a child that gets SIGTERM when its parent dies (PR_SET_PDEATHSIG),
    even when the parent is SIGKILLed."""
    return subprocess.Popen(list(argv), preexec_fn=_die_with_parent)


class RestartBackoff:
    """The delay before restarting a child: first_s, doubling per quick death up to cap_s;
    back to first_s once a child has lived healthy_s."""

    def __init__(self, first_s: float = 1.0, cap_s: float = 30.0, healthy_s: float = 60.0):
        self.first_s, self.cap_s, self.healthy_s = first_s, cap_s, healthy_s
        self._next = first_s

    def delay(self, lived_s: float) -> float:
        if lived_s >= self.healthy_s:
            self._next = self.first_s
        delay, self._next = self._next, min(self.cap_s, self._next * 2)
        return delay
