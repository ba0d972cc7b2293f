"""Run comparison: McNemar's test on known tables and frames, and MLflow queries on a real local store."""

from __future__ import annotations

import math
import shutil

import mlflow
import pandas as pd
import pytest

from fer_lab import project, tracking
from fer_lab.analysis import compare, ensembles, evaluate
from fer_lab.errors import ConfigError, FerLabError
from fer_lab.pipeline import experiments, runner
from fer_lab.training import schedule


def _exact_two_sided(b: int, c: int) -> float:
    """Two-sided exact binomial p-value for min(b, c) of b + c at p = 1/2, by direct summation."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _chi2_sf_1df(x: float) -> float:
    """Chi-square survival function with one degree of freedom: P(Z^2 > x) = erfc(sqrt(x / 2))."""
    return math.erfc(math.sqrt(x / 2))


def test_mcnemar_agresti_presidential_approval() -> None:
    # Agresti, Categorical Data Analysis, Table 10.1: approval at two surveys, 794/150/86/570.
    # Uncorrected z^2 = (150 - 86)^2 / 236 = 17.36; corrected (|150 - 86| - 1)^2 / 236 = 16.82.
    result = compare.mcnemar_from_table(794, 150, 86, 570)
    assert (64 ** 2) / 236 == pytest.approx(17.36, abs=0.01)
    assert result.chi2 == pytest.approx(63 ** 2 / 236)
    assert result.chi2 == pytest.approx(16.82, abs=0.01)
    assert result.chi2_p_value == pytest.approx(_chi2_sf_1df(63 ** 2 / 236))
    assert result.exact_p_value == pytest.approx(_exact_two_sided(150, 86), rel=1e-9)
    assert result.p_value == result.chi2_p_value  # 236 discordant pairs: the chi-square is used
    assert result.n_images == 1600 and result.p_value < 0.001


def test_mcnemar_small_table_uses_exact_test() -> None:
    # b = 1, c = 9: exact two-sided p = 2 * (1 + 10) / 1024 = 0.021484375.
    result = compare.mcnemar_from_table(20, 1, 9, 5)
    assert result.exact_p_value == pytest.approx(22 / 1024)
    assert result.p_value == result.exact_p_value
    assert result.chi2 == pytest.approx((8 - 1) ** 2 / 10)
    assert "exact binomial" in result.summary(("A", "B"))
    table = result.table(("A", "B"))
    assert table.loc["A correct", "B wrong"] == 1 and table.loc["A wrong", "B correct"] == 9


def test_mcnemar_without_disagreement_is_not_significant() -> None:
    result = compare.mcnemar_from_table(10, 0, 0, 3)
    assert result.p_value == 1.0 and result.chi2 == 0.0


def test_mcnemar_rejects_bad_cells() -> None:
    with pytest.raises(FerLabError, match="non-negative"):
        compare.mcnemar_from_table(1, -1, 2, 3)


def _predictions(labels: list[str], preds: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"img{i}.png" for i in range(len(labels))], "label": labels, "pred": preds})


def test_mcnemar_pairs_images_by_path() -> None:
    labels = ["a", "b", "c", "a", "b"]
    run_a = _predictions(labels, ["a", "b", "c", "b", "c"])  # right on 0, 1, 2
    run_b = _predictions(labels, ["a", "a", "a", "a", "c"])  # right on 0, 3
    shuffled_b = run_b.iloc[::-1].reset_index(drop=True)
    result = compare.mcnemar(run_a, shuffled_b)
    assert (result.both_correct, result.only_a, result.only_b, result.both_wrong) == (1, 2, 1, 1)
    assert result.exact_p_value == pytest.approx(1.0)


def test_mcnemar_refuses_different_test_sets() -> None:
    run_a = _predictions(["a", "b"], ["a", "b"])
    relabelled = _predictions(["a", "c"], ["a", "b"])
    with pytest.raises(FerLabError, match="different true labels"):
        compare.mcnemar(run_a, relabelled)
    elsewhere = run_a.assign(path=["x.png", "y.png"])
    with pytest.raises(FerLabError, match="share no image"):
        compare.mcnemar(run_a, elsewhere)


def test_parse_filter() -> None:
    assert compare.parse_filter("variant=b0, model = B2") == {"variant": "b0", "model": "B2"}
    assert compare.parse_filter("") == {}
    with pytest.raises(FerLabError, match="key=value"):
        compare.parse_filter("variant")


def test_recall_differences_against_baseline() -> None:
    recall = pd.DataFrame({"base": [0.5, 0.8], "new": [0.6, 0.7]}, index=["fear", "sad"])
    diff = compare.recall_differences(recall, "base")
    assert list(diff.columns) == ["new"]
    assert diff["new"].tolist() == pytest.approx([0.1, -0.1])
    with pytest.raises(FerLabError, match="baseline"):
        compare.recall_differences(recall, "missing")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A real sqlite MLflow store with a pipeline parent, two evaluated training runs and an older one."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = "compare-test"
    mlflow.set_experiment(experiment_id=tracking.experiment_id(experiment, uri))
    labels = ["a", "b", "a", "b", "a", "b"]
    runs = {}
    with mlflow.start_run(run_name="older") as older:
        mlflow.set_tag("notebook", "03_train")
        mlflow.log_param("backbone", "B0")
    runs["older"] = older.info.run_id
    with mlflow.start_run(run_name="pipeline") as parent:
        for name, backbone, preds in (("small", "B0", ["a", "b", "a", "a", "b", "b"]),
                                      ("large", "B2", ["a", "b", "a", "b", "a", "b"])):
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.set_tags({"notebook": "03_train", "variant": name})
                mlflow.log_params({"backbone": backbone, "epochs": 3})
                for step, value in enumerate((0.3, 0.5, 0.6 if name == "small" else 0.8)):
                    mlflow.log_metric("val_accuracy", value, step=step)
                predictions = _predictions(labels, preds)
                accuracy = compare.accuracy_from_predictions(predictions)
                mlflow.log_metrics({"test_accuracy": accuracy, "test_recall_a": 1.0 if name == "large" else 2 / 3,
                                    "test_recall_b": 1.0 if name == "large" else 2 / 3})
                folder = tmp_path / name
                folder.mkdir()
                predictions.to_csv(folder / "predictions_test.csv", index=False)
                mlflow.log_artifact(str(folder / "predictions_test.csv"))
                runs[name] = child.info.run_id
    return uri, experiment, parent.info.run_id, runs


@pytest.fixture
def store(filled_store):
    """The filled store, made MLflow's current one again (other tests point MLflow elsewhere)."""
    uri, *contents = filled_store
    tracking.configure(uri)
    return contents


def test_find_runs_filters(store) -> None:
    experiment, parent, runs = store
    children = tracking.find_runs(experiment, parent_run_id=parent)
    assert set(children["run_id"]) == {runs["small"], runs["large"]}
    b2 = tracking.find_runs(experiment, params={"backbone": "B2"})
    assert b2["run_id"].tolist() == [runs["large"]]
    tagged = tracking.find_runs(experiment, tags={"variant": "small"})
    assert tagged["run_id"].tolist() == [runs["small"]]
    picked = tracking.find_runs(experiment, run_ids=[runs["large"], runs["older"]])
    assert picked["run_id"].tolist() == [runs["large"], runs["older"]]
    with pytest.raises(FerLabError, match="not in experiment"):
        tracking.find_runs(experiment, run_ids=["0" * 32])


def test_default_runs_fall_back_to_latest_finished(store) -> None:
    experiment, parent, runs = store
    assert set(compare.default_runs(experiment, parent)["run_id"]) == {runs["small"], runs["large"]}
    fallback = compare.default_runs(experiment, "")
    assert set(fallback["run_id"]) == set(runs.values())


def test_table_curves_recall_and_mcnemar_from_store(store) -> None:
    experiment, parent, runs = store
    found = tracking.find_runs(experiment, parent_run_id=parent)
    table = compare.comparison_table(found)
    assert "backbone" in table.columns and "epochs" not in table.columns  # only differing params
    assert sorted(table["test_accuracy"].round(4)) == [round(4 / 6, 4), 1.0]
    names = compare.run_names(found)
    assert all(name.startswith(("small (", "large (")) for name in names)
    history = tracking.metric_history(found["run_id"].tolist(), "val_accuracy", names.tolist())
    assert len(history) == 6 and history["value"].max() == pytest.approx(0.8)
    recall = compare.per_class_recall(found)
    assert list(recall.index) == ["a", "b"] and len(recall.columns) == 2
    small = compare.load_predictions(runs["small"])
    large = compare.load_predictions(runs["large"])
    assert compare.accuracy_from_predictions(small) == pytest.approx(4 / 6)
    result = compare.mcnemar(large, small)
    assert (result.only_a, result.only_b) == (2, 0)
    pairwise = compare.pairwise_mcnemar({"small": small, "large": large})
    assert pairwise.loc[0, "only_b_correct"] == 2
    with pytest.raises(FerLabError, match="04_evaluate"):
        compare.load_predictions(runs["older"])


def test_select_runs_from_the_notebook_parameters(store) -> None:
    experiment, parent, runs = store
    named = compare.select_runs(experiment, f"{runs['large']}, {runs['older']}")
    assert named["run_id"].tolist() == [runs["large"], runs["older"]]  # named runs keep their order
    children = compare.select_runs(experiment, parent_run_id=parent)
    assert children["run_id"].tolist() == [runs["small"], runs["large"]]  # oldest first
    assert compare.select_runs(experiment, filter_params="backbone=B2")["run_id"].tolist() == [runs["large"]]
    with pytest.raises(ConfigError, match="no training runs to compare"):
        compare.select_runs(experiment, filter_tags="variant=Bob's")


def test_mcnemar_against_the_baseline_skips_runs_without_predictions(store) -> None:
    experiment, _, runs = store
    chosen = compare.select_runs(experiment, ",".join(runs[name] for name in ("older", "small", "large")))
    with pytest.warns(compare.MissingPredictionsWarning, match="04_evaluate"):
        predictions = compare.load_run_predictions(chosen)
    names = compare.run_names(chosen).tolist()
    assert list(predictions) == names[1:]
    tests = compare.mcnemar_against(predictions, names[1])
    assert list(tests) == [names[2]] and (tests[names[2]].only_a, tests[names[2]].only_b) == (0, 2)
    assert compare.mcnemar_against(predictions, names[0]) == {}


FAKE_TRAIN = '''
import mlflow
import pandas as pd
from fer_lab import project, tracking
tracking.start_notebook_run("03_train", {"skill": skill, "seed": seed}, tracking_uri=tracking_uri,
                            experiment=experiment, parent_run_id=parent_run_id, run_name=run_name)
for step, value in enumerate([0.3, 0.4 + 0.1 * skill]):
    mlflow.log_metric("val_accuracy", value, step=step)
labels = ["a", "b"] * 10
preds = [label if i < 10 + 5 * skill + seed else "a" for i, label in enumerate(labels)]
frame = pd.DataFrame({"path": [f"img{i}.png" for i in range(20)], "sha1": "", "label": labels, "pred": preds})
confidence = 0.6 + 0.1 * seed  # a higher seed is surer of its predictions, so it wins where two seeds disagree
frame["prob_a"] = [confidence if pred == "a" else 1 - confidence for pred in preds]
frame["prob_b"] = 1 - frame["prob_a"]
right = frame["label"] == frame["pred"]
mlflow.log_metrics({"test_accuracy": right.mean(), "test_recall_a": right[frame["label"] == "a"].mean(),
                    "test_recall_b": right[frame["label"] == "b"].mean()})
target = project.resolve(work_dir) / "predictions_test.csv"
target.parent.mkdir(parents=True, exist_ok=True)
frame.to_csv(target, index=False)
mlflow.log_artifact(str(target))
'''


def run_skill_set(tmp_path, write_notebook, *, overrides: str = "", seeds: str = "") -> experiments.ExperimentResult:
    """The set `skill` (arms low and high, skill 0 and 2; baseline low) through the fake 03 and the real 05."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "03_train.ipynb", 'skill = 0\nrun_name = ""\n', FAKE_TRAIN)
    shutil.copy(project.NOTEBOOKS_DIR / "05_compare.ipynb", notebooks / "05_compare.ipynb")
    (tmp_path / "data").mkdir()
    experiment_file = tmp_path / "skill.yaml"
    experiment_file.write_text(
        "description: More skill, more accuracy?\n"
        f"overrides: {{tracking_uri: 'sqlite:///{tmp_path / 'mlflow.db'}', work_dir: '{tmp_path / 'work'}'"
        f"{overrides}}}\n{seeds}baseline: low\n"
        "variants:\n  low: {03_train.skill: 0}\n  high: {03_train.skill: 2}\n")
    result = experiments.run_experiment(experiment_file, data_dir=tmp_path / "data", out_dir=tmp_path / "report",
                                        notebooks_dir=notebooks, log=lambda *_: None)
    assert result.ok, [nb.error for nb in result.compare.notebooks] if result.compare else result.variants
    return result


@pytest.mark.slow
def test_experiment_set_runs_variants_then_real_compare_notebook(tmp_path, write_notebook) -> None:
    result = run_skill_set(tmp_path, write_notebook)
    client = mlflow.MlflowClient()
    low, high = (client.get_run(result.training_runs[name]).data for name in ("low", "high"))
    assert low.tags["variant"] == "low" and high.tags["experiment_set"] == "skill"
    assert (low.params["skill"], high.params["skill"]) == ("0", "2")
    compare_run = client.get_run(result.compare.notebooks[0].run_id).data
    assert compare_run.params["baseline_run_id"] == result.training_runs["low"]
    # low is right on 15 of 20 images, high on all: 5 discordant images, exact p = 2 / 2**5.
    executed = result.compare.notebooks[0].notebook.read_text()
    assert "alone right on 0" in executed and "alone right on 5; McNemar p = 0.0625" in executed
    assert "image/png" in executed and "Downloading artifacts" not in executed
    index = result.compare.index.read_text()
    assert "Run comparison" in index and "McNemar" in index
    assert "compare/index.html" in result.index.read_text()
    assert "every arm ran with one seed" in executed


@pytest.mark.extended  # four arm runs and 05 through papermill; the single-seed set stays in the suite
@pytest.mark.slow
def test_a_set_with_seeds_runs_each_arm_per_seed_and_compares_arms_seed_by_seed(tmp_path, write_notebook) -> None:
    result = run_skill_set(tmp_path, write_notebook, overrides=", 03_train.run_name: recipe", seeds="seeds: [0, 3]\n")
    assert list(result.training_runs) == ["low@seed0", "low@seed3", "high@seed0", "high@seed3"]
    client = mlflow.MlflowClient()
    for name, run_id in result.training_runs.items():
        run = client.get_run(run_id)
        arm, seed = name.split("@seed")
        assert (run.data.tags["variant"], run.data.tags["seed"], run.data.params["seed"]) == (arm, seed, seed)
        assert run.info.run_name == f"recipe-seed{seed}"  # runs of one name would resume each other
    compare_run = client.get_run(result.compare.notebooks[0].run_id).data
    assert compare_run.params["baseline_run_id"] == result.training_runs["low@seed0"]
    runs = tracking.find_runs("fer-lab", run_ids=list(result.training_runs.values()))
    # low is right on 15 of 20 images with seed 0 and on 16 with seed 3; high on all of them.
    spread = compare.seed_summary(runs)
    assert spread.loc["low", "seeds"] == "0, 3" and spread.loc["low", "accuracy mean"] == pytest.approx(0.775)
    assert spread.loc["high", "accuracy min"] == pytest.approx(1.0) and spread.loc["low", "accuracy sd"] > 0
    predictions = compare.load_run_predictions(runs)
    by_seed = compare.mcnemar_by_seed(runs, predictions, compare.baseline_name(runs, result.training_runs["low@seed0"]))
    assert by_seed[["arm", "seed"]].values.tolist() == [["high", "0"], ["high", "3"]]
    assert by_seed["only_baseline_correct"].tolist() == [0, 0] and by_seed["only_arm_correct"].tolist() == [5, 4]
    executed = result.compare.notebooks[0].notebook.read_text()
    assert "Arms over seeds" in result.compare.index.read_text() and "low@seed3" in executed
    together = ensembles.arm_ensembles(runs)  # low's seeds disagree on images 10-12; seed 3 is surer and right
    assert together.loc["low", "accuracy"] == pytest.approx(0.8) and together.loc["high", "accuracy"] == 1.0
    assert together.loc["low", "runs' mean accuracy"] == pytest.approx(0.775)
    assert "their probabilities averaged" in result.compare.index.read_text()


def test_seeded_sets_refuse_seeds_they_cannot_run(tmp_path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text("seeds: [0, 1]\nvariants: {recipe: {}}\n")
    one_arm = experiments.load_experiment(path)
    assert list(one_arm.variants) == ["recipe@seed0", "recipe@seed1"] and one_arm.baseline == "recipe@seed0"
    assert one_arm.tags("recipe@seed1") == {"experiment_set": "set", "variant": "recipe", "seed": "1"}
    with pytest.raises(ConfigError, match="runs each variant with its seeds"):
        experiments.run_experiment(path, overrides={"seed": 4})
    for content, message in (("seeds: [0]\nvariants: {recipe: {}}\n", "at least two"),
                             ("seeds: [0, 0]\nvariants: {a: {}, b: {}}\n", "lists a seed twice"),
                             ("seeds: 3\nvariants: {a: {}, b: {}}\n", "list of non-negative integers"),
                             ("seeds: [0, 1]\nvariants: {a: {seed: 2}, b: {}}\n", "variant 'a' sets 'seed'")):
        path.write_text(content)
        with pytest.raises(ConfigError, match=message):
            experiments.load_experiment(path)


@pytest.mark.parametrize("content, message", [
    ("variants: {only: {}}\n", "at least two"),
    ("variants: {a: {}, b: {}}\nbaseline: c\n", "baseline 'c'"),
    ("variants: {a: {}, b: {}}\nextra: 1\n", "unknown keys"),
    ("variants: {'bad name': {}, b: {}}\n", "variant name"),
    ("variants: {a: [1], b: {}}\n", "variant 'a' must map override keys to values"),
])
def test_experiment_file_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(content)
    with pytest.raises(FerLabError, match=message):
        experiments.load_experiment(path)


def test_shipped_experiment_sets_parse() -> None:
    files = sorted((project.PARAMS_DIR / "experiments").glob("*.yaml"))
    assert len(files) >= 3
    notebooks = runner.discover_notebooks()
    for file in files:
        experiment = experiments.load_experiment(file)
        assert experiment.description and len(experiment.variants) >= 2
        for variant in experiment.variants.values():
            # Every override names a parameter a notebook declares (plan_parameters raises otherwise).
            planned = runner.plan_parameters(notebooks, runner.apply_overrides({}, {**experiment.overrides, **variant}))
            if "03_train.phases" in variant:
                schedule.Schedule.from_config(planned["03_train"]["phases"], planned["03_train"].get("cycles", 1))


def test_run_names_prefer_variant_then_run_name() -> None:
    runs = pd.DataFrame({"run_id": ["a" * 32, "b" * 32, "c" * 32],
                         "tags.variant": ["filtered", float("nan"), None],
                         "tags.mlflow.runName": ["03_train", "03_train", None]})
    assert compare.run_names(runs).tolist() == ["filtered (aaaaaa)", "03_train (bbbbbb)", "cccccccc"]


def test_runs_that_differ_in_seed_alone_are_one_arm() -> None:
    runs = pd.DataFrame({"run_id": [c * 32 for c in "abcde"],
                         "tags.variant": [None, None, None, "light", "light"],
                         "tags.mlflow.runName": ["recipe", "recipe-seed1", "wider", "03_train", "03_train"],
                         "params.seed": ["0", "1", "0", "0", "2"],
                         "params.widths": ["32", "32", "64", "32", "32"],
                         "metrics.test_accuracy": [0.66, 0.64, 0.67, 0.65, 0.68]})
    assert compare.arm_names(runs).tolist() == ["recipe", "recipe", "wider", "light", "light"]
    assert compare.has_seeds(runs) and not compare.has_seeds(runs.iloc[[0, 2, 3]])
    spread = compare.seed_summary(runs)
    assert list(spread.index) == ["recipe", "wider", "light"] and spread.loc["light", "seeds"] == "0, 2"
    assert spread.loc["recipe", "accuracy mean"] == pytest.approx(0.65)
    assert spread.loc["recipe", "accuracy sd"] == pytest.approx(0.02 / 2 ** 0.5)
    assert math.isnan(spread.loc["wider", "accuracy sd"]) and "accuracy_tta mean" not in spread


def test_default_runs_without_a_pipeline_keep_one_evaluation_set(tmp_path) -> None:
    """A store with runs of two datasets: 05's defaults compare the newest evaluated run's images only."""
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("two-datasets")
    tag = evaluate.evaluation_set_tag("test")
    made = {}
    for name, images in (("fer2013", "A"), ("sample-1", "B"), ("unscored", None), ("sample-2", "B")):
        with mlflow.start_run(run_name=name) as run:
            mlflow.set_tags({"notebook": "03_train", **({tag: images} if images else {})})
        made[name] = run.info.run_id
    chosen = compare.default_runs("two-datasets")
    assert chosen["run_id"].tolist() == [made["sample-2"], made["sample-1"]]
