"""Experiment sets across sessions: a set interrupted or partly failed is resumed in its report folder."""

import json
from pathlib import Path

import mlflow
import pytest

from fer_lab import cli
from fer_lab.errors import ConfigError
from fer_lab.pipeline import experiments

FAKE_TRAIN = '''
import mlflow
from fer_lab import tracking
if skill < 0:
    raise ValueError("negative skill")
tracking.start_notebook_run("03_train", {"skill": skill}, tracking_uri=tracking_uri, experiment=experiment,
                            parent_run_id=parent_run_id)
mlflow.log_metric("val_accuracy", 0.5 + 0.1 * skill)
'''

FAKE_COMPARE = '''
from fer_lab import tracking
tracking.start_notebook_run("05_compare", {"run_ids": run_ids, "baseline_run_id": baseline_run_id},
                            tracking_uri=tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
'''


def write_set(tmp_path, high: int, base_skill: int = 0) -> Path:
    """The set `skill`: variant low takes its skill from a params file, variant high sets its own."""
    (tmp_path / "base.yaml").write_text(f"notebooks:\n  03_train:\n    skill: {base_skill}\n")
    path = tmp_path / "skill.yaml"
    path.write_text(
        "description: Does skill pay?\n"
        f"params: ['{tmp_path / 'base.yaml'}']\n"
        f"overrides: {{tracking_uri: 'sqlite:///{tmp_path / 'mlflow.db'}', work_dir: '{tmp_path / 'work'}'}}\n"
        f"variants:\n  low: {{}}\n  high: {{03_train.skill: {high}}}\n")
    return path


def trained_with_skill(skill: int) -> list[str]:
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"params.skill = '{skill}'")
    return list(runs["run_id"])


@pytest.mark.extended  # three experiment-set runs of papermill notebooks
@pytest.mark.slow
def test_a_resumed_set_reuses_finished_variants_and_reruns_failed_or_changed_ones(tmp_path, write_notebook) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "03_train.ipynb", "skill = 0\n", FAKE_TRAIN)
    write_notebook(notebooks / "05_compare.ipynb", 'run_ids = ""\nbaseline_run_id = ""\n', FAKE_COMPARE)
    (tmp_path / "data").mkdir()
    file, report = write_set(tmp_path, high=-1), tmp_path / "report"

    def run(**options):
        lines: list[str] = []
        result = experiments.run_experiment(file, data_dir=tmp_path / "data", out_dir=report, notebooks_dir=notebooks,
                                            log=lines.append, **options)
        return result, lines

    first, _ = run()
    assert not first.ok and list(first.training_runs) == ["low"] and first.compare is None
    state = json.loads((report / experiments.STATE_FILE).read_text())
    assert state["experiment_set"] == "skill"
    assert state["variants"]["low"]["pipeline"]["notebooks"][0]["ok"]
    assert not state["variants"]["high"]["pipeline"]["notebooks"][0]["ok"]

    write_set(tmp_path, high=2)  # the failing variant fixed
    second, lines = run(resume=True)
    assert second.ok and second.training_runs["low"] == first.training_runs["low"]
    assert any(line.startswith("== variant low: reused") for line in lines) and "== variant high" in lines
    assert "== variant high: it failed in the run being resumed, so it runs again" in lines
    assert trained_with_skill(0) == [first.training_runs["low"]]  # reused, not trained again
    compared = mlflow.get_run(second.compare.notebooks[0].run_id).data.params["run_ids"].split(",")
    assert compared == [second.training_runs["low"], second.training_runs["high"]]

    write_set(tmp_path, high=2, base_skill=1)  # an edited params file changes low's settings, not high's
    third, lines = run(resume=True)
    assert third.ok and third.training_runs["high"] == second.training_runs["high"]
    assert third.training_runs["low"] not in first.training_runs.values()
    assert "== variant low: its settings changed since the run being resumed, so it runs again" in lines
    assert mlflow.get_run(third.training_runs["low"]).data.params["skill"] == "1"


def test_resume_needs_the_report_folder_of_the_same_set(tmp_path, capsys) -> None:
    file = write_set(tmp_path, high=1)
    with pytest.raises(ConfigError, match="nothing to resume"):
        experiments.run_experiment(file, out_dir=tmp_path / "empty", resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / experiments.STATE_FILE).write_text(json.dumps({"experiment_set": "filtering", "variants": {}}))
    with pytest.raises(ConfigError, match="holds experiment set 'filtering', not 'skill'"):
        experiments.run_experiment(file, out_dir=other, resume=True)
    assert cli.main(["run", "--resume", str(other)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "goes with --experiment FILE" in error
    (other / experiments.STATE_FILE).write_text(json.dumps({"experiment_set": "skill", "variants": {"low": {}}}))
    with pytest.raises(ConfigError, match="variant 'low' has no valid record \\(KeyError: 'pipeline'\\)"):
        experiments.run_experiment(file, out_dir=other, resume=True)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_set_that_extends_another_states_only_what_differs(tmp_path) -> None:
    (tmp_path / "cnn.yaml").write_text(
        "description: Which phases?\nparams: [params/ci.yaml]\nbaseline: scratch\n"
        "overrides: {03_train.weights: 'models:/cnn@champion', 03_train.cnn: {widths: [8]}, labels: ferplus}\n"
        "variants:\n  scratch: {03_train.weights: none, 03_train.epochs: 3}\n"
        "  seed: {03_train.phases: [{name: top, epochs: 2, trainable: 'top:2'}], 03_train.cycles: 2}\n")
    (tmp_path / "b0.yaml").write_text(
        "extends: cnn\nparams: [params/fer2013-efficientnet-cpu.yaml]\n"
        "overrides: {03_train.weights: 'models:/b0@champion', 03_train.cnn: null}\n"
        "variants:\n  seed: {03_train.phases: [{name: top, epochs: 2, trainable: '0.5'}]}\n"
        "  head_only: {03_train.phases: [{name: head, epochs: 4, trainable: head}]}\n")
    child = experiments.load_experiment(tmp_path / "b0.yaml")
    assert child.name == "b0" and child.description == "Which phases?" and child.baseline == "scratch"
    assert child.params_files == ("params/fer2013-efficientnet-cpu.yaml",)
    assert child.overrides == {"03_train.weights": "models:/b0@champion", "labels": "ferplus"}
    assert list(child.variants) == ["scratch", "seed", "head_only"]
    assert child.variants["scratch"] == {"03_train.weights": "none", "03_train.epochs": 3}
    assert child.variants["seed"] == {"03_train.phases": [{"name": "top", "epochs": 2, "trainable": "0.5"}],
                                      "03_train.cycles": 2}
    assert experiments.load_experiment(tmp_path / "cnn.yaml").overrides["03_train.cnn"] == {"widths": [8]}

    (tmp_path / "cnn.yaml").write_text("extends: b0\nvariants: {a: {}, b: {}}\n")
    with pytest.raises(ConfigError, match="'extends' loops back to b0.yaml"):
        experiments.load_experiment(tmp_path / "b0.yaml")
    (tmp_path / "b0.yaml").write_text("extends: nowhere\nvariants: {a: {}, b: {}}\n")
    with pytest.raises(ConfigError, match="nowhere: experiment file not found"):
        experiments.load_experiment(tmp_path / "b0.yaml")
