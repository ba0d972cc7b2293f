"""Which process owns a run: tags naming the host and process, and whether that process still lives.

A pipeline killed with `kill -9` cannot end its runs; they stay RUNNING. Every run records its owner
(the runner's process for a pipeline's parent run, the kernel's for a notebook's run) so that the next
pipeline start can tell such orphans from runs that are really still going.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

HOST_TAG = "fer_lab.host"
PID_TAG = "fer_lab.pid"
STARTED_TAG = "fer_lab.process_started"  # the process's start time: a reused PID is not the owner


def _process_started(pid: int) -> float | None:
    """The start time (seconds since the epoch) of process `pid`, None when unknown or psutil is missing."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing, or the process gone or not ours to inspect
        return None


def owner_tags() -> dict[str, str]:
    """Tags naming this process as a run's owner: host name, PID and (where known) start time."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    started = _process_started(os.getpid())
    if started is not None:
        tags[STARTED_TAG] = f"{started:.2f}"
    return tags


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process a run's tags name as its owner still runs.

    Args:
        tags: The run's tags.

    Returns:
        True or False for a run owned by a process of this host; None when the run names no owner or
        one on another host (nothing can be said about it from here).
    """
    if tags.get(HOST_TAG) != socket.gethostname() or not str(tags.get(PID_TAG, "")).isdigit():
        return None
    pid = int(tags[PID_TAG])
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, but another user's
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
        started = tags.get(STARTED_TAG)
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists but cannot be inspected
        return True
