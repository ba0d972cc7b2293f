"""Hyperparameter sweeps: an Optuna study over 03_train + 04_evaluate, each trial a pipeline run.

A sweep file (`params/sweeps/*.yaml`) looks like:

```yaml
description: What the sweep looks for.
params: [params/ci.yaml]         # params files for every trial
overrides: {03_train.ema: 0.0}   # fixed overrides for every trial, keys as `fer-lab run -p`
notebooks: [03, 04]              # what each trial runs (default 03, 04)
metric: val_accuracy             # 03's per-epoch metric: reported for pruning, its best value is the objective
pruner: {type: median, startup_trials: 2, warmup_epochs: 1}    # or {type: halving, min_epochs: 1, reduction: 3}
sampler: {seed: 0}               # TPE
parallel: 2                      # trials at once with --executor ray
resources: {cpus: 1, gpus: 0}    # what one trial takes on the Ray cluster
space:                           # parameter -> distribution
  03_train.label_smoothing: {low: 0.0, high: 0.2}
  03_train.phases/0/lr: {low: 0.0005, high: 0.01, log: true}    # /path reaches into a list or dict value
  03_train.cnn/widths: {choices: [[16, 32, 64], [32, 64, 128]]}
  03_train.mixup: {choices: [0.0, 0.2]}
```

The study lives in the tracking database (sqlite beside the MLflow store, or the team server's
PostgreSQL), named after the file, so a killed sweep run again resumes where it was: trials that were
running are marked failed and asked again. Every trial is a child run of the sweep's MLflow run, which
gets the best value, Optuna's history and importance plots and the best parameters as a params file.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fer_lab import project, tracking
from fer_lab.errors import ConfigError
from fer_lab.pipeline import cluster, runner
from fer_lab.pipeline.notebook import declared_parameters
from fer_lab.training.trials import PRUNED_ATTR, make_pruner

SWEEPS_DIR = project.PARAMS_DIR / "sweeps"
STORAGE_VARIABLE = "FER_LAB_OPTUNA_STORAGE"
TRAIN = "03_train"
_KEYS = {"description", "params", "overrides", "notebooks", "metric", "pruner", "sampler", "parallel", "resources",
         "space"}
_METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
_INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    path: Path
    description: str
    params_files: tuple[str, ...]
    overrides: dict[str, Any]
    notebooks: tuple[str, ...]
    metric: str
    pruner: dict[str, Any]
    seed: int | None
    parallel: int
    cpus: float
    gpus: float
    space: dict[str, dict[str, Any]]


@dataclass
class SweepResult:
    """The study after the sweep, its MLflow parent run, and the best parameters file."""

    sweep: Sweep
    study: Any
    parent_run_id: str
    report_dir: Path
    best_file: Path | None = None
    trials: dict[int, cluster.VariantOutcome] = field(default_factory=dict)


def load_sweep(file: str | os.PathLike[str]) -> Sweep:
    """Parse and check a sweep file; a bare name is looked up in params/sweeps/."""
    path = project.resolve(file)
    for candidate in (SWEEPS_DIR / Path(file).name, SWEEPS_DIR / f"{Path(file).name}.yaml"):
        if not path.is_file() and candidate.is_file():
            path = candidate
    if not path.is_file():
        raise ConfigError(f"{file}: sweep file not found (sweeps live in {SWEEPS_DIR})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("space"), dict) or not content["space"]:
        raise ConfigError(f"{file}: expected a mapping with a non-empty 'space' (parameter -> distribution)")
    unknown = sorted(set(content) - _KEYS)
    if unknown:
        raise ConfigError(f"{file}: unknown keys {unknown} (allowed: {sorted(_KEYS)})")
    metric = str(content.get("metric", "val_accuracy"))
    if metric not in _METRICS:
        raise ConfigError(f"{file}: metric {metric!r}: expected one of {', '.join(_METRICS)}")
    space = {str(key): _distribution(file, str(key), value) for key, value in content["space"].items()}
    resources = content.get("resources") or {}
    params = content.get("params") or []
    make_pruner(content.get("pruner"))  # checked now, not in the first trial's kernel
    return Sweep(
        name=path.name.removesuffix(".yaml"), path=path, description=str(content.get("description") or ""),
        params_files=tuple(map(str, [params] if isinstance(params, str) else params)),
        overrides={str(key): value for key, value in (content.get("overrides") or {}).items()},
        notebooks=tuple(str(item).zfill(2) if isinstance(item, int) else str(item)
                        for item in content.get("notebooks") or ("03", "04")),
        metric=metric, pruner=dict(content.get("pruner") or {}),
        seed=(content.get("sampler") or {}).get("seed"), parallel=max(1, int(content.get("parallel", 1))),
        cpus=resources.get("cpus", 1), gpus=resources.get("gpus", 0), space=space,
    )


def _distribution(file: str | os.PathLike[str], key: str, value: Any) -> dict[str, Any]:
    ok = isinstance(value, dict) and (
        (set(value) == {"choices"} and isinstance(value["choices"], list) and value["choices"])
        or ({"low", "high"} <= set(value) <= {"low", "high", "log", "step"}
            and all(isinstance(value[bound], (int, float)) for bound in ("low", "high"))))
    if not ok:
        raise ConfigError(f"{file}: space.{key} must be {{low: A, high: B[, log: true][, step: S]}} "
                          "or {choices: [...]}")
    return dict(value)


def optuna_storage(tracking_uri: str, explicit: str = "") -> str:
    """Where the study lives: `explicit`, else $FER_LAB_OPTUNA_STORAGE, else beside the tracking store.

    A local sqlite MLflow store gets `optuna.db` in the same folder; a tracking server started by
    `fer-lab server start` (services/server.json) gets its PostgreSQL database `optuna`.

    Raises:
        ConfigError: A tracking server this project did not start, and no storage given.
    """
    from fer_lab.tracking import server

    found = explicit or os.environ.get(STORAGE_VARIABLE, "")
    if found:
        return found
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    state = server.read_state()
    if state is not None and state.tracking_uri == tracking_uri:
        return state.optuna_storage
    raise ConfigError(f"no Optuna storage known for tracking store {tracking_uri}: set {STORAGE_VARIABLE} to a "
                      "database URL every worker reaches (e.g. postgresql+psycopg2://user:pass@host:port/optuna)")


def run_sweep(file: str | os.PathLike[str], trials: int, *, executor: str = "local", address: str | None = None,
              data_dir: str | os.PathLike[str] | None = None, params_files: tuple[str, ...] = (),
              overrides: Mapping[str, Any] | None = None, out_dir: str | os.PathLike[str] | None = None,
              storage: str = "", local_cpus: int | None = None, log: Any = print) -> SweepResult:
    """Run (or resume) the sweep until its study has `trials` finished trials, then report the best.

    Args:
        file: The sweep file, or its name in params/sweeps/.
        trials: Finished trials (complete, pruned or failed; not interrupted) the study should hold.
        executor: `local` (one trial after another here) or `ray` (`parallel` trials at once as Ray tasks).
        address: The Ray cluster to join (default $RAY_ADDRESS, else a new local cluster).
        data_dir: The dataset every trial runs on.
        params_files: Params files applied after the sweep's own.
        overrides: Fixed overrides over everything else.
        out_dir: The report folder (default reports/<timestamp>-sweep-<name>).
        storage: The Optuna storage URL (default: see `optuna_storage`).
        local_cpus: CPUs of a new local Ray cluster.
        log: Called with one line per step.

    Returns:
        The study, the sweep's MLflow run, the report folder and the best parameters file.
    """
    import optuna

    sweep = load_sweep(file)
    files = [*sweep.params_files, *params_files]
    fixed = {**sweep.overrides, **dict(overrides or {})}
    base = runner.apply_overrides(runner.load_params_files(files), fixed)
    uri = tracking.configure(str(base["shared"].get("tracking_uri") or ""))
    if executor == "ray":  # built first: it refuses a local store for a remote cluster before anything starts
        pool: Any = cluster.RayExecutor(uri, address, num_cpus=sweep.cpus, num_gpus=sweep.gpus,
                                        local_cpus=local_cpus, log=log)
    elif executor == "local":
        pool = cluster.LocalExecutor(log=log)
    else:
        raise ConfigError(f"--executor {executor}: expected local or ray")
    experiment = str(base["shared"].get("experiment") or tracking.DEFAULT_EXPERIMENT)
    experiment_id = tracking.experiment_id(experiment, uri)
    storage = optuna_storage(uri, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=sweep.name, storage=storage, load_if_exists=True,
                                direction=_METRICS[sweep.metric], pruner=make_pruner(sweep.pruner))
    # Offset by the trials so far: a resumed sweep must not replay the first run's seeded draws.
    study.sampler = optuna.samplers.TPESampler(seed=None if sweep.seed is None else sweep.seed + len(study.trials))
    parent_id = study.user_attrs.get("mlflow_parent_run_id") or tracking.create_run(
        experiment_id, f"sweep-{sweep.name}", {**tracking.base_tags(), "sweep": sweep.name})
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = Path(out_dir) if out_dir else project.REPORTS_DIR / f"{stamp}-sweep-{sweep.name}"
    result = SweepResult(sweep, study, parent_id, report_dir)
    _requeue_interrupted(study, log)
    public_storage, password = _without_password(storage)
    env = {"PGPASSWORD": password} if password else {}
    os.environ.update(env)  # for trials run here; Ray tasks get it with their spec
    log(f"sweep {sweep.name}: {_counted(study)}/{trials} trials done, study in {public_storage}, "
        f"MLflow run {parent_id} -> {report_dir}")
    defaults = declared_parameters(project.NOTEBOOKS_DIR / f"{TRAIN}.ipynb")
    running: dict[str, Any] = {}
    try:
        with pool:
            while _counted(study) + len(running) < trials or running:
                while _counted(study) + len(running) < trials and len(running) < (
                        sweep.parallel if executor == "ray" else 1):
                    trial = study.ask()
                    values = {key: _suggest(trial, key, spec) for key, spec in sweep.space.items()}
                    spec = cluster.VariantSpec(
                        f"trial-{trial.number:03d}", str(project.resolve(data_dir)) if data_dir else None, tuple(files),
                        {**_apply_values(base, fixed, values, defaults), "tracking_uri": uri,
                         f"{TRAIN}.monitor": sweep.metric, f"{TRAIN}.run_name": "",  # a recipe's resumable name
                         f"{TRAIN}.optuna_trial": {"storage": public_storage, "study": sweep.name,
                                                   "trial_id": trial._trial_id, "pruner": sweep.pruner}},
                        sweep.notebooks, {"mlflow.parentRunId": parent_id, "sweep": sweep.name,
                                          "trial": str(trial.number)}, env=env)
                    running[spec.name] = trial
                    pool.submit(spec, report_dir / spec.name)
                outcome = pool.next_finished()
                trial = running.pop(outcome.name)
                result.trials[trial.number] = outcome
                log(_finish_trial(study, trial, outcome, sweep.metric))
    except KeyboardInterrupt:
        for trial in running.values():  # the next run of the sweep asks these again
            _interrupted(study, trial.number)
        tracking.finish_run(parent_id, ok=False, status="KILLED")
        raise
    _report(result, files, fixed, defaults, log)
    return result


def _without_password(storage: str) -> tuple[str, str]:
    """The storage URL without its password, and the password (libpq reads it from $PGPASSWORD).

    Trials get the URL without it: 03's parameters are printed into its executed notebook.
    """
    from sqlalchemy.engine import URL, make_url

    url = make_url(storage)  # URL.set(password=None) would keep it: None there means "unchanged"
    public = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return public.render_as_string(hide_password=False), url.password or ""


def _counted(study: Any) -> int:
    return sum(1 for trial in study.get_trials(deepcopy=False)
               if trial.state.is_finished() and not trial.user_attrs.get(_INTERRUPTED))


def _requeue_interrupted(study: Any, log: Any) -> None:
    """Trials a killed sweep left running are marked failed and interrupted; their parameters are asked again."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        _interrupted(study, trial.number)
        log(f"trial {trial.number} was interrupted: its parameters are queued again")


def _interrupted(study: Any, number: int) -> None:
    """Fail a running trial as interrupted (not counted) and queue its parameters again."""
    import optuna

    trial = study.get_trials(deepcopy=False)[number]
    optuna.trial.Trial(study, trial._trial_id).set_user_attr(_INTERRUPTED, True)
    study.enqueue_trial(trial.params, skip_if_exists=False)
    study.tell(number, state=optuna.trial.TrialState.FAIL)


def _suggest(trial: Any, key: str, spec: Mapping[str, Any]) -> Any:
    if "choices" in spec:
        # Optuna's choices are scalars; lists (layer widths, phases) travel as their JSON text.
        texts = [json.dumps(choice) for choice in spec["choices"]]
        return json.loads(trial.suggest_categorical(key, texts))
    if all(isinstance(spec[bound], int) for bound in ("low", "high")) and isinstance(spec.get("step", 1), int):
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec.get("log", False),
                               step=spec.get("step"))


def _apply_values(base: Mapping[str, Any], fixed: Mapping[str, Any], values: Mapping[str, Any],
                  defaults: Mapping[str, str]) -> dict[str, Any]:
    """The trial's overrides: the fixed ones plus each sampled value, `/path`s set inside the parameter's value."""
    result = dict(fixed)
    for key, value in values.items():
        name, _, path = key.partition("/")
        if not path:
            result[name] = value
            continue
        notebook, dot, param = name.rpartition(".")
        if name not in result:
            current = (base["notebooks"].get(notebook, {}).get(param) if dot else None)
            if current is None:
                current = base["shared"].get(param)
            if current is None and notebook == TRAIN:
                import ast

                current = ast.literal_eval(defaults[param])
            result[name] = copy.deepcopy(current)
        target = result[name]
        *parents, last = path.split("/")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ConfigError(f"space key {key}: {name} holds no list or dict to set {path} in")
    return result


def _finish_trial(study: Any, trial: Any, outcome: cluster.VariantOutcome, metric: str) -> str:
    """Tell the study how the trial ended; one line for the log."""
    import optuna

    frozen = study.get_trials(deepcopy=False)[trial.number]
    reports = frozen.intermediate_values
    if outcome.result is None or not outcome.result.notebooks or not outcome.result.notebooks[0].ok:
        failed = outcome.result.notebooks if outcome.result else []
        error = outcome.error or next((nb.error for nb in failed if not nb.ok), "no notebook ran")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"trial {trial.number} FAILED: {error}"
    if PRUNED_ATTR in frozen.user_attrs:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"trial {trial.number} pruned after epoch {frozen.user_attrs[PRUNED_ATTR]} {trial.params}"
    if not reports:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"trial {trial.number} FAILED: 03 reported no epoch"
    value = (max if _METRICS[metric] == "maximize" else min)(reports.values())
    study.tell(trial, value)
    evaluated = "" if outcome.result.ok else " (a later notebook failed)"
    return f"trial {trial.number}: best {metric} {value:.4f}{evaluated} {trial.params}"


def _report(result: SweepResult, files: list[str], fixed: Mapping[str, Any], defaults: Mapping[str, str],
            log: Any) -> None:
    """The best trial as a params file, Optuna's plots and the best value on the sweep's run."""
    import optuna
    from optuna.visualization import matplotlib as plots

    study, sweep = result.study, result.sweep
    result.report_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        tracking.finish_run(result.parent_run_id, ok=False)
        log(f"sweep {sweep.name}: no trial completed, so no best parameters")
        return
    best = study.best_trial
    values = {key: json.loads(value) if key in sweep.space and "choices" in sweep.space[key] else value
              for key, value in best.params.items()}
    base = runner.load_params_files(files)
    chosen = runner.apply_overrides(base, {
        **{key: value for key, value in _apply_values(base, fixed, values, defaults).items()
           if key.rpartition(".")[2] not in ("tracking_uri", "work_dir", "optuna_trial")},
        f"{TRAIN}.monitor": sweep.metric, f"{TRAIN}.run_name": f"{sweep.name}-best"})
    content = {"description": f"Best trial {best.number} of sweep {sweep.name}: {sweep.metric} {best.value:.4f}",
               "shared": chosen["shared"], "notebooks": chosen["notebooks"]}
    text = yaml.safe_dump(content, sort_keys=False)
    result.best_file = sweep.path.with_name(f"{sweep.name}.best.yaml")
    result.best_file.write_text(text)
    (result.report_dir / result.best_file.name).write_text(text)
    artifacts = [result.report_dir / result.best_file.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        figures = {"optuna_history": lambda: plots.plot_optimization_history(study)}
        if len(complete) >= 2:
            figures["optuna_importance"] = lambda: plots.plot_param_importances(study)
        for name, draw in figures.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError) as failure:  # e.g. importances of a parameter that never varied
                log(f"{name}: not drawn ({failure})")
                continue
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            target = result.report_dir / f"{name}.png"
            figure.savefig(target, dpi=100, bbox_inches="tight")
            artifacts.append(target)
    tracking.log_to_run(result.parent_run_id, {f"best_{sweep.metric}": best.value, "best_trial": best.number,
                                               "trials": _counted(study)}, artifacts,
                        tags={"best_params": json.dumps(values)[:5000]})
    tracking.finish_run(result.parent_run_id, ok=True)
    log(f"best trial {best.number}: {sweep.metric} {best.value:.4f}; params file {result.best_file}")
