"""A kernel stopped under a running cell is reported by the runner in one line, not by asyncio as a traceback."""

import asyncio
import gc
import logging

from nbclient.exceptions import DeadKernelError

from fer_lab.pipeline import kernels


def _unretrieved(error: Exception) -> None:
    """Leave a task that failed with `error` unretrieved and collected: asyncio's own report of it."""

    async def fail() -> None:
        raise error

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(fail())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert task.done()
        del task
        gc.collect()
    finally:
        loop.close()


def test_a_dead_kernel_leaves_no_traceback_and_other_errors_still_show(caplog):
    kernels.quiet_kernel_deaths()
    kernels.quiet_kernel_deaths()  # once per process, however often the runner starts
    assert sum(isinstance(found, kernels._KernelDeathNoise) for found in logging.getLogger("asyncio").filters) == 1
    with caplog.at_level(logging.ERROR):
        _unretrieved(DeadKernelError("Kernel died"))
        logging.getLogger("papermill").error("Kernel died while waiting for execute reply.")
        assert not caplog.records
        _unretrieved(ValueError("a real fault"))
        logging.getLogger("papermill").error("Cell failed")
    reported = [(record.name, record.getMessage()) for record in caplog.records]
    assert len(reported) == 2 and reported[1] == ("papermill", "Cell failed"), reported
    assert "Task exception was never retrieved" in reported[0][1]
    assert isinstance(caplog.records[0].exc_info[1], ValueError)
