"""Experiment sets: run the pipeline once per variant, then compare the variants in 05_compare.

An experiment file (`params/experiments/*.yaml`) looks like:

```yaml
description: What question the set answers.
params: [params/ci.yaml]        # optional params files for every variant (before --params)
overrides:                      # optional overrides for every variant, keys as `fer-lab run -p`
  03_train.epochs: 4
notebooks: [01, 02, 03, 04]     # optional; the notebooks each variant runs (default: all before 05)
resources: {cpus: 2, gpus: 0}   # optional; what one variant takes on a Ray cluster (`--executor ray`)
baseline: unfiltered            # optional; the variant 05_compare measures the others against
seeds: [0, 1, 2]                # optional; every variant runs once per seed
variants:                       # name -> overrides (may be empty: {}); two or more runs in all
  unfiltered: {02_filter_faces.apply_filter: false}
  filtered: {02_filter_faces.apply_filter: true}
```

Override keys are `name` (shared by every notebook declaring it) or `NN_notebook.name`, exactly as
`fer-lab run -p KEY=VALUE`; precedence is params files < `overrides` < the variant < command-line `-p`.

With `seeds`, each variant is an arm that runs once per seed as `ARM@seedN` (one variant with several seeds
is a set too: a recipe's spread over seeds). Its runs are tagged `variant=ARM` and `seed=N`, a run name a
notebook is given becomes `NAME-seedN` (runs of one name would resume each other), and 05_compare adds
each arm's mean and spread over the seeds and McNemar's test against the baseline arm seed by seed.

A set that asks another set's question on other terms names it with `extends: OTHER` and states only what
differs: its own keys replace the other set's, except `overrides` and `variants`, which patch the other
set's key by key (a variant name it lacks adds an arm); a null value drops an inherited override.

The report folder keeps `experiment.json`, written before the variants start and again after each one
that runs: what each variant runs with and how it went. Run again on that folder with `resume=True`
(`fer-lab run --experiment FILE --resume DIR`): an interrupted or partly failed set reuses the variants
that finished there with the same settings and runs only the others, so a set longer than one working
session can finish in the next.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fer_lab import project, tracking
from fer_lab._shared import write_atomic
from fer_lab.errors import ConfigError
from fer_lab.pipeline import report, runner
from fer_lab.pipeline.report import PipelineResult

COMPARE_NOTEBOOK = "05_compare"
EXPERIMENTS_DIR = project.PARAMS_DIR / "experiments"
_KEYS = {"description", "extends", "params", "overrides", "notebooks", "baseline", "variants", "resources", "seeds"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STATE_FILE = "experiment.json"
SEED_MARKER = "@seed"  # `ARM@seedN`: arm names cannot hold '@'


@dataclass(frozen=True)
class ExperimentSet:
    """A parsed experiment file; with `seeds`, `variants` holds one entry per arm and seed (see `arm_of`)."""

    name: str
    description: str
    params_files: tuple[str, ...]
    overrides: dict[str, Any]
    notebooks: tuple[str, ...]
    baseline: str
    variants: dict[str, dict[str, Any]]
    cpus: float = 1
    gpus: float = 0
    seeds: tuple[int, ...] = ()

    def arm_of(self, variant: str) -> tuple[str, int | None]:
        """The arm a variant belongs to and its seed (None for a set without `seeds`)."""
        arm, marker, seed = variant.rpartition(SEED_MARKER)
        return (arm, int(seed)) if self.seeds and marker else (variant, None)

    def tags(self, variant: str) -> dict[str, str]:
        """The MLflow tags of a variant's runs."""
        arm, seed = self.arm_of(variant)
        return {"experiment_set": self.name, "variant": arm, **({"seed": str(seed)} if seed is not None else {})}


@dataclass
class ExperimentResult:
    """Every variant's pipeline result, the comparison pipeline's result and the experiment's report folder."""

    experiment: ExperimentSet
    report_dir: Path
    variants: dict[str, PipelineResult] = field(default_factory=dict)
    training_runs: dict[str, str] = field(default_factory=dict)
    compare: PipelineResult | None = None
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        pipelines = [*self.variants.values(), *([self.compare] if self.compare is not None else [])]
        return (len(self.variants) == len(self.experiment.variants) and all(result.ok for result in pipelines)
                and self.compare is not None)

    @property
    def index(self) -> Path:
        return self.report_dir / "index.html"


def _find_set(file: str | os.PathLike[str], beside: Path | None = None) -> Path:
    """The experiment file `file` names: a path, or a set's name (with or without .yaml) beside the file that
    names it (for `extends`) or in params/experiments/."""
    folders = [beside] if beside is not None else []
    candidates = [project.resolve(file)] + [folder / name for folder in (*folders, EXPERIMENTS_DIR)
                                            for name in (Path(file).name, f"{Path(file).name}.yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{file}: experiment file not found (sets live in {EXPERIMENTS_DIR})")


def _patch(inherited: Mapping[str, Any], changes: Mapping[str, Any] | None) -> dict[str, Any]:
    """`inherited` with `changes` applied key by key; a null change drops the key."""
    patched = dict(inherited)
    for key, value in (changes or {}).items():
        if value is None:
            patched.pop(key, None)
        else:
            patched[key] = value
    return patched


def _read_set(file: str | os.PathLike[str], chain: tuple[Path, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """An experiment file's content with the set it `extends` (if any) merged in."""
    path = _find_set(file, chain[-1].parent if chain else None)
    if path in chain:
        raise ConfigError(f"{file}: 'extends' loops back to {path.name} ({' -> '.join(p.stem for p in chain)})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{file}: expected a mapping with a 'variants' key")
    unknown = sorted(set(content) - _KEYS)
    if unknown:
        raise ConfigError(f"{file}: unknown keys {unknown} (allowed: {sorted(_KEYS)})")
    for key in ("overrides", "variants"):
        if content.get(key) is not None and not isinstance(content[key], dict):
            raise ConfigError(f"{file}: '{key}' must be a mapping")
    for name, changes in (content.get("variants") or {}).items():
        if changes is not None and not isinstance(changes, dict):
            raise ConfigError(f"{file}: variant {name!r} must map override keys to values")
    if "extends" not in content:
        return path, content
    _, parent = _read_set(str(content["extends"]), (*chain, path))
    merged = {**parent, **{key: value for key, value in content.items() if key != "extends"}}
    merged["overrides"] = _patch(parent.get("overrides") or {}, content.get("overrides"))
    variants = {name: dict(values or {}) for name, values in (parent.get("variants") or {}).items()}
    for name, changes in (content.get("variants") or {}).items():
        variants[name] = _patch(variants.get(name, {}), changes)
    merged["variants"] = variants
    return path, merged


def load_experiment(file: str | os.PathLike[str]) -> ExperimentSet:
    """Parse and check an experiment file; a name relative to nothing is looked up in params/experiments/."""
    path, content = _read_set(file)
    variants = content.get("variants")
    seeds = _seeds(file, content.get("seeds"))
    if not isinstance(variants, dict) or len(variants) * max(1, len(seeds)) < 2:
        raise ConfigError(f"{file}: 'variants' must map at least two variant names to overrides "
                          "(or one, with two or more 'seeds')")
    for name in variants:
        if not _NAME.match(str(name)):
            raise ConfigError(f"{file}: variant name {name!r} must be letters, digits, '_', '-' or '.'")
        if seeds and "seed" in (variants[name] or {}):
            raise ConfigError(f"{file}: variant {name!r} sets 'seed', which the set's 'seeds' decide")
    baseline = str(content.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise ConfigError(f"{file}: baseline {baseline!r} is not a variant ({', '.join(map(str, variants))})")
    variants = {str(name): {str(k): v for k, v in (values or {}).items()} for name, values in variants.items()}
    if seeds:
        variants = {f"{name}{SEED_MARKER}{seed}": {**values, "seed": seed}
                    for name, values in variants.items() for seed in seeds}
        baseline = f"{baseline}{SEED_MARKER}{seeds[0]}"
    overrides = content.get("overrides") or {}
    resources = content.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"cpus", "gpus"} or not all(
            isinstance(value, (int, float)) and value >= 0 for value in resources.values()):
        raise ConfigError(f"{file}: 'resources' must map cpus and/or gpus to numbers >= 0")
    params = content.get("params") or []
    if isinstance(params, str):
        params = [params]
    return ExperimentSet(
        name=path.stem,
        description=str(content.get("description") or ""),
        params_files=tuple(map(str, params)),
        overrides={str(key): value for key, value in overrides.items()},
        notebooks=tuple(str(item).zfill(2) if isinstance(item, int) else str(item)
                        for item in content.get("notebooks") or ()),
        baseline=baseline,
        variants=variants,
        cpus=resources.get("cpus", 1),
        gpus=resources.get("gpus", 0),
        seeds=seeds,
    )


def _seeds(file: str | os.PathLike[str], value: Any) -> tuple[int, ...]:
    """The set's `seeds`: distinct non-negative integers, or none."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in value):
        raise ConfigError(f"{file}: 'seeds' must be a list of non-negative integers, e.g. [0, 1, 2]")
    if len(set(value)) != len(value):
        raise ConfigError(f"{file}: 'seeds' lists a seed twice ({value})")
    return tuple(value)


def variant_notebooks(experiment: ExperimentSet, available: Iterable[Path]) -> list[str]:
    """The notebooks each variant runs: the file's list, else every notebook numbered before 05_compare."""
    if experiment.notebooks:
        return list(experiment.notebooks)
    return [nb.stem for nb in available if nb.stem < COMPARE_NOTEBOOK]


def run_experiment(
    file: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    params_files: Iterable[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    notebooks_dir: Path = project.NOTEBOOKS_DIR,
    log: Any = print,
    executor: str = "local",
    address: str | None = None,
    local_cpus: int | None = None,
    resume: bool = False,
) -> ExperimentResult:
    """Run every variant of an experiment file through the pipeline, then 05_compare over their training runs.

    A failing variant does not stop the others; the comparison covers the variants that produced a
    training run. Each training run is tagged `experiment_set=<file stem>` and `variant=<name>`.

    Args:
        file: The experiment file, or its name in params/experiments/.
        data_dir: The dataset every variant runs on.
        params_files: Params files applied after the experiment's own.
        overrides: Overrides over everything else (`fer-lab run -p`).
        out_dir: The report folder (default: reports/<timestamp>-experiment-<name>).
        notebooks_dir: Where the numbered notebooks are.
        log: Called with one line per step.
        executor: `local` runs the variants one after another here; `ray` runs them as Ray tasks
            (see `fer_lab.pipeline.cluster`), in parallel as the cluster's resources allow.
        address: The Ray cluster to join (default $RAY_ADDRESS, else a new local cluster).
        local_cpus: CPUs of a new local Ray cluster (default: this machine's).
        resume: Continue the set in `out_dir`: reuse the variants its STATE_FILE records as finished with
            the settings they have now, run the others, then compare them all.

    Returns:
        Every variant's pipeline result, their training runs and the comparison's result.

    Raises:
        ConfigError: `resume` without an `out_dir` holding this set's STATE_FILE.
    """
    experiment = load_experiment(file)
    user_overrides = dict(overrides or {})
    files = [*experiment.params_files, *params_files]
    params = runner.load_params_files(files)
    shared = runner.apply_overrides(params, {**experiment.overrides, **user_overrides})["shared"]
    if executor == "ray":  # a local store with a remote cluster is refused before anything starts
        from fer_lab.pipeline import cluster

        uri = tracking.configure(str(shared.get("tracking_uri") or ""))
        cluster.require_shared_tracking(uri, remote=not cluster.is_local_address(address or os.environ.get("RAY_ADDRESS")))
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor}: expected local or ray")
    if resume and out_dir is None:
        raise ConfigError("resuming an experiment set needs the report folder of the run to continue")
    if experiment.seeds and "seed" in user_overrides:
        raise ConfigError(f"-p seed: the set {experiment.name} runs each variant with its seeds {list(experiment.seeds)}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = Path(out_dir) if out_dir else project.REPORTS_DIR / f"{stamp}-experiment-{experiment.name}"
    previous = _load_state(report_dir, experiment.name) if resume else {}
    report_dir.mkdir(parents=True, exist_ok=True)
    notebooks = variant_notebooks(experiment, runner.discover_notebooks(notebooks_dir))
    overrides = {name: _variant_overrides(experiment, name, params, user_overrides) for name in experiment.variants}
    settings = {name: _settings(data_dir, params, overrides[name], notebooks) for name in experiment.variants}
    result = ExperimentResult(experiment, report_dir)
    log(f"experiment {experiment.name}: {len(experiment.variants)} variants -> {report_dir}")
    for name, (earlier_settings, pipeline) in previous.items():
        if name not in settings or pipeline is None:
            continue
        if not pipeline.ok:
            log(f"== variant {name}: it failed in the run being resumed, so it runs again")
        elif earlier_settings != settings[name]:
            log(f"== variant {name}: its settings changed since the run being resumed, so it runs again")
        else:
            result.variants[name] = pipeline
            log(f"== variant {name}: reused, it finished in the run being resumed ({pipeline.parent_run_id})")
    pending = [name for name in experiment.variants if name not in result.variants]
    _save_state(report_dir, experiment.name, settings, result.variants)
    if executor == "ray":
        _run_on_ray(experiment, {name: overrides[name] for name in pending}, result, data_dir, files, shared,
                    settings, notebooks, notebooks_dir, address, local_cpus, log)
    for name in experiment.variants:
        if executor == "local" and name in pending:
            log(f"== variant {name}")
            result.variants[name] = runner.run_pipeline(
                data_dir=data_dir, params_files=files, overrides=overrides[name],
                only=notebooks, out_dir=report_dir / name, notebooks_dir=notebooks_dir, log=log,
                tags=experiment.tags(name))
            _save_state(report_dir, experiment.name, settings, result.variants)
        if name not in result.variants:
            continue
        pipeline = result.variants[name]
        training_run = tracking.training_run_of(pipeline.parent_run_id, pipeline.experiment)
        if training_run and pipeline.ok:  # 05 compares the variants that finished, not a 03 that failed
            tracking.set_tags(experiment.tags(name), run_id=training_run)
            result.training_runs[name] = training_run
    if len(result.training_runs) >= 2:
        baseline = experiment.baseline if experiment.baseline in result.training_runs else next(iter(result.training_runs))
        log("== comparison")
        result.compare = runner.run_pipeline(
            data_dir=data_dir, params_files=files,
            overrides={**experiment.overrides, **user_overrides,
                       f"{COMPARE_NOTEBOOK}.run_ids": ",".join(result.training_runs.values()),
                       f"{COMPARE_NOTEBOOK}.baseline_run_id": result.training_runs[baseline]},
            only=[COMPARE_NOTEBOOK], out_dir=report_dir / "compare", notebooks_dir=notebooks_dir, log=log,
            tags={"experiment_set": experiment.name})
    else:
        log(f"only {len(result.training_runs)} variant(s) produced a training run: no comparison")
    report.write_experiment_index(report_dir, experiment.name, experiment.description, result.variants,
                                  result.training_runs, result.compare)
    return result


def _run_on_ray(experiment: ExperimentSet, variants: Mapping[str, dict[str, Any]], result: ExperimentResult,
                data_dir: str | os.PathLike[str] | None, files: list[str], shared: Mapping[str, Any],
                settings: Mapping[str, dict[str, Any]], notebooks: list[str],
                notebooks_dir: Path, address: str | None, local_cpus: int | None, log: Any) -> None:
    """Each of `variants` (name -> its overrides) as a Ray task; each finished variant's pipeline result goes
    into `result.variants`.

    The set's STATE_FILE is saved after each variant that finishes, so a resume after a crash of this
    process keeps the variants that finished before it.
    """
    from fer_lab.pipeline import cluster

    uri = tracking.configure(str(shared.get("tracking_uri") or ""))
    executor = cluster.RayExecutor(uri, address, num_cpus=experiment.cpus, num_gpus=experiment.gpus,
                                   local_cpus=local_cpus, log=log)
    # Created here, once: variants creating a new sqlite store at the same moment collide on its tables.
    tracking.experiment_id(str(shared.get("experiment") or tracking.DEFAULT_EXPERIMENT), uri)
    with executor:
        for name, overrides in variants.items():
            executor.submit(cluster.VariantSpec(
                name, str(project.resolve(data_dir)) if data_dir else None, tuple(files),
                {**overrides, "tracking_uri": uri}, tuple(notebooks), experiment.tags(name), str(notebooks_dir)),
                result.report_dir / name)
        while executor.pending:
            outcome = executor.next_finished()
            result.timings[outcome.name] = (outcome.started, outcome.finished)
            if outcome.result is None:
                log(f"== variant {outcome.name} FAILED before its pipeline started: {outcome.error}")
                continue
            result.variants[outcome.name] = outcome.result
            _save_state(result.report_dir, experiment.name, settings, result.variants)
            failed = next((nb for nb in outcome.result.notebooks if not nb.ok), None)
            log(f"== variant {outcome.name} on {outcome.node}: "
                + (f"FAILED in {failed.name}: {failed.error}" if failed else "ok")
                + f" ({outcome.finished - outcome.started:.0f} s)")


def _variant_overrides(experiment: ExperimentSet, name: str, params: Mapping[str, Any],
                       user_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What variant `name` runs with over the params files: the set's overrides < the variant's < the command
    line's; a seeded arm's run gets its own name wherever a notebook is given one."""
    overrides = {**experiment.overrides, **experiment.variants[name], **user_overrides}
    _, seed = experiment.arm_of(name)
    if seed is None:
        return overrides
    merged = runner.apply_overrides(params, overrides)
    for notebook, values in [("", merged["shared"]), *merged["notebooks"].items()]:
        if values.get("run_name"):
            overrides[f"{notebook}.run_name" if notebook else "run_name"] = f"{values['run_name']}-seed{seed}"
    return overrides


def _settings(data_dir: str | os.PathLike[str] | None, params: Mapping[str, Any],
              overrides: Mapping[str, Any], notebooks: Iterable[str]) -> dict[str, Any]:
    """What decides a variant's result, as JSON values: a resumed set reuses a variant only if these are unchanged.

    The parameters are the merged contents of the params files with the overrides applied, so an edited
    params file counts as a change even where the set only names it.
    """
    parameters = runner.apply_overrides(params, overrides)
    return json.loads(json.dumps({"data_dir": str(project.resolve(data_dir)) if data_dir else None,
                                  "parameters": parameters, "notebooks": list(notebooks)}, default=str))


def _save_state(report_dir: Path, name: str, settings: Mapping[str, dict[str, Any]],
                variants: Mapping[str, PipelineResult]) -> None:
    """Record each variant's settings and, once it ran, its pipeline result in the set's STATE_FILE."""
    state = {"experiment_set": name,
             "variants": {variant: {"settings": settings[variant],
                                    "pipeline": variants[variant].to_dict() if variant in variants else None}
                          for variant in settings}}
    write_atomic(report_dir / STATE_FILE, json.dumps(state, indent=1).encode("utf-8"))


def _load_state(report_dir: Path, name: str) -> dict[str, tuple[dict[str, Any], PipelineResult | None]]:
    """Each variant recorded in the STATE_FILE of a report folder of this set: its settings and its result, if it ran."""
    path = report_dir / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{report_dir}: nothing to resume, no {STATE_FILE} (written by fer-lab run --experiment)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        recorded, records = state["experiment_set"], dict(state["variants"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not an experiment state file ({error})") from error
    if recorded != name:
        raise ConfigError(f"{report_dir} holds experiment set {recorded!r}, not {name!r}")
    variants = {}
    for variant, record in records.items():
        try:
            pipeline = record["pipeline"]
            variants[variant] = (dict(record["settings"]),
                                 None if pipeline is None else PipelineResult.from_dict(pipeline, report_dir / variant))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: variant {variant!r} has no valid record ({type(error).__name__}: {error})"
                              ) from error
    return variants
