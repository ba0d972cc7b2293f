"""Ensembles of runs from their logged predictions: averaging on hand-made frames, arms on a real MLflow store."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from fer_lab import tracking
from fer_lab.analysis import compare, ensembles, evaluate
from fer_lab.errors import DataError

LABELS = ["a", "b", "a", "b"]


def _frame(probabilities_of_a: list[float], order: list[int] | None = None) -> pd.DataFrame:
    rows = pd.DataFrame({"path": [f"img{i}.png" for i in range(4)], "sha1": "", "label": LABELS})
    probabilities = np.array([[0.9 * p, 0.9 * (1 - p), 0.1] for p in probabilities_of_a])  # c never wins
    frame = evaluate.predictions_frame(rows, probabilities, ["a", "b", "c"])
    return frame.iloc[order].reset_index(drop=True) if order else frame


def test_averaging_two_runs_rights_what_each_got_wrong_with_less_confidence() -> None:
    # Each run is wrong on one image, weakly; the other is right on it strongly.
    first = _frame([0.9, 0.4, 0.45, 0.1])  # wrong on img2
    second = _frame([0.2, 0.05, 0.9, 0.3], order=[3, 2, 1, 0])  # wrong on img0, rows in another order
    together = ensembles.average_predictions([first, second])
    assert together["path"].tolist() == first["path"].tolist()
    np.testing.assert_allclose(together["prob_a"], 0.9 * np.array([0.55, 0.225, 0.675, 0.2]))
    assert together["pred"].tolist() == LABELS
    assert compare.accuracy_from_predictions(first) == compare.accuracy_from_predictions(second) == 0.75


@pytest.mark.parametrize(("change", "message"), [
    (lambda frame: frame.drop(columns=["prob_a", "prob_b", "prob_c"]), "prob_<class>"),
    (lambda frame: frame.rename(columns={"prob_c": "prob_d"}), "classes"),
    (lambda frame: frame.iloc[:3], "other images"),
    (lambda frame: frame.assign(label=["a", "a", "a", "b"]), "img1.png another true label"),
])
def test_averaging_refuses_runs_scored_on_other_images_or_classes(change, message) -> None:
    with pytest.raises(DataError, match=message):
        ensembles.average_predictions([_frame([0.9, 0.4, 0.45, 0.1]), change(_frame([0.2, 0.05, 0.9, 0.3]))])


def test_each_arm_with_seeds_is_scored_as_one_model_from_the_logged_files(tmp_path) -> None:
    uri = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=tracking.experiment_id("ensembles", uri))
    logged = {  # run -> (params, plain probabilities of `a`, test-time averaged ones or None)
        "recipe-seed0": ({"seed": 0, "epochs": 40}, [0.9, 0.4, 0.45, 0.1], [0.9, 0.3, 0.45, 0.1]),
        "recipe-seed1": ({"seed": 1, "epochs": 40}, [0.2, 0.05, 0.9, 0.3], [0.4, 0.05, 0.9, 0.3]),
        "short": ({"seed": 0, "epochs": 10}, [0.9, 0.1, 0.9, 0.1], None),
    }
    run_ids = []
    for name, (params, plain, averaged) in logged.items():
        with mlflow.start_run(run_name=name) as run:
            mlflow.set_tag("notebook", "03_train")
            mlflow.log_params(params)
            for tta, probabilities in ((False, plain), (True, averaged)):
                if probabilities is not None:
                    path = tmp_path / name / evaluate.predictions_artifact("test", tta=tta)
                    path.parent.mkdir(exist_ok=True)
                    _frame(probabilities).to_csv(path, index=False)
                    mlflow.log_artifact(str(path))
        run_ids.append(run.info.run_id)
    runs = tracking.find_runs("ensembles", run_ids=run_ids)
    together = ensembles.arm_ensembles(runs)
    assert together.index.tolist() == ["recipe-seed0"] and together.loc["recipe-seed0", "runs"] == 2
    row = together.loc["recipe-seed0"]
    assert row["accuracy"] == 1.0 and row["runs' mean accuracy"] == row["best run's accuracy"] == 0.75
    # averaged views: seed 0 wrong on img2 (0.45), seed 1 on img0 (0.4); together (0.65, 0.675) both right
    assert row["accuracy_tta"] == 1.0 and row["macro_f1_tta"] == 1.0


def test_a_view_some_run_did_not_log_is_left_empty_with_a_warning(tmp_path) -> None:
    uri = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=tracking.experiment_id("ensembles", uri))
    run_ids = []
    for seed, probabilities in enumerate(([0.9, 0.4, 0.45, 0.1], [0.2, 0.05, 0.9, 0.3])):
        with mlflow.start_run() as run:
            mlflow.set_tags({"notebook": "03_train", "variant": "recipe", "seed": str(seed)})
            path = tmp_path / str(seed) / evaluate.predictions_artifact("test")
            path.parent.mkdir()
            _frame(probabilities).to_csv(path, index=False)
            mlflow.log_artifact(str(path))
        run_ids.append(run.info.run_id)
    with pytest.warns(compare.MissingPredictionsWarning, match="test-time averaged.*predictions_test_tta.csv"):
        together = ensembles.arm_ensembles(tracking.find_runs("ensembles", run_ids=run_ids))
    assert together.loc["recipe", "accuracy"] == 1.0 and np.isnan(together.loc["recipe", "accuracy_tta"])
