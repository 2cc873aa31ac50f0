"""Background threads at a lower CPU priority than the ones that answer requests.

On a host the model saturates, the webhook's accept (parse, validate, fsync) and a query's
handling compete for the same cores as the model's intra-op threads, the prepare loop (chunking)
and the sink loops. Those background threads call :func:`background` first thing; on Linux
that raises the calling thread's nice value (``server.background_nice``, 10 by default), and
the threads it starts later, the model's OpenMP team among them, inherit it. The event loop and
the request thread pool keep the process's own priority, so the scheduler runs them first when
they are ready, and the model takes every cycle they leave.

Raising nice needs no privilege and is never undone (lowering it again would). On other
systems, where nice is per process, this does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

_nice = 0


def set_background_nice(value: int) -> None:
    """The nice value :func:`background` gives (0 leaves every thread as it is)."""
    global _nice  # noqa: PLW0603 - process-wide scheduling policy, set once at start
    _nice = value


def background() -> int | None:
    """Lower the calling thread to the background nice value; returns the value set, or None."""
    if _nice <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = max(current, _nice)
        if target != current:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        return target
    except OSError as exc:  # a sandbox that forbids it: run at the same priority
        log.info("could not lower a background thread's priority", extra={"error": str(exc)})
        return None


def thread_nice(tid: int) -> int:
    """A thread's nice value, from /proc (for tests and the bench)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])
