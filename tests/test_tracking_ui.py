"""`fer-lab ui` (behind `make ui`): Ctrl-C stops the MLflow UI and every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from fer_lab import project

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # 1-2 minutes of MLflow UI start-up


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_ctrl_c_stops_the_ui_and_its_whole_process_group(tmp_path) -> None:
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "fer_lab.cli", "ui", "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
                          cwd=project.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          # as in a terminal, even where the test runs with Ctrl-C ignored (a background job)
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert ui.poll() is None, ui.stdout.read()
                assert time.time() < deadline, "the UI did not answer within 240 s"
                time.sleep(0.5)
        started = psutil.Process(ui.pid).children(recursive=True)
        groups = {os.getpgid(process.pid) for process in started}
        assert started and ui.pid not in groups  # the UI runs in a process group of its own
        ui.send_signal(signal.SIGINT)
        output, _ = ui.communicate(timeout=60)
        assert ui.returncode == 0 and "MLflow UI stopped" in output and "Traceback" not in output
        assert not _alive(started)
        members = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) in groups and process.status() != psutil.STATUS_ZOMBIE:
                    members.append(process)
            except (psutil.Error, ProcessLookupError):
                continue
        assert not members
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
