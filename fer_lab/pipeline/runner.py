"""Run the notebook pipeline with papermill: parameters checked up front, every notebook tracked in MLflow."""

from __future__ import annotations

import ast
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import yaml

from fer_lab import _native, project, tracking
from fer_lab.errors import ConfigError, DataError
from fer_lab.pipeline import report
from fer_lab.pipeline.notebook import declared_parameters
from fer_lab.pipeline.report import NotebookResult, PipelineResult

if TYPE_CHECKING:
    from fer_lab.pipeline import kernels

INTERRUPTED = "KeyboardInterrupt: interrupted by the user"


def discover_notebooks(notebooks_dir: Path = project.NOTEBOOKS_DIR) -> list[Path]:
    """The pipeline's notebooks, `NN_name.ipynb`, in their numbered order."""
    return sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(notebooks: list[Path], only: Iterable[str]) -> list[Path]:
    """The notebooks named in `only`, by full name (`03_train`) or number (`03`), in pipeline order."""
    wanted = set(only)
    missing = wanted - {nb.stem for nb in notebooks} - {nb.stem.split("_")[0] for nb in notebooks}
    if missing:
        known = ", ".join(nb.stem for nb in notebooks)
        raise ConfigError(f"--only {' '.join(sorted(missing))}: no such notebook ({known})")
    return [nb for nb in notebooks if nb.stem in wanted or nb.stem.split("_")[0] in wanted]


def load_params_files(files: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Merge params YAML files (`shared:` and `notebooks: {name: {...}}`), later files winning."""
    merged: dict[str, Any] = {"shared": {}, "notebooks": {}}
    for file in files:
        path = project.resolve(file)
        if not path.is_file():
            raise ConfigError(f"{file}: params file not found")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML ({error})") from error
        if not isinstance(content, dict):
            raise ConfigError(f"{file}: expected top-level keys shared/notebooks, found a {type(content).__name__}")
        unknown = set(content) - {"shared", "notebooks", "description"}
        if unknown:
            raise ConfigError(f"{file}: expected top-level keys shared/notebooks, found {sorted(unknown)}")
        sections = {key: content.get(key) or {} for key in ("shared", "notebooks")}
        for key, section in sections.items():
            if not isinstance(section, dict):
                raise ConfigError(f"{file}: `{key}` must map names to values, not a {type(section).__name__}")
        merged["shared"].update(sections["shared"])
        for name, values in sections["notebooks"].items():
            if not isinstance(values or {}, dict):
                raise ConfigError(f"{file}: notebooks.{name} must map parameter names to values")
            merged["notebooks"].setdefault(name, {}).update(values or {})
    return merged


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn `key=value` / `NN_name.key=value` strings into a dict, values read as YAML scalars."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-p {pair}: expected key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"-p {pair}: the value is not a YAML scalar ({error})") from error
    return overrides


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Params with `key` overrides put in `shared` and `NN_name.key` overrides in that notebook's section."""
    merged = {"shared": dict(params.get("shared", {})),
              "notebooks": {name: dict(values) for name, values in params.get("notebooks", {}).items()}}
    for key, value in overrides.items():
        name, dot, param = key.rpartition(".")
        if dot:
            merged["notebooks"].setdefault(name, {})[param] = value
        else:
            merged["shared"][key] = value
    return merged


def plan_parameters(notebooks: list[Path], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each notebook's injected parameters; any name no notebook declares is an error, before anything runs."""
    declared = {nb.stem: declared_parameters(nb) for nb in notebooks}
    planned: dict[str, dict[str, Any]] = {name: {} for name in declared}
    for key, value in params.get("shared", {}).items():
        users = [name for name, names in declared.items() if key in names]
        if not users:
            raise ConfigError(f"unknown parameter '{key}': no notebook declares it")
        for name in users:
            planned[name][key] = _checked_value(name, key, value, declared[name][key])
    for name, values in params.get("notebooks", {}).items():
        if name not in declared:
            raise ConfigError(f"unknown notebook '{name}' (notebooks: {', '.join(declared)})")
        for key, value in values.items():
            if key not in declared[name]:
                raise ConfigError(
                    f"unknown parameter '{key}' for {name} (it declares: {', '.join(declared[name])})"
                )
            planned[name][key] = _checked_value(name, key, value, declared[name][key])
    return planned


def _checked_value(notebook: str, key: str, value: Any, default_source: str) -> Any:
    """`value` when it has the type of the parameter's default (ints pass where floats are expected)."""
    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return value  # a default computed by code: nothing to compare with
    expected: tuple[type, ...] = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,),
                                  dict: (dict,)}.get(type(default), (object,))
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise ConfigError(f"{notebook}.{key} = {value!r}: expected {' or '.join(t.__name__ for t in expected)}, "
                          f"like its default {default!r}")
    return value


def _drop_native_noise(notebook: Path) -> None:
    """Remove TensorFlow's C++ start-up lines from the executed notebook's stderr outputs (a notebook that
    imports TensorFlow itself, not through fer_lab's quiet start, still prints them)."""
    import nbformat

    executed = nbformat.read(notebook, as_version=4)
    changed = False
    for cell in (cell for cell in executed.cells if "outputs" in cell):
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = _native.drop_noise(output["text"])
                changed |= text != output["text"]
                if not text.strip():
                    continue
                output["text"] = text
            kept.append(output)
        cell["outputs"] = kept
    if changed:
        nbformat.write(executed, notebook)


def _export_html(notebook: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(notebook))
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _execute(notebook: Path, output: Path, parameters: Mapping[str, Any], kernel: kernels.WarmKernel,
             log: Any) -> tuple[str, bool]:
    """Run one notebook with papermill in `kernel`; return its error ("" when it ran through) and whether
    it was interrupted."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from fer_lab.pipeline import kernels

    try:
        kernel.ready()
        papermill.execute_notebook(
            str(notebook), str(output), parameters=dict(parameters), kernel_name=kernel.manager.kernel_name,
            km=kernel.manager, cwd=str(notebook.parent), progress_bar=False,
            start_timeout=kernels.KERNEL_START_TIMEOUT,
            stdout_file=_Echo(log),
        )
    except PapermillExecutionError as failure:
        return f"{failure.ename}: {failure.evalue}", failure.ename == "KeyboardInterrupt"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the CLI
        return INTERRUPTED, True
    except Exception as failure:  # a kernel that died or never started still gets reported, not raised
        return f"{type(failure).__name__}: {failure}", False
    return "", False


class _Echo:
    """What a running notebook prints (03's epoch lines, for one), passed on to `log` as it happens."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.log(f"    | {line}")

    def flush(self) -> None:
        """Nothing is buffered."""


def resolve_data(shared: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Settle the shared `data_dir` (`data_dir` over the params', else the embedded sample) and `work_dir`.

    Args:
        shared: The params' `shared` section, updated in place.
        data_dir: The dataset given on the command line, if any.

    Returns:
        The absolute dataset path (the sample is generated first when it is the one named).
    """
    from fer_lab.data.synthetic import resolve_dataset

    if data_dir is not None:
        shared["data_dir"] = str(project.resolve(data_dir))
    data_path = resolve_dataset(shared.get("data_dir", project.SAMPLE_DIR))
    if not data_path.exists():
        raise DataError(f"{data_path}: dataset not found")
    shared["data_dir"] = str(data_path)
    shared.setdefault("work_dir", str(project.WORK_DIR / data_path.name.removesuffix(".csv").removesuffix(".gz")))
    return data_path


def run_pipeline(
    data_dir: str | os.PathLike[str] | None = None,
    params_files: Iterable[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    only: Iterable[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
    notebooks_dir: Path = project.NOTEBOOKS_DIR,
    log: Any = print,
) -> PipelineResult:
    """Execute the numbered notebooks in order, tracked under one MLflow parent run.

    Stops at the first failing notebook; its executed copy (with the error) is kept and linked.

    Args:
        data_dir: The dataset (default: the params' `data_dir`, else the embedded sample).
        params_files: Params YAML files, later ones winning (see `load_params_files`).
        overrides: `key` / `NN_name.key` values over the params files (see `apply_overrides`).
        only: Run only these notebooks, by name or number.
        out_dir: The report folder (default: reports/<timestamp>-<dataset>).
        tags: Extra tags of the parent run.
        notebooks_dir: Where the numbered notebooks are.
        log: Called with one line per step.

    Returns:
        The parent run, the report folder and each executed notebook's result.
    """
    notebooks = discover_notebooks(notebooks_dir)
    if not notebooks:
        raise ConfigError(f"{notebooks_dir}: no NN_name.ipynb notebooks")
    selected = select_notebooks(notebooks, only) if only else notebooks
    # Jupyter's kernels (pyzmq, traitlets) load here, not with the module: `fer-lab train` plans
    # parameters on machines without Jupyter.
    from fer_lab.pipeline import kernels

    params = apply_overrides(load_params_files(params_files), overrides or {})
    shared = params["shared"]
    data_path = resolve_data(shared, data_dir)
    uri = tracking.configure(shared.get("tracking_uri", ""))
    shared["tracking_uri"] = uri
    experiment = shared.setdefault("experiment", tracking.DEFAULT_EXPERIMENT)
    shared["parent_run_id"] = ""
    planned = plan_parameters(notebooks, params)

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # MLflow's download bars would fill the executed notebooks that reviewers read.
    os.environ.setdefault(tracking.PROGRESS_BAR_VARIABLE, "false")
    kernels.quiet_kernel_deaths()
    pool = kernels.Kernels(selected, kernels.kernel_name(), notebooks_dir)
    interrupted = False
    with kernels.noted_interrupts() as noted:
        try:
            pool.prepare(0)  # the first notebook's imports load while the tracking store opens
            experiment_id = tracking.experiment_id(experiment, uri)
            orphans = tracking.fail_orphaned_runs(experiment_id)
            if orphans:
                log(f"{len(orphans)} run(s) left RUNNING by a killed process marked FAILED: {', '.join(orphans)}")
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            parent_id = tracking.create_run(
                experiment_id, f"pipeline-{stamp}",
                {**tracking.base_tags(), "pipeline": "true", "data_dir": str(data_path), **(tags or {})},
            )
            # The run id in the name: two pipelines started in the same second still get folders of their own.
            report_dir = Path(out_dir) if out_dir else project.REPORTS_DIR / f"{stamp}-{data_path.stem}-{parent_id[:8]}"
            report_dir.mkdir(parents=True, exist_ok=True)
            summary_dir = report.summary_dir(project.resolve(shared["work_dir"]), parent_id)
            tracking.log_params({key: value for key, value in shared.items()
                                 if key not in ("tracking_uri", "parent_run_id")}, run_id=parent_id)
            result = PipelineResult(parent_run_id=parent_id, report_dir=report_dir, tracking_uri=uri,
                                    experiment=experiment)
            log(f"pipeline run {parent_id} -> {report_dir}")
            for index, notebook in enumerate(selected):
                name = notebook.stem
                output = report_dir / notebook.name
                parameters = {key: parent_id if key == "parent_run_id" else value
                              for key, value in planned[name].items()}
                log(f"[{index + 1}/{len(selected)}] {name} ...")
                started = time.perf_counter()
                current = None
                try:
                    current = pool.take(index)
                    error, interrupted = _execute(notebook, output, parameters, current, log)
                except KeyboardInterrupt:  # while a kernel started
                    error, interrupted = INTERRUPTED, True
                finally:
                    if current is not None:
                        current.close()
                interrupted = interrupted or bool(noted)
                seconds = time.perf_counter() - started
                if output.exists():
                    _drop_native_noise(output)
                html_path = _export_html(output) if output.exists() else None
                run_id = tracking.notebook_run(experiment_id, parent_id, name)
                for artifact in (output, html_path):
                    if artifact is not None and artifact.exists():
                        tracking.log_artifact(artifact, "notebook", run_id=run_id)
                tracking.finish_run(run_id, ok=not error, status="KILLED" if interrupted else "")
                result.notebooks.append(NotebookResult(name, output, html_path, not error, seconds, run_id, error))
                log(f"    {'ok' if not error else 'FAILED'} in {seconds:.1f} s" + (f": {error}" if error else ""))
                if error:
                    break
                stop = tracking.run_tags(run_id).get(tracking.STOP_TAG) if index + 1 < len(selected) else None
                if stop:
                    log(f"    the pipeline ends here: {stop}")
                    break
        finally:
            pool.close()
    tracking.finish_run(parent_id, ok=result.ok, status="KILLED" if interrupted else "")
    report.write_index(result, summary_dir)
    if interrupted:  # every run is closed and the partial report written: now stop as asked
        raise KeyboardInterrupt
    return result
