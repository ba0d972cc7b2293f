"""Optuna sweeps over the real 03_train on the sample: pruning, a kill and a resume, the best params file."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
import yaml

from fer_lab import project, tracking
from fer_lab.errors import ConfigError
from fer_lab.pipeline import runner, sweeps


def test_shipped_sweeps_parse_and_name_real_parameters():
    # A finished sweep writes NAME.best.yaml beside its file: a params file, not a sweep.
    files = sorted(file for file in sweeps.SWEEPS_DIR.glob("*.yaml") if not file.name.endswith(".best.yaml"))
    assert len(files) >= 3
    for file in files:
        sweep = sweeps.load_sweep(file)
        assert sweep.space and sweep.notebooks == ("03", "04")
        defaults = runner.plan_parameters(runner.discover_notebooks(), {"shared": {}, "notebooks": {}})
        base = runner.apply_overrides(runner.load_params_files(sweep.params_files), sweep.overrides)
        values = {key: spec["choices"][0] if "choices" in spec else spec["low"] for key, spec in sweep.space.items()}
        trial = sweeps._apply_values(base, sweep.overrides, values, sweeps.declared_parameters(
            project.NOTEBOOKS_DIR / "03_train.ipynb"))
        # Every sampled key lands on a parameter 03 declares (plan_parameters raises otherwise).
        planned = runner.plan_parameters(runner.discover_notebooks(), runner.apply_overrides(base, trial))
        assert set(planned) == set(defaults)


def test_space_paths_set_values_inside_a_parameter():
    base = {"shared": {}, "notebooks": {"03_train": {"phases": [{"name": "all", "lr": 0.1}], "augment": {"crop": 0}}}}
    trial = sweeps._apply_values(base, {}, {"03_train.phases/0/lr": 0.5, "03_train.augment/crop": 40,
                                            "03_train.mixup": 0.2}, {})
    assert trial == {"03_train.phases": [{"name": "all", "lr": 0.5}], "03_train.augment": {"crop": 40},
                     "03_train.mixup": 0.2}
    assert base["notebooks"]["03_train"]["phases"][0]["lr"] == 0.1  # the params are not changed in place


@pytest.mark.parametrize("content, message", [
    ("space: {}\n", "non-empty 'space'"),
    ("space: {03_train.mixup: {low: 0}}\n", "space.03_train.mixup"),
    ("space: {03_train.mixup: {choices: [0]}}\nmetric: f1\n", "metric 'f1'"),
    ("space: {03_train.mixup: {choices: [0]}}\npruner: {type: hyperband}\n", "pruner type"),
    ("space: {03_train.mixup: {choices: [0]}}\nbudget: 3\n", "unknown keys"),
])
def test_sweep_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        sweeps.load_sweep(path)


def test_the_study_lives_beside_a_local_store(tmp_path, monkeypatch):
    monkeypatch.delenv(sweeps.STORAGE_VARIABLE, raising=False)
    assert sweeps.optuna_storage(f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert sweeps.optuna_storage("http://x:5000", "sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
    with pytest.raises(ConfigError, match=sweeps.STORAGE_VARIABLE):
        sweeps.optuna_storage("http://203.0.113.9:5000")


def test_a_notebook_can_end_its_pipeline_as_a_success(tmp_path, write_notebook):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    start = ('from fer_lab import tracking\ntracking.start_notebook_run("{name}", {{}}, tracking_uri=tracking_uri,'
             ' experiment=experiment, parent_run_id=parent_run_id)\n')
    write_notebook(notebooks / "01_first.ipynb", "", start.format(name="01_first")
                   + 'tracking.set_tags({tracking.STOP_TAG: "nothing left to do"})\n')
    write_notebook(notebooks / "02_second.ipynb", "", 'raise ValueError("must not run")\n')
    lines: list[str] = []
    result = runner.run_pipeline(data_dir=tmp_path, notebooks_dir=notebooks, out_dir=tmp_path / "report",
                                 overrides={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                            "work_dir": str(tmp_path / "work")}, log=lines.append)
    assert result.ok and [nb.name for nb in result.notebooks] == ["01_first"]
    assert "    the pipeline ends here: nothing left to do" in lines


def tiny_sweep(tmp_path, sample_dir):
    """params/sweeps/ci.yaml with 03 alone (the objective is 03's) and a store in tmp_path."""
    content = yaml.safe_load((sweeps.SWEEPS_DIR / "ci.yaml").read_text())
    content["params"] = [str(project.resolve(file)) for file in content["params"]]
    content["notebooks"] = ["03"]
    content["overrides"].update({"tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                                 "work_dir": str(tmp_path / "work"), "data_dir": str(sample_dir)})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.extended
@pytest.mark.slow
def test_a_sweep_prunes_resumes_after_a_kill_and_writes_the_best_params(sample_dir, tmp_path):
    file = tiny_sweep(tmp_path, sample_dir)
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        first = subprocess.Popen([sys.executable, "-m", "fer_lab.cli", "sweep", str(file), "--trials", "6",
                                  "--out", str(tmp_path / "report")],
                                 cwd=project.ROOT, stdout=output, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 600
    while log.read_text().count("\ntrial ") < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(1)
    assert first.poll() is None, log.read_text()[-2000:]
    time.sleep(8)  # into the third trial's kernel
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) != 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.WAITING) == 1  # the interrupted trial's parameters, asked again
    assert sweeps._counted(study) == 2

    lines: list[str] = []
    result = sweeps.run_sweep(file, 6, out_dir=tmp_path / "report", log=lines.append)
    study = result.study
    assert sweeps._counted(study) == 6, lines
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned, lines
    interrupted = [trial for trial in study.trials if trial.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and study.trials[interrupted[0].number + 1].params == interrupted[0].params
    drawn = [json.dumps(trial.params, sort_keys=True) for trial in study.trials if trial not in interrupted]
    assert len(set(drawn)) == len(drawn)  # the resumed sampler does not replay the first run's draws
    assert result.best_file == tmp_path / "tiny.best.yaml"
    best = runner.load_params_files([result.best_file])
    assert best["notebooks"]["03_train"]["phases"][0]["lr"] == study.best_trial.params["03_train.phases/0/lr"]
    assert best["notebooks"]["03_train"]["monitor"] == "val_loss"

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracking.configure(uri)
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == 6
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "optuna_history.png", "optuna_importance.png", "tiny.best.yaml"}
    trials = client.search_runs([parent.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) >= 7 and all(run.data.tags["sweep"] == "tiny" for run in trials)
    pruned_runs = client.search_runs([parent.info.experiment_id], "tags.optuna_pruned = 'true'")
    assert len(pruned_runs) == len(pruned)
