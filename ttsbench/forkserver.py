"""The fork server that feature workers are forked from, and the cores they may use.

Kept free of torch so the command line can start the server before it imports anything heavy:
the server then imports the feature workers' code and librosa (PRELOAD, no torch) on the second
core while the command imports its own, and the pool computes features ~1.4 s after launch. A
forked copy of a process that has run torch's thread pool can hang, so workers are never forked
from the command itself; where there is no fork server (macOS, Windows) they are spawned.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import select
import signal
import sys
import threading
import time

# What the server imports once for every worker it forks, with the garbage collector off
# (`ttsbench.gcoff`, first): this package's preparation (free of torch), and the librosa modules
# the feature front end reaches, which librosa imports lazily on first use (with scipy.signal and
# numba: ~1 s that each worker would otherwise spend on its first clip).
PRELOAD = ("ttsbench.gcoff", "ttsbench.prepare", "librosa.core.spectrum", "librosa.filters",
           "librosa.effects", "librosa.feature.spectral")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context() -> multiprocessing.context.BaseContext:
    """The fork server with PRELOAD (instead of the default, this program's __main__), or spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def start_early(workers: int | None) -> None:
    """Start the fork server now, without waiting for its imports, when a pool of `workers`
    processes (None: every core) will be wanted; a later pool on `worker_context()` uses it."""
    if (workers or available_cores()) > 1 and worker_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies, so no orphan trains on after a kill of
    the command (a job process, the command's child). A feature worker's parent is the fork
    server instead, which outlives the command: it uses `exit_with`."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def exit_with(pid: int) -> None:
    """End this process as soon as process `pid` (the command) ends. A feature worker's parent is
    the fork server, which outlives a SIGKILLed command: each worker holds the server's liveness
    pipe open and waits for tasks on a queue it holds open itself, so server and workers would
    idle on for good, holding librosa's memory."""
    threading.Thread(target=_exit_after, args=(pid,), daemon=True, name=f"exit-with-{pid}").start()


def _exit_after(pid: int) -> None:
    try:
        watched = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has ended
        select.select([watched], [], [])
    except (AttributeError, OSError):  # no pidfd here, or `pid` already gone: ask once a second
        while _exists(pid):
            time.sleep(1.0)
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
