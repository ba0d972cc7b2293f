"""Kernels for the runner: each notebook's kernel started ahead of its turn, its imports loaded meanwhile.

A kernel's start and imports (MLflow, pandas, TensorFlow) take 8-15 s per notebook, mostly on one core.
Started early, they overlap the notebooks before it: `make demo` went from 235 s to about 105 s on two
cores (with the parameters read without papermill). `noted_interrupts` keeps Ctrl-C reliable meanwhile, and
`quiet_kernel_deaths` keeps a kernel's end out of the output as tracebacks: the runner reports it in one line.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import zmq
from traitlets.config import Config

from fer_lab.pipeline.notebook import import_statements

# ipykernel >= 7.3 warns on every start over unencrypted TCP; "auto" encrypts with CurveZMQ when the
# kernelspec supports it and otherwise starts the kernel as before (jupyter_client rejects "auto"
# when pyzmq was built without CurveZMQ).
KERNEL_CONFIG = Config({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})
# What notebooks load on first use rather than on import: the tracking store behind `tracking`'s lazy
# names and MLflow's database layer. (TensorFlow comes with the imports of the notebooks that use it;
# 06 and 07 run the model's TFLite copy without it.)
WARM_UP = ("import fer_lab.tracking.store", "import mlflow.store.tracking.sqlalchemy_store")
# How many notebooks ahead of its turn a kernel starts loading its imports.
WARM_AHEAD = 2
# Seconds a kernel may take to answer: a warm kernel answers after its imports, which a busy machine slows.
KERNEL_START_TIMEOUT = 600


def kernel_name() -> str:
    """The project's registered kernel when present, else the kernel of this Python."""
    from jupyter_client.kernelspec import find_kernel_specs

    return "fer-lab" if "fer-lab" in find_kernel_specs() else "python3"


class WarmKernel:
    """The next notebook's kernel, started with its imports running while the current notebook executes.

    A kernel's start and imports (MLflow, pandas, TensorFlow) take 8-15 s per notebook, mostly on one
    core; started a notebook early they overlap the notebook before it. The imports run as a silent
    request that the kernel finishes before the notebook's first cell, whose own imports are then cached.
    They wait for those of the kernel `after` (the notebook before), so that warming kernels take one
    core, not every core the running notebook could use.
    """

    def __init__(self, notebook: Path, kernel_name: str, cwd: Path, *, after: WarmKernel | None = None) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        # nbclient drives the manager with asyncio: a blocking KernelManager deadlocks it.
        self.manager = AsyncKernelManager(kernel_name=kernel_name, config=KERNEL_CONFIG)
        run_sync(self.manager.start_kernel)(cwd=str(cwd))
        code = "\n".join([*import_statements(notebook), *WARM_UP])
        self._closing = threading.Event()
        self._warming = threading.Thread(target=self._warm_up, args=(code, after), name=f"warm-{notebook.stem}",
                                         daemon=True)
        self._warming.start()

    def _warm_up(self, code: str, after: WarmKernel | None) -> None:
        if after is not None:
            after.ready()
        asyncio.run(self._send_and_wait(code))  # a loop and ZeroMQ sockets of this thread's own

    async def _send_and_wait(self, code: str) -> None:
        from jupyter_client.session import Session

        # A session of its own: ZeroMQ routes replies by the session id, and a second connection under the
        # id of the notebook's client would be refused by the kernel's socket.
        session = Session(key=self.manager.session.key, signature_scheme=self.manager.session.signature_scheme)
        client = self.manager.client(session=session)
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=KERNEL_START_TIMEOUT)
            request = client.execute(code, silent=True, store_history=False)
            deadline = time.monotonic() + KERNEL_START_TIMEOUT
            while time.monotonic() < deadline and not self._closing.is_set():
                try:
                    reply = await client.get_shell_msg(timeout=1.0)
                except queue.Empty:  # a kernel shut down (or killed) meanwhile never replies
                    if not await self.manager.is_alive():
                        return
                    continue
                if reply["parent_header"].get("msg_id") == request:  # not wait_for_ready's kernel_info replies
                    return
        except RuntimeError:  # a kernel that dies or never starts fails the notebook, with its message
            pass
        finally:
            client.stop_channels()

    def ready(self) -> None:
        """Wait until the imports have run (the notebook's first cell would wait for them anyway)."""
        self._warming.join()

    def close(self) -> None:
        """Stop the kernel (the executed notebook is done with it, or will never run)."""
        from jupyter_core.utils import run_sync

        self._closing.set()
        if run_sync(self.manager.is_alive)():
            run_sync(self.manager.shutdown_kernel)(now=True)
        self._warming.join()


class Kernels:
    """The kernels of the notebooks to run, each started `WARM_AHEAD` notebooks before its turn.

    Two ahead rather than one: a short notebook (05's few seconds) ends before the next kernel's
    imports do, and the one after it would otherwise wait for them.
    """

    def __init__(self, notebooks: list[Path], kernel_name: str, cwd: Path) -> None:
        self.notebooks, self.kernel_name, self.cwd = notebooks, kernel_name, cwd
        self.started: dict[int, WarmKernel] = {}
        self.next = 0  # kernels start in the notebooks' order

    def prepare(self, last: int) -> None:
        """Start the kernels of the notebooks up to index `last`."""
        while self.next <= min(last, len(self.notebooks) - 1):
            self.started[self.next] = WarmKernel(self.notebooks[self.next], self.kernel_name, self.cwd,
                                                  after=self.started.get(self.next - 1))
            self.next += 1

    def take(self, index: int) -> WarmKernel:
        """Notebook `index`'s kernel, the next ones starting meanwhile; the caller closes it."""
        self.prepare(index + WARM_AHEAD)
        return self.started.pop(index)

    def close(self) -> None:
        """Stop the kernels no notebook took (the pipeline ended early)."""
        for index in sorted(self.started):  # in order: each warm-up waits for the one before it
            self.started.pop(index).close()


@contextmanager
def noted_interrupts() -> Iterator[list[int]]:
    """Note each Ctrl-C (and each SIGTERM the CLI turns into one) before it is raised as usual.

    On its way out of nbclient the interrupt can arrive as another error (a kernel that died with it);
    the note is what still makes the runner end its runs KILLED and stop. Only the main thread gets
    signals, so elsewhere nothing is noted.
    """
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    wrapped = {number: handler for number, handler in previous.items() if callable(handler)}

    def note(number: int, frame: Any) -> None:
        noted.append(number)
        wrapped[number](number, frame)

    for number in wrapped:
        signal.signal(number, note)
    try:
        yield noted
    finally:
        for number, handler in wrapped.items():
            signal.signal(number, handler)


class _KernelDeathNoise(logging.Filter):
    """Drops nbclient's word that a kernel died: the runner reports each notebook's end in one line.

    Stopping a pipeline (Ctrl-C, SIGTERM) stops its kernel under a cell nbclient still polls; the poll ends
    with an error nobody retrieves, which asyncio would print as a traceback when it is collected.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "DeadKernelError":
            return False
        return record.getMessage() != "Kernel died while waiting for execute reply."


def quiet_kernel_deaths() -> None:
    """Keep nbclient's reports of a dead kernel out of this process's output (once per process).

    Installed for the rest of the process: asyncio reports an unretrieved error only when its task is collected,
    which can be after the pipeline returned.
    """
    for name in ("asyncio", "papermill"):  # papermill's logger is the one nbclient logs to
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _KernelDeathNoise) for existing in logger.filters):
            logger.addFilter(_KernelDeathNoise())
