"""Finding runs and reading them back: explicit ids, a pipeline's training run, params, metrics and tables."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from fer_lab.errors import ConfigError, DataError
from fer_lab.tracking.registry import resolve
from fer_lab.tracking.store import TRAIN_NOTEBOOK, quoted, search_filter

_RUN_ID = re.compile(r"^[0-9A-Za-z_-]+$")


def find_runs(experiment: str, *, run_ids: Sequence[str] = (), parent_run_id: str = "",
              tags: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
              finished_only: bool = False, max_runs: int = 20) -> pd.DataFrame:
    """Training runs of `experiment`, newest first, one row per run as `mlflow.search_runs` returns them.

    Args:
        experiment: The experiment's name (none of that name: no runs).
        run_ids: Picks runs explicitly, in this order; the other filters are then ignored.
        parent_run_id: Only children of this pipeline run.
        tags: Tags the runs must carry besides `notebook=03_train`.
        params: Parameters the runs must have.
        finished_only: Only finished runs.
        max_runs: At most this many runs.

    Returns:
        Columns `run_id`, `status`, `params.*`, `metrics.*`, `tags.*` and the other run attributes.
    """
    if run_ids:
        bad = [run_id for run_id in run_ids if not _RUN_ID.match(str(run_id))]
        if bad:
            raise ConfigError(f"{bad} are not MLflow run ids")
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="pandas",
                                  filter_string=f"attributes.run_id IN ({', '.join(map(quoted, run_ids))})")
        missing = sorted(set(run_ids) - set(runs["run_id"])) if not runs.empty else sorted(run_ids)
        if missing:
            raise ConfigError(f"runs {missing} are not in experiment {experiment!r}")
        return runs.set_index("run_id").loc[list(run_ids)].reset_index()
    return mlflow.search_runs(
        experiment_names=[experiment], output_format="pandas", max_results=max_runs,
        filter_string=search_filter(tags={"notebook": TRAIN_NOTEBOOK, **(tags or {})}, params=params,
                                    parent_run_id=parent_run_id, finished_only=finished_only),
        order_by=["attributes.start_time DESC"])


def training_run_of(parent_run_id: str, experiment: str) -> str:
    """The 03_train run created under pipeline run `parent_run_id` ("" when the pipeline did not get there)."""
    runs = find_runs(experiment, parent_run_id=parent_run_id, max_runs=1)
    return str(runs["run_id"].iloc[0]) if not runs.empty else ""


def resolve_training_run(experiment: str, parent_run_id: str = "", run_id: str = "") -> str:
    """The training run to use: the run `run_id` names when given, else the 03_train run under
    `parent_run_id`, else the experiment's latest finished 03_train run.

    `run_id` is any model reference with a run behind it (`registry.resolve`): a run id, `runs:/ID/model`,
    `models:/NAME@ALIAS` or `models:/NAME/VERSION` (the version's source run).
    """
    if run_id:
        found = resolve(run_id).run_id
        if not found:
            raise ConfigError(f"{run_id!r} is a model file without an MLflow run; pass a tracked model "
                              "(a run id, runs:/ID/model, models:/NAME@ALIAS or models:/NAME/VERSION)")
        return found
    found = training_run_of(parent_run_id, experiment) if parent_run_id else ""
    if not found:
        runs = find_runs(experiment, tags={"has_model": "true"}, finished_only=True, max_runs=1)
        found = str(runs["run_id"].iloc[0]) if not runs.empty else ""
    if not found:
        raise ConfigError(f"experiment {experiment!r} has no finished {TRAIN_NOTEBOOK} run with a model; "
                          f"run {TRAIN_NOTEBOOK} first or pass model_run_id")
    return found


def run_params(run_id: str) -> dict[str, str]:
    """The parameters run `run_id` logged."""
    return dict(MlflowClient().get_run(run_id).data.params)


def run_tags(run_id: str) -> dict[str, str]:
    """The tags of run `run_id`."""
    return dict(MlflowClient().get_run(run_id).data.tags)


def metric_history(run_ids: Sequence[str], key: str, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table (run, step, value) of metric `key` over steps for each run; runs without it are skipped."""
    client = MlflowClient()
    rows = []
    for run_id, name in zip(run_ids, names if names is not None else run_ids):
        for point in client.get_metric_history(run_id, key):
            rows.append({"run": name, "step": point.step, "value": point.value})
    return pd.DataFrame(rows, columns=["run", "step", "value"])


def load_csv_artifact(run_id: str, artifact: str) -> pd.DataFrame:
    """The CSV file `artifact` of run `run_id`, read with empty cells kept as empty strings."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=scratch)
        except Exception as error:  # MLflow raises several types for a missing run or artifact
            raise DataError(f"run {run_id} has no artifact {artifact} ({type(error).__name__})") from error
        return pd.read_csv(Path(local), keep_default_na=False)


