"""The tracking store and runs: where runs live, how notebooks start and finish them, and what they log."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from fer_lab import __version__, project
from fer_lab._shared import chunks
from fer_lab.errors import ConfigError
from fer_lab.tracking.local import default_tracking_uri
from fer_lab.tracking.owners import HOST_TAG, PID_TAG, owner_alive, owner_tags

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_EXPERIMENT = "fer-lab"
TRAIN_NOTEBOOK = "03_train"  # the notebook whose runs hold the models and, after 04, their test numbers
MODEL_ARTIFACT = "model"
UNFINISHED = ("RUNNING", "FAILED", "KILLED", "SCHEDULED")
PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
METRICS_PER_REQUEST = 500  # MLflow accepts at most 1000 metrics per request
# A notebook whose run carries this tag (value: the reason) ends its pipeline there, as a success:
# a sweep trial pruned in 03_train is not evaluated by 04.
STOP_TAG = "fer_lab.stop_pipeline"


# --- the store ----------------------------------------------------------------------------------
def configure(tracking_uri: str = "") -> str:
    """Point MLflow at `tracking_uri`, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(PROGRESS_BAR_VARIABLE, "false")  # download bars would fill the notebooks' outputs
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
    """Tags every fer-lab run carries: its code, so a number can be traced back to it, and the process that
    owns the run (see `fail_orphaned_runs`)."""
    return {"git_commit": git_commit(), "fer_lab_version": __version__, **owner_tags()}


# --- search filters ---------------------------------------------------------------------------
def quoted(value: Any) -> str:
    """`value` as a string literal of MLflow's search syntax, which has no escape for a quote: a value
    holding `'` goes in double quotes; one holding both, or ending in a backslash (which would escape
    the closing quote), cannot be written and is refused."""
    text = str(value)
    quote = "'" if "'" not in text else '"'
    if quote in text or text.endswith("\\"):
        raise ConfigError(f"cannot search MLflow for {text!r}: a value may hold ' or \" but not both, "
                          "and may not end with a backslash")
    return f"{quote}{text}{quote}"


def _key(name: str) -> str:
    if "`" in name or not name.strip():
        raise ConfigError(f"cannot search MLflow for key {name!r}: keys may not be empty or hold backticks")
    return f"`{name}`"


def search_filter(*, tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
                  parent_run_id: str = "", run_name: str = "", finished_only: bool = False) -> str:
    """An MLflow filter string matching runs that have all of the given tags, params and attributes.

    Args:
        tags: Tag values the runs must carry.
        params: Parameter values the runs must have (compared as strings).
        parent_run_id: When set, only children of this run.
        run_name: When set, only runs of this name.
        finished_only: Only runs whose status is FINISHED.

    Returns:
        The clauses joined with `and` ("" for no condition); every value is quoted safely.
    """
    clauses = [f"tags.{_key(key)} = {quoted(value)}" for key, value in (tags or {}).items()]
    clauses += [f"params.{_key(key)} = {quoted(value)}" for key, value in (params or {}).items()]
    if parent_run_id:
        clauses.append(f"tags.`mlflow.parentRunId` = {quoted(parent_run_id)}")
    if run_name:
        clauses.append(f"attributes.run_name = {quoted(run_name)}")
    if finished_only:
        clauses.append("attributes.status = 'FINISHED'")
    return " and ".join(clauses)


# --- runs ---------------------------------------------------------------------------------------
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

    Args:
        notebook: The notebook's name, logged as tag `notebook`.
        params: The parameters to log (long values are cut to MLflow's limit).
        tracking_uri: The store; empty: see `configure`.
        experiment: The experiment's name, created when missing.
        parent_run_id: The pipeline run this run belongs to, if any.
        run_name: Names the run; an unfinished run of `notebook` with this name is resumed.

    Returns:
        The active run.
    """
    exp_id = experiment_id(experiment, tracking_uri)
    mlflow.set_experiment(experiment_id=exp_id)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    resumed = _resumable_run(exp_id, notebook, run_name) if run_name else None
    if resumed:
        _check_unchanged_params(resumed, run_name, params)
        run = mlflow.start_run(run_id=resumed)
        if parent_run_id:
            mlflow.set_tag("mlflow.parentRunId", parent_run_id)
    else:
        run = mlflow.start_run(run_name=run_name or notebook, parent_run_id=parent_run_id or None)
    mlflow.set_tags({**base_tags(), "notebook": notebook, "resumed": str(bool(resumed)).lower()})
    log_params(params)
    return run


def _resumable_run(exp_id: str, notebook: str, run_name: str) -> str | None:
    """The newest unfinished run of `notebook` named `run_name`, if any."""
    runs = MlflowClient().search_runs(
        [exp_id], filter_string=search_filter(tags={"notebook": notebook}, run_name=run_name),
        order_by=["attributes.start_time DESC"],
    )
    return next((run.info.run_id for run in runs if run.info.status in UNFINISHED), None)


def _check_unchanged_params(run_id: str, run_name: str, params: Mapping[str, Any]) -> None:
    """A resumed run keeps its parameters: a changed one is an error naming it (MLflow would refuse it later)."""
    logged = MlflowClient().get_run(run_id).data.params
    changed = sorted((key, logged[key], value) for key, value in _param_texts(params).items()
                     if key in logged and logged[key] != value)
    if changed:
        key, old, new = changed[0]
        more = f" and {len(changed) - 1} other parameter(s)" if len(changed) > 1 else ""
        raise ConfigError(f"run_name {run_name!r} names an unfinished run ({run_id}) that was started with {key}={old}, "
                          f"not {new}{more}: resume it with the same parameters, or choose another run_name")


def active_run_id() -> str:
    """The id of the active run ("" when there is none)."""
    run = mlflow.active_run()
    return run.info.run_id if run is not None else ""


def active_parent_run_id() -> str:
    """The pipeline parent of the active run ("" when there is no active run or it has no parent)."""
    run = mlflow.active_run()
    return (run.data.tags.get("mlflow.parentRunId") or "") if run is not None else ""


def create_run(exp_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """Create a run without making it active (the runner's pipeline parent, a notebook that never started one)."""
    return MlflowClient().create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id


def notebook_run(exp_id: str, parent_run_id: str, notebook: str) -> str:
    """The run `notebook` started under `parent_run_id`, or a new one holding a notebook that never got there."""
    runs = MlflowClient().search_runs(
        [exp_id], filter_string=search_filter(tags={"notebook": notebook}, parent_run_id=parent_run_id),
        order_by=["attributes.start_time DESC"],
    )
    if runs:
        return runs[0].info.run_id
    return create_run(exp_id, notebook, {**base_tags(), "notebook": notebook, "mlflow.parentRunId": parent_run_id})


def finish_run(run_id: str, ok: bool, status: str = "") -> None:
    """Set a run's final status: FINISHED or FAILED by `ok`, or `status` (KILLED for an interrupt)."""
    status = status or RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
    MlflowClient().set_terminated(run_id, status=status)


def fail_orphaned_runs(exp_id: str) -> list[str]:
    """End as FAILED the RUNNING runs of `exp_id` whose owning process on this host is gone (`kill -9`).

    A run whose parent is still RUNNING under a live process is left alone: its pipeline ends it.

    Args:
        exp_id: The experiment searched.

    Returns:
        The ids of the runs marked FAILED, each tagged `fer_lab.orphaned` with the reason.
    """
    client = MlflowClient()
    mine = search_filter(tags={HOST_TAG: socket.gethostname()})
    running = {run.info.run_id: run
               for run in client.search_runs([exp_id], f"{mine} and attributes.status = 'RUNNING'", max_results=1000)}

    def alive(run_id: str) -> bool:
        run = running.get(run_id)
        return run is not None and owner_alive(run.data.tags) is not False

    failed = []
    for run_id, run in running.items():
        tags = run.data.tags
        if owner_alive(tags) is not False or alive(tags.get("mlflow.parentRunId", "")):
            continue
        client.set_tag(run_id, "fer_lab.orphaned",
                       f"its process {tags[PID_TAG]} on {tags[HOST_TAG]} ended without closing the run; "
                       f"marked FAILED at {time.strftime('%Y-%m-%d %H:%M:%S')} by process {os.getpid()}")
        client.set_terminated(run_id, status="FAILED")
        failed.append(run_id)
    return failed


# --- logging: to the active run, or to `run_id` ------------------------------------------------------
def log_params(params: Mapping[str, Any], run_id: str = "") -> None:
    """Log parameters to the active run, or to `run_id`; values over MLflow's 6000 characters are cut."""
    values = _param_texts(params)
    if run_id:
        for key, value in values.items():
            MlflowClient().log_param(run_id, key, value)
    else:
        mlflow.log_params(values)


def _param_texts(params: Mapping[str, Any]) -> dict[str, str]:
    texts = {key: str(value) for key, value in params.items()}
    return {key: text if len(text) <= 6000 else text[:5997] + "..." for key, text in texts.items()}


def set_tags(tags: Mapping[str, Any], run_id: str = "") -> None:
    """Set tags on the active run, or on `run_id` (which may be finished)."""
    if run_id:
        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    else:
        mlflow.set_tags(dict(tags))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run, skipping values that are not finite numbers."""
    mlflow.log_metrics({key: float(value) for key, value in metrics.items() if _is_number(value)}, step=step)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str = "") -> None:
    """Log one file to the active run, or to `run_id`, under `artifact_path`."""
    if run_id:
        MlflowClient().log_artifact(run_id, str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(folder: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Log every file under `folder` to the active run, under `artifact_path` (nothing when it does not exist)."""
    if Path(folder).is_dir():
        mlflow.log_artifacts(str(folder), artifact_path)


def log_figure(fig: "Figure", name: str) -> None:
    """Log a matplotlib figure under `figures/` of the active run."""
    mlflow.log_figure(fig, f"figures/{name if name.endswith('.png') else name + '.png'}")


def log_table(table: pd.DataFrame, name: str) -> None:
    """Log a DataFrame as a CSV artifact under `tables/` of the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (name if name.endswith(".csv") else name + ".csv")
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), "tables")


def tag_dataset(fingerprint: str) -> str:
    """Tag the active run with a manifest's fingerprint, and its pipeline parent unless already tagged.

    The parent keeps the first fingerprint it gets (01's full manifest), not a later filtered one.
    """
    if not isinstance(fingerprint, str):  # the old call passed the manifest, which MLflow would stringify
        raise ConfigError("pass the fingerprint: tracking.tag_dataset(data.manifest_fingerprint(manifest))")
    run = mlflow.active_run()
    if run is not None:
        mlflow.set_tag("dataset_fingerprint", fingerprint)
        client = MlflowClient()
        parent = client.get_run(run.info.run_id).data.tags.get("mlflow.parentRunId")
        if parent and "dataset_fingerprint" not in client.get_run(parent).data.tags:
            client.set_tag(parent, "dataset_fingerprint", fingerprint)
    return fingerprint


def log_dataset(table: pd.DataFrame, name: str, source: str, context: str = "training") -> str:
    """Log the rows a run trains or tests on as an MLflow dataset input of the active run; return its digest.

    The digest (MLflow's hash of the rows) tells apart the raw, face-filtered, relabelled and
    subsampled versions of a dataset, which the name describes; the UI shows it under the run's inputs.

    Args:
        table: The rows (paths and labels; no pixels).
        name: Names the dataset, e.g. `sample:ferplus:filtered:50-per-class`.
        source: Where the data lives (a path or URI).
        context: The input's role, e.g. `training`.

    Returns:
        The dataset's digest.
    """
    with warnings.catch_warnings():
        # A local path matches two registered source types that are the same class; MLflow warns and picks it.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(table.reset_index(drop=True), source=str(source), name=name,
                                          targets="label" if "label" in table else None)
    mlflow.log_input(dataset, context=context)
    return str(dataset.digest)


def log_to_run(run_id: str, metrics: Mapping[str, float], artifacts: Sequence[str | os.PathLike[str]] = (),
               tags: Mapping[str, str] | None = None) -> None:
    """Add metrics, tags and files to another run, which may be finished.

    04_evaluate records its numbers on the training run this way, so that 05_compare finds them next
    to the parameters that produced them.

    Args:
        run_id: The run to add to.
        metrics: Logged at step 0; values that are not finite numbers are skipped.
        artifacts: Files logged at the run's artifact root.
        tags: Tags to set.

    Returns:
        None; the run's status is left as it is.
    """
    client = MlflowClient()
    set_tags(tags or {}, run_id)
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, 0) for key, value in metrics.items() if _is_number(value)]
    for part in chunks(batch, METRICS_PER_REQUEST):
        client.log_batch(run_id, metrics=list(part))
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact))


