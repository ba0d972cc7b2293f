"""Every notebook as a JupyterLab user runs it: top to bottom with nbclient, defaults only, no papermill."""

from __future__ import annotations

import time

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from fer_lab.pipeline import kernels, runner

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def test_every_notebook_runs_with_its_defaults_and_records_its_run(temp_project, monkeypatch) -> None:
    # The kernels see the temporary project as theirs: data/sample, data/work, mlruns/ there.
    monkeypatch.setenv("FER_LAB_ROOT", str(temp_project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebooks = runner.discover_notebooks(temp_project / "notebooks")
    assert [nb.stem[:2] for nb in notebooks] == ["01", "02", "03", "04", "05", "06"]
    seconds = {}
    for path in notebooks:
        executed = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        NotebookClient(executed, kernel_name=kernels.kernel_name(), timeout=1800, config=kernels.KERNEL_CONFIG,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds[path.stem] = round(time.perf_counter() - started, 1)
        outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
        assert not [output for output in outputs if output["output_type"] == "error"], path.stem
        client = MlflowClient(f"sqlite:///{temp_project / 'mlruns' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("fer-lab")
        runs = client.search_runs([experiment.experiment_id], f"tags.notebook = '{path.stem}'")
        assert len(runs) == 1, path.stem
        assert runs[0].info.status == "FINISHED" and runs[0].data.params, path.stem  # ended when its kernel stopped
        if path.stem != "05_compare":
            assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.stem} shows no figure"
    print("nbclient seconds per notebook:", seconds)
