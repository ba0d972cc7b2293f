"""Two real `fer-lab run` processes started at once on one dataset and one store keep their reports apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from fer_lab import project, tracking

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def test_two_pipelines_started_together_get_their_own_reports_and_notebooks(temp_project, tmp_path) -> None:
    uri = f"sqlite:///{temp_project / 'mlruns' / 'mlflow.db'}"
    tracking.experiment_id("fer-lab", uri)  # the store a user already has
    env = {**os.environ, "FER_LAB_ROOT": str(temp_project)}
    command = [sys.executable, "-m", "fer_lab.cli", "run", "--only", "01", "--data", "data/sample"]
    processes = [subprocess.Popen(command, cwd=project.ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs

    parents = [re.search(r"mlflow: parent run (\w+)", output).group(1) for output in outputs]
    folders = [temp_project / "reports" / re.search(r"-> .*/reports/(\S+)", output).group(1) for output in outputs]
    assert parents[0] != parents[1] and folders[0] != folders[1]
    client = MlflowClient(uri)
    for parent, other, folder in zip(parents, reversed(parents), folders):
        assert parent[:8] in folder.name
        assert (folder / "01_explore.ipynb").is_file() and (folder / "index.html").is_file()
        assert "Dataset findings" in (folder / "index.html").read_text()
        assert parent in (folder / "01_explore.ipynb").read_text()  # the parameters it ran with
        child = client.search_runs([client.get_run(parent).info.experiment_id],
                                   tracking.search_filter(parent_run_id=parent))
        assert [run.data.tags["notebook"] for run in child] == ["01_explore"]
        logged = client.download_artifacts(child[0].info.run_id, "notebook", str(tmp_path / parent))
        names = sorted(os.listdir(logged))
        assert names == ["01_explore.html", "01_explore.ipynb"]
        text = open(os.path.join(logged, "01_explore.ipynb")).read()
        assert parent in text and other not in text
