"""The MLflow UI as one unit: started in a process group of its own, stopped with everything it started.

`mlflow ui` starts a web server and job consumers (huey); Ctrl-C reaches only the process in the
terminal's foreground group, and the consumers used to linger orphaned and busy. Here the UI runs in
a new session, and an interrupt or SIGTERM ends its whole process group and every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from fer_lab.tracking.store import configure

STOP_SECONDS = 10.0  # SIGTERM's grace period before SIGKILL


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for store `tracking_uri`, served on `host:port`."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port)]


def serve_ui(tracking_uri: str = "", host: str = "127.0.0.1", port: int = 5000,
             log: Callable[[str], None] = print) -> int:
    """Run the MLflow UI until it exits, Ctrl-C or SIGTERM; then stop every process it started.

    Args:
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else the project's sqlite store).
        host: The address served; 127.0.0.1 keeps the UI off the network.
        port: The port served.
        log: Called with one line when the UI starts and when it stops.

    Returns:
        The UI's exit code, or 0 when it was stopped by an interrupt or SIGTERM.
    """
    uri = configure(tracking_uri)
    process = subprocess.Popen(ui_command(uri, host, port), start_new_session=True)
    log(f"MLflow UI on http://{host}:{port} ({uri}); Ctrl-C stops it")
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_group(process)
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, previous)
        log("MLflow UI stopped")


def stop_group(process: subprocess.Popen) -> None:
    """End `process`, the process group it leads and its descendants: SIGTERM, then SIGKILL after a grace period."""
    group = process.pid
    try:
        stray = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        stray = []
    _signal_group(group, signal.SIGTERM)
    for child in stray:  # descendants that started sessions of their own
        _terminate(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and _members(group, stray):
        process.poll()  # reap the leader so that it does not count as a member
        time.sleep(0.2)
    _signal_group(group, signal.SIGKILL)
    for child in _members(group, stray):
        _terminate(child, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _terminate(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


def _members(group: int, stray: list[psutil.Process]) -> list[psutil.Process]:
    """The live (not zombie) processes of process group `group`, and those of `stray` still running."""
    found = {}
    for process in [*psutil.process_iter(), *stray]:
        try:
            if process.status() != psutil.STATUS_ZOMBIE and (os.getpgid(process.pid) == group or process in stray):
                found[process.pid] = process
        except (psutil.Error, ProcessLookupError):
            continue
    return list(found.values())
