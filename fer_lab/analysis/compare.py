"""Side-by-side comparison of training runs logged in MLflow, and McNemar's test between two of them.

Runs are the training runs (tag `notebook=03_train`) that 04_evaluate has annotated with `test_*`
metrics and a `predictions_<split>.csv` artifact; see `fer_lab.analysis.evaluate`. They are found
and read through `fer_lab.tracking`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fer_lab import tracking
from fer_lab.analysis.evaluate import evaluation_set_tag, metric_prefix, predictions_artifact
from fer_lab.errors import ConfigError, DataError, FerLabWarning

SUMMARY_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "top2_accuracy", "ece",
                   "accuracy_without_leaked", "accuracy_tta", "macro_f1_tta", "tta_gain")


class MissingPredictionsWarning(FerLabWarning):
    """A compared run has no logged predictions (of some view), so it is left out of McNemar's test or an ensemble."""


# Below this many discordant pairs the chi-square approximation is poor, so the exact test is reported.
EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired correctness of two classifiers over the same images.

    `only_a` counts images A gets right and B wrong; `only_b` the reverse. `chi2` uses Edwards'
    continuity correction, (|b - c| - 1)^2 / (b + c), as statsmodels does; `exact_p_value` is the
    two-sided binomial test of min(b, c) successes in b + c trials with p = 1/2.
    """

    both_correct: int
    only_a: int
    only_b: int
    both_wrong: int
    chi2: float
    chi2_p_value: float
    exact_p_value: float

    @property
    def n_images(self) -> int:
        return self.both_correct + self.only_a + self.only_b + self.both_wrong

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b

    @property
    def p_value(self) -> float:
        """The exact p-value for few discordant pairs, the chi-square one otherwise."""
        return self.exact_p_value if self.discordant < EXACT_BELOW else self.chi2_p_value

    def table(self, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
        """The 2x2 contingency table with readable row/column names."""
        a, b = names
        return pd.DataFrame([[self.both_correct, self.only_a], [self.only_b, self.both_wrong]],
                            index=pd.Index([f"{a} correct", f"{a} wrong"], name=a),
                            columns=pd.Index([f"{b} correct", f"{b} wrong"], name=b))

    def summary(self, names: tuple[str, str] = ("A", "B")) -> str:
        """One sentence a reader can quote."""
        a, b = names
        method = "exact binomial" if self.discordant < EXACT_BELOW else "chi-square, continuity-corrected"
        return (f"{self.n_images} paired images: {a} alone right on {self.only_a}, {b} alone right on "
                f"{self.only_b}; McNemar p = {self.p_value:.4g} ({method})")


def mcnemar_from_table(both_correct: int, only_a: int, only_b: int, both_wrong: int) -> McNemarResult:
    """McNemar's test from the four cells of a paired 2x2 table.

    Args:
        both_correct: Images both classifiers get right.
        only_a: Images only A gets right.
        only_b: Images only B gets right.
        both_wrong: Images both get wrong.

    Returns:
        The test's counts, statistics and p-values.
    """
    cells = (both_correct, only_a, only_b, both_wrong)
    try:
        valid = all(int(cell) == cell and cell >= 0 for cell in cells)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"McNemar table cells must be non-negative integers, got {cells}")
    discordant = only_a + only_b
    if discordant == 0:
        chi2, chi2_p, exact_p = 0.0, 1.0, 1.0
    else:
        chi2 = (abs(only_a - only_b) - 1) ** 2 / discordant
        chi2_p = float(stats.chi2.sf(chi2, df=1))
        exact_p = float(stats.binomtest(min(only_a, only_b), discordant, 0.5).pvalue)
    return McNemarResult(int(both_correct), int(only_a), int(only_b), int(both_wrong),
                         float(chi2), chi2_p, exact_p)


def mcnemar(predictions_a: pd.DataFrame, predictions_b: pd.DataFrame) -> McNemarResult:
    """McNemar's test of two predictions frames, paired on `path` (images in only one are ignored).

    Raises when the frames share no image or disagree on an image's true label (not the same test set).
    """
    try:
        paired = predictions_a[["path", "label", "pred"]].merge(
            predictions_b[["path", "label", "pred"]], on="path", suffixes=("_a", "_b"), validate="one_to_one")
    except pd.errors.MergeError as error:
        raise DataError(f"a predictions frame lists an image path twice ({error})") from error
    if paired.empty:
        raise DataError("the two runs' predictions share no image path; they were not evaluated "
                          "on the same split of the same dataset")
    mismatched = paired[paired["label_a"] != paired["label_b"]]
    if not mismatched.empty:
        raise DataError(f"{len(mismatched)} images have different true labels in the two runs "
                          f"(first: {mismatched['path'].iloc[0]}); they used different manifests")
    right_a = (paired["pred_a"] == paired["label_a"]).to_numpy()
    right_b = (paired["pred_b"] == paired["label_b"]).to_numpy()
    return mcnemar_from_table(int((right_a & right_b).sum()), int((right_a & ~right_b).sum()),
                              int((~right_a & right_b).sum()), int((~right_a & ~right_b).sum()))


def parse_filter(text: str) -> dict[str, str]:
    """`"a=1, b=x"` -> `{"a": "1", "b": "x"}`; the notebooks take filters as such strings."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"filter item {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def default_runs(experiment: str, parent_run_id: str = "", max_runs: int = 10, split: str = "test") -> pd.DataFrame:
    """The runs 05_compare compares when none are named.

    Args:
        experiment: The experiment's name.
        parent_run_id: The pipeline run whose training runs are compared when it has at least two.
        max_runs: At most this many runs.
        split: The evaluated split whose image set the fallback runs must share.

    Returns:
        The training runs under `parent_run_id` when there are at least two; else the experiment's
        latest finished training runs evaluated on the same images as the pipeline's own training run
        (or, without a pipeline, as the newest evaluated run), so one store may hold several datasets.
        Newest first.
    """
    tags = {}
    tag = f"tags.{evaluation_set_tag(split)}"
    if parent_run_id:
        children = tracking.find_runs(experiment, parent_run_id=parent_run_id, max_runs=max_runs)
        if len(children) >= 2:
            return children
        if len(children) == 1 and tag in children and isinstance(children[tag].iloc[0], str):
            tags = {evaluation_set_tag(split): children[tag].iloc[0]}
    runs = tracking.find_runs(experiment, tags=tags, finished_only=True, max_runs=max_runs * 5)
    if not tags and tag in runs and runs[tag].notna().any():
        # A store holds runs of several datasets: compare those scored on the newest run's images only.
        runs = runs[runs[tag] == runs[tag].dropna().iloc[0]]
    return runs.head(max_runs).reset_index(drop=True)


def select_runs(experiment: str, run_ids: str = "", *, filter_tags: str = "", filter_params: str = "",
                parent_run_id: str = "", max_runs: int = 6, split: str = "test") -> pd.DataFrame:
    """The runs 05_compare compares, from its parameters.

    Args:
        experiment: The experiment's name.
        run_ids: Comma-separated training run ids; when given they win, in this order.
        filter_tags: `key=value, ...` tags the finished training runs must carry (see `parse_filter`).
        filter_params: `key=value, ...` params the finished training runs must have.
        parent_run_id: The pipeline run whose training runs are compared by default.
        max_runs: At most this many runs.
        split: The split 04_evaluate scored (the default selection keeps runs scored on the same images).

    Returns:
        One row per run as `tracking.find_runs` returns them; runs found by filter or by default are
        ordered oldest first, so the default baseline is the first.
    """
    chosen = [item.strip() for item in run_ids.split(",") if item.strip()]
    if chosen:
        return tracking.find_runs(experiment, run_ids=chosen)
    if filter_tags or filter_params:
        runs = tracking.find_runs(experiment, tags=parse_filter(filter_tags), params=parse_filter(filter_params),
                                  finished_only=True, max_runs=max_runs)
    else:
        runs = default_runs(experiment, parent_run_id, max_runs=max_runs, split=split)
    if runs.empty:
        raise ConfigError(f"no training runs to compare in experiment {experiment!r}")
    return runs.iloc[::-1].reset_index(drop=True)


def _labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's `variant` tag, else its run name, else its id's head."""
    names = []
    for _, run in runs.iterrows():
        candidates = (run.get("tags.variant"), run.get("tags.mlflow.runName"))
        names.append(next((str(value) for value in candidates if isinstance(value, str) and value), run["run_id"][:8]))
    return pd.Series(names, index=runs.index)


def run_names(runs: pd.DataFrame) -> pd.Series:
    """A short unique display name per run: its `variant` tag, else its run name, `@seedN` for a run of an
    experiment set with seeds, and the id's head."""
    names = []
    for (_, run), label in zip(runs.iterrows(), _labels(runs)):
        seed = run.get("tags.seed")
        seeded = f"{label}@seed{seed}" if isinstance(seed, str) and seed else label
        names.append(run["run_id"][:8] if seeded == run["run_id"][:8] else f"{seeded} ({run['run_id'][:6]})")
    return pd.Series(names, index=runs.index, name="run")


def arm_names(runs: pd.DataFrame) -> pd.Series:
    """The arm each run belongs to: its `variant` tag (an experiment set's arm); a run without one shares
    the arm of the first run whose logged parameters are the same except `seed`, named by that run's name."""
    labels = _labels(runs)
    params = sorted(column for column in runs.columns if column.startswith("params.") and column != "params.seed")
    variants = runs.get("tags.variant", pd.Series(None, index=runs.index, dtype=object))
    first: dict[str, str] = {}
    arms = []
    for index, run in runs.iterrows():
        variant = variants[index]
        if isinstance(variant, str) and variant:
            arms.append(variant)
        elif params:
            arms.append(first.setdefault("\x1f".join(str(run[column]) for column in params), labels[index]))
        else:
            arms.append(labels[index])
    return pd.Series(arms, index=runs.index, name="arm")


def baseline_name(runs: pd.DataFrame, baseline_run_id: str = "") -> str:
    """Display name of the baseline run: `baseline_run_id`'s, else the first run's."""
    names = run_names(runs)
    if not baseline_run_id:
        return str(names.iloc[0])
    matches = names[(runs["run_id"] == baseline_run_id).to_numpy()]
    if matches.empty:
        raise ConfigError(f"baseline run {baseline_run_id} is not among the compared runs")
    return str(matches.iloc[0])


def comparison_table(runs: pd.DataFrame, split: str = "test", *, all_params: bool = False) -> pd.DataFrame:
    """One row per run: the parameters that differ between runs (all of them with `all_params`
    or a single run) and the summary metrics of `split`."""
    names = run_names(runs)
    param_columns = [column for column in runs.columns if column.startswith("params.")]
    if not all_params and len(runs) > 1:
        param_columns = [column for column in param_columns
                         if runs[column].astype(str).nunique(dropna=False) > 1]
    prefix = metric_prefix(split)
    metric_columns = [f"metrics.{prefix}{name}" for name in SUMMARY_METRICS if f"metrics.{prefix}{name}" in runs]
    table = runs[param_columns + metric_columns].copy()
    table.columns = [column.split(".", 1)[1] for column in table.columns]
    table.index = pd.Index(names, name="run")
    table.insert(0, "run_id", runs["run_id"].to_numpy())
    return table


def per_class_recall(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Recall per class (rows, alphabetical like `data.CLASSES`) and run (columns) from the runs'
    `<prefix>recall_<class>` metrics."""
    marker = f"metrics.{metric_prefix(split)}recall_"
    columns = sorted(column for column in runs.columns if column.startswith(marker))
    table = runs[columns].T
    table.index = pd.Index([column[len(marker):] for column in columns], name="class")
    table.columns = run_names(runs).to_numpy()
    return table.dropna(how="all")


def recall_differences(recall: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each run's per-class recall minus the baseline run's (column `baseline` of `per_class_recall`)."""
    if baseline not in recall.columns:
        raise ConfigError(f"baseline run {baseline!r} is not among the compared runs {list(recall.columns)}")
    return recall.drop(columns=baseline).sub(recall[baseline], axis=0)


def load_predictions(run_id: str, split: str = "test", *, tta: bool = False) -> pd.DataFrame:
    """The per-image predictions 04_evaluate logged on `run_id`: `predictions_<split>.csv`, or with `tta`
    those averaged over its test-time views."""
    try:
        return tracking.load_csv_artifact(run_id, predictions_artifact(split, tta=tta))
    except DataError as error:
        raise DataError(f"{error}; run 04_evaluate on it first") from error


def load_run_predictions(runs: pd.DataFrame, split: str = "test") -> dict[str, pd.DataFrame]:
    """The logged predictions of each run by display name (`run_names`); runs without any are left out
    with a `MissingPredictionsWarning`."""
    predictions = {}
    for run_id, name in zip(runs["run_id"], run_names(runs)):
        try:
            predictions[name] = load_predictions(run_id, split)
        except DataError as error:
            warnings.warn(f"{name}: skipped ({error})", MissingPredictionsWarning, stacklevel=2)
    return predictions


def mcnemar_against(predictions: Mapping[str, pd.DataFrame], baseline: str) -> dict[str, McNemarResult]:
    """McNemar's test of every run against the baseline run, by name; empty unless the baseline and
    at least one other run have predictions."""
    if baseline not in predictions:
        return {}
    return {name: mcnemar(predictions[baseline], frame) for name, frame in predictions.items() if name != baseline}


def seeded_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's arm, seed and display name; the seed from the `seed` tag, else the `seed` param."""
    seeds = runs.get("tags.seed", pd.Series(None, index=runs.index, dtype=object))
    if "params.seed" in runs:
        seeds = seeds.where(seeds.notna() & (seeds != ""), runs["params.seed"])
    return pd.DataFrame({"arm": arm_names(runs), "seed": seeds, "name": run_names(runs)})


def has_seeds(runs: pd.DataFrame) -> bool:
    """Whether some arm among `runs` ran with two or more seeds, so it has a spread."""
    seeded = seeded_runs(runs).dropna(subset=["seed"])
    return bool((seeded.groupby("arm")["seed"].nunique() >= 2).any())


def seed_summary(runs: pd.DataFrame, split: str = "test",
                 metrics: tuple[str, ...] = ("accuracy", "accuracy_tta", "macro_f1", "macro_f1_tta")) -> pd.DataFrame:
    """Each arm over its seeds: how many, then mean, standard deviation (n - 1), min and max of `metrics`.

    Args:
        runs: Training runs as `select_runs` returns them.
        split: The split 04_evaluate scored.
        metrics: Summary metrics of that split (without the `test_` prefix).

    Returns:
        One row per arm, in order of first appearance, with columns `seeds` and `<metric> mean|sd|min|max`
        for the metrics the runs have.
    """
    seeded = seeded_runs(runs)
    prefix = metric_prefix(split)
    rows = []
    for arm, group in seeded.groupby("arm", sort=False):
        row: dict[str, object] = {"arm": arm, "seeds": ", ".join(sorted(map(str, group["seed"].dropna().unique())))}
        for metric in metrics:
            column = f"metrics.{prefix}{metric}"
            if column not in runs:
                continue
            values = runs.loc[group.index, column].dropna().astype(float)
            row.update({f"{metric} mean": values.mean(), f"{metric} sd": values.std(ddof=1),
                        f"{metric} min": values.min(), f"{metric} max": values.max()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def mcnemar_by_seed(runs: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], baseline: str) -> pd.DataFrame:
    """McNemar's test of each arm's run against the baseline arm's run of the same seed.

    Args:
        runs: Training runs as `select_runs` returns them.
        predictions: Logged predictions by display name (`load_run_predictions`).
        baseline: The display name of a run of the baseline arm.

    Returns:
        One row per arm and seed both arms ran with predictions: accuracies, the discordant counts and p.
    """
    seeded = seeded_runs(runs).set_index("name")
    if baseline not in seeded.index:
        raise ConfigError(f"baseline run {baseline!r} is not among the compared runs")
    base_arm = seeded.loc[baseline, "arm"]
    by_seed = {seed: name for name, (arm, seed) in seeded[["arm", "seed"]].iterrows()
               if arm == base_arm and name in predictions}
    rows = []
    for name, (arm, seed) in seeded[["arm", "seed"]].iterrows():
        reference = by_seed.get(seed)
        if arm == base_arm or reference is None or name not in predictions:
            continue
        result = mcnemar(predictions[reference], predictions[name])
        rows.append({"arm": arm, "seed": seed, "baseline_accuracy": accuracy_from_predictions(predictions[reference]),
                     "accuracy": accuracy_from_predictions(predictions[name]), "only_baseline_correct": result.only_a,
                     "only_arm_correct": result.only_b, "p_value": result.p_value,
                     "significant": significance_stars(result.p_value)})
    return pd.DataFrame(rows, columns=["arm", "seed", "baseline_accuracy", "accuracy", "only_baseline_correct",
                                       "only_arm_correct", "p_value", "significant"])


def significance_stars(p_value: float) -> str:
    """Conventional markers for a p-value (empty when not significant at 0.05)."""
    if not math.isfinite(p_value):
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def pairwise_mcnemar(predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """McNemar's test for every pair of runs (name -> predictions frame)."""
    names = list(predictions)
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            result = mcnemar(predictions[first], predictions[second])
            rows.append({"run_a": first, "run_b": second, "images": result.n_images,
                         "only_a_correct": result.only_a, "only_b_correct": result.only_b,
                         "p_value": result.p_value, "significant": significance_stars(result.p_value)})
    return pd.DataFrame(rows, columns=["run_a", "run_b", "images", "only_a_correct", "only_b_correct",
                                       "p_value", "significant"])


def accuracy_from_predictions(predictions: pd.DataFrame) -> float:
    """Share of rows whose prediction equals the label."""
    return float(np.mean(predictions["label"].to_numpy() == predictions["pred"].to_numpy()))
