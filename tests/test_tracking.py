"""The MLflow home: safe search filters, resumable runs, finding and annotating runs, in a real sqlite store."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fer_lab import tracking
from fer_lab.errors import ConfigError

QUOTED = "Bob's run"


def test_search_filter_quotes_values_mlflow_can_read() -> None:
    assert tracking.search_filter() == ""
    assert tracking.search_filter(tags={"variant": "a"}, params={"lr": 0.1}, parent_run_id="p1", run_name=QUOTED,
                                  finished_only=True) == (
        "tags.`variant` = 'a' and params.`lr` = '0.1' and tags.`mlflow.parentRunId` = 'p1' and "
        "attributes.run_name = \"Bob's run\" and attributes.status = 'FINISHED'")
    assert tracking.search_filter(tags={"quote": 'say "hi"'}) == "tags.`quote` = 'say \"hi\"'"
    for value in ("both ' and \"", "trailing\\"):
        with pytest.raises(ConfigError, match="cannot search MLflow"):
            tracking.search_filter(tags={"variant": value})
    with pytest.raises(ConfigError, match="backticks"):
        tracking.search_filter(params={"a`b": "1"})


@pytest.fixture
def store(tmp_path):
    uri = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


def test_a_run_name_with_a_quote_resumes_and_is_found(store) -> None:
    first = tracking.start_notebook_run("03_train", {"variant": QUOTED}, tracking_uri=store, experiment="quotes",
                                        run_name=QUOTED)
    tracking.set_tags({"variant": QUOTED})
    mlflow.end_run(status="KILLED")
    again = tracking.start_notebook_run("03_train", {"variant": QUOTED}, tracking_uri=store, experiment="quotes",
                                        run_name=QUOTED)
    mlflow.end_run()
    assert again.info.run_id == first.info.run_id
    assert MlflowClient().get_run(first.info.run_id).data.tags["resumed"] == "true"
    MlflowClient().set_terminated(first.info.run_id, "KILLED")
    with pytest.raises(ConfigError, match=r"names an unfinished run \(\w+\) that was started with variant=Bob's run, "
                                          r"not other: resume it with the same parameters, or choose another run_name"):
        tracking.start_notebook_run("03_train", {"variant": "other"}, tracking_uri=store, experiment="quotes",
                                    run_name=QUOTED)
    MlflowClient().set_terminated(first.info.run_id, "FINISHED")
    found = tracking.find_runs("quotes", tags={"variant": QUOTED}, params={"variant": QUOTED}, finished_only=True)
    assert found["run_id"].tolist() == [first.info.run_id]
    with pytest.raises(ConfigError, match="no finished 03_train run"):
        tracking.resolve_training_run("quotes")  # finished, but it never logged a model
    MlflowClient().set_tag(first.info.run_id, "has_model", "true")
    assert tracking.resolve_training_run("quotes") == first.info.run_id
    with pytest.raises(ConfigError, match="not MLflow run ids"):
        tracking.find_runs("quotes", run_ids=["x' or '1'='1"])


def test_pipeline_runs_are_created_found_and_annotated(store, tmp_path) -> None:
    exp_id = tracking.experiment_id("pipeline-runs", store)
    parent = tracking.create_run(exp_id, "pipeline-x", {"pipeline": "true"})
    tracking.log_params({"long": "x" * 7000}, run_id=parent)
    assert tracking.training_run_of(parent, "pipeline-runs") == ""
    with pytest.raises(ConfigError, match="no finished 03_train run"):
        tracking.resolve_training_run("pipeline-runs", parent)
    child = tracking.notebook_run(exp_id, parent, "03_train")  # the notebook never started one: created
    assert tracking.notebook_run(exp_id, parent, "03_train") == child
    assert tracking.training_run_of(parent, "pipeline-runs") == child
    assert tracking.resolve_training_run("pipeline-runs", parent) == child
    tracking.finish_run(child, ok=True)

    scores = tmp_path / "scores.csv"
    scores.write_text("path,label\na.png,NA\n")
    tracking.log_to_run(child, {"test_accuracy": 0.5, "test_ece": float("nan")}, [scores], tags={"evaluated": "yes"})
    run = MlflowClient().get_run(child)
    assert run.info.status == "FINISHED" and run.data.tags["evaluated"] == "yes"
    assert run.data.metrics == {"test_accuracy": 0.5}
    assert tracking.load_csv_artifact(child, "scores.csv")["label"].tolist() == ["NA"]
    assert len(tracking.run_params(parent)["long"]) == 6000
    history = tracking.metric_history([child, parent], "test_accuracy", ["child", "parent"])
    assert history.to_dict("records") == [{"run": "child", "step": 0, "value": 0.5}]
