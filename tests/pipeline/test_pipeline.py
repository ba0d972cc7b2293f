"""The real notebook pipeline on the embedded sample: papermill executes, MLflow records."""

import pytest
from mlflow.tracking import MlflowClient

from fer_lab import project, tracking
from fer_lab.analysis import compare, ensembles
from fer_lab.pipeline import notebook, runner

pytestmark = pytest.mark.slow


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.fixture(scope="module")
def ci_pipeline(sample_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    result = runner.run_pipeline(
        data_dir=sample_dir, params_files=[project.PARAMS_DIR / "ci.yaml"], out_dir=tmp / "report",
        overrides={"tracking_uri": f"sqlite:///{tmp / 'mlruns.db'}", "work_dir": str(tmp / "work")},
    )
    return result


def test_ci_pipeline_runs_every_notebook(ci_pipeline):
    assert ci_pipeline.ok, [nb.error for nb in ci_pipeline.notebooks if not nb.ok]
    names = [nb.name for nb in ci_pipeline.notebooks]
    assert names == [nb.stem for nb in runner.discover_notebooks()]
    for nb in ci_pipeline.notebooks:
        assert nb.notebook.is_file() and nb.html.is_file()
    index = ci_pipeline.index.read_text()
    assert all(f"{name}.html" in index for name in names)
    assert "Dataset findings" in index


def test_ci_pipeline_is_tracked_in_mlflow(ci_pipeline, sample_dir):
    client = MlflowClient(ci_pipeline.tracking_uri)
    parent = client.get_run(ci_pipeline.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dataset_fingerprint"]
    for nb in ci_pipeline.notebooks:
        run = client.get_run(nb.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == ci_pipeline.parent_run_id
        assert run.data.tags["notebook"] == nb.name and run.data.tags["git_commit"]
        if "data_dir" in notebook.declared_parameters(project.NOTEBOOKS_DIR / f"{nb.name}.ipynb"):
            assert run.data.params["data_dir"] == str(sample_dir)
        assert f"notebook/{nb.name}.ipynb" in _artifacts(client, nb.run_id, "notebook")


def test_evaluation_logs_plain_and_test_time_averaged_predictions(ci_pipeline):
    client = MlflowClient(ci_pipeline.tracking_uri)
    run_ids = {nb.name: nb.run_id for nb in ci_pipeline.notebooks}
    files = {"predictions_test.csv", "predictions_test_tta.csv"}
    assert files <= _artifacts(client, run_ids["04_evaluate"]) and files <= _artifacts(client, run_ids["03_train"])
    tracking.configure(ci_pipeline.tracking_uri)
    averaged = compare.load_predictions(run_ids["03_train"], tta=True)
    metrics = client.get_run(run_ids["03_train"]).data.metrics
    assert compare.accuracy_from_predictions(averaged) == metrics["test_accuracy_tta"]
    # averaging a run with itself gives the run back: the files hold what 04 scored
    itself = ensembles.average_predictions([averaged, averaged])
    assert itself["pred"].tolist() == averaged["pred"].tolist()


def test_explore_finds_the_injected_noise(ci_pipeline, sample_dir):
    import pandas as pd

    client = MlflowClient(ci_pipeline.tracking_uri)
    run = client.get_run(next(nb.run_id for nb in ci_pipeline.notebooks if nb.name == "01_explore"))
    truth = pd.read_csv(sample_dir / "sample_truth.csv")
    kinds = truth["kind"].value_counts()
    metrics = run.data.metrics
    assert metrics["images"] == len(truth)
    assert metrics["leaked_images"] >= kinds.get("cross_split_duplicate", 0) > 0
    assert metrics["conflicting_duplicate_groups"] >= kinds.get("mislabelled", 0) > 0
    assert metrics["near_constant_images"] >= kinds.get("blank", 0) > 0
    figures = _artifacts(client, run.info.run_id, "figures")
    assert {"figures/class_distribution.png", "figures/mean_faces.png", "figures/leaked_images.png"} <= figures


def test_the_demo_model_learns_the_sample(ci_pipeline):
    """A floor on what the CI-sized model reaches on the sample's test faces and the demo video: a
    regression that stops training from learning (chance is 14%) fails here."""
    client = MlflowClient(ci_pipeline.tracking_uri)
    runs = {nb.name: client.get_run(nb.run_id).data.metrics for nb in ci_pipeline.notebooks}
    assert runs["04_evaluate"]["test_accuracy"] >= 0.80
    assert runs["06_apply"]["demo_video_agreement"] >= 0.60
    assert runs["07_study"]["significant_effects"] >= 2  # the generated study's built-in effect
