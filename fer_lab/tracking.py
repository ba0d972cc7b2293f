"""MLflow tracking shared by the notebooks and the pipeline runner."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from fer_lab import __version__, project

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

DEFAULT_EXPERIMENT = "fer-lab"
UNFINISHED = ("RUNNING", "FAILED", "KILLED", "SCHEDULED")


def default_tracking_uri() -> str:
    """The project's own store: an sqlite database with artifacts beside it under mlruns/."""
    return f"sqlite:///{project.MLRUNS_DIR / 'mlflow.db'}"


def configure(tracking_uri: str = "") -> str:
    """Point MLflow at `tracking_uri`, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def _artifact_location(uri: str) -> str | None:
    """Keep a local sqlite store's artifacts beside its database rather than under the current folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def experiment_id(name: str = DEFAULT_EXPERIMENT, tracking_uri: str = "") -> str:
    """Return the id of experiment `name`, creating it (with local artifacts for sqlite stores) if needed."""
    uri = configure(tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


def git_commit() -> str:
    """The project's current commit, with `-dirty` when the work tree has changes; `unknown` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project.ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def base_tags() -> dict[str, str]:
    """Tags every fer-lab run carries, so a number can be traced back to its code."""
    return {"git_commit": git_commit(), "fer_lab_version": __version__}


def _resumable_run(experiment: str, notebook: str, run_name: str) -> str | None:
    """The newest unfinished run of `notebook` named `run_name`, if any."""
    runs = MlflowClient().search_runs(
        [experiment],
        filter_string=f"tags.notebook = '{notebook}' and attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
    )
    return next((run.info.run_id for run in runs if run.info.status in UNFINISHED), None)


def start_notebook_run(
    notebook: str,
    params: Mapping[str, Any],
    *,
    tracking_uri: str = "",
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run_id: str = "",
    run_name: str = "",
) -> mlflow.ActiveRun:
    """Start (or resume, for an unfinished run named `run_name`) the MLflow run of one notebook execution.

    The run stays active for the rest of the notebook; the pipeline runner later adds the executed
    notebook to it and sets its final status.
    """
    exp_id = experiment_id(experiment, tracking_uri)
    mlflow.set_experiment(experiment_id=exp_id)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    resumed = _resumable_run(exp_id, notebook, run_name) if run_name else None
    if resumed:
        run = mlflow.start_run(run_id=resumed)
        if parent_run_id:
            mlflow.set_tag("mlflow.parentRunId", parent_run_id)
    else:
        run = mlflow.start_run(run_name=run_name or notebook, parent_run_id=parent_run_id or None)
    mlflow.set_tags({**base_tags(), "notebook": notebook, "resumed": str(bool(resumed)).lower()})
    mlflow.log_params({key: _param_value(value) for key, value in params.items()})
    return run


def _param_value(value: Any) -> str:
    """MLflow params are strings of bounded length; long values are cut rather than rejected."""
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def tag_dataset(manifest: "pd.DataFrame") -> str:
    """Tag the active run with the manifest's fingerprint, and its pipeline parent unless already tagged.

    The parent keeps the first fingerprint it gets (01's full manifest), not a later filtered one.
    """
    from fer_lab.data import manifest_fingerprint

    fingerprint = manifest_fingerprint(manifest)
    run = mlflow.active_run()
    if run is not None:
        mlflow.set_tag("dataset_fingerprint", fingerprint)
        client = MlflowClient()
        parent = client.get_run(run.info.run_id).data.tags.get("mlflow.parentRunId")
        if parent and "dataset_fingerprint" not in client.get_run(parent).data.tags:
            client.set_tag(parent, "dataset_fingerprint", fingerprint)
    return fingerprint


def log_figure(fig: "Figure", name: str) -> None:
    """Log a matplotlib figure under `figures/` of the active run."""
    mlflow.log_figure(fig, f"figures/{name if name.endswith('.png') else name + '.png'}")


def log_table(table: "pd.DataFrame", name: str) -> None:
    """Log a DataFrame as a CSV artifact under `tables/` of the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (name if name.endswith(".csv") else name + ".csv")
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), "tables")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run, skipping values that are not finite numbers."""
    clean = {key: float(value) for key, value in metrics.items() if _is_number(value)}
    mlflow.log_metrics(clean, step=step)


def _is_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and abs(number) != float("inf")


def finish_run(run_id: str, ok: bool) -> None:
    """Set a run's final status (the runner calls this once the notebook's kernel has exited)."""
    status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
    MlflowClient().set_terminated(run_id, status=status)
