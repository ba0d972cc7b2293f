"""The filter's decision rules, its scores, the settings sweep and `fer-lab filter`, on the sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fer_lab import cli, data
from fer_lab.errors import ConfigError, DataError
from fer_lab.faces import detection, filtering, tuning
from fer_lab.faces.detection import DetectorSettings
from fer_lab.faces.filtering import FilterRules


def _manifest(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """A manifest from (path, label, split, sha1) rows, every image readable."""
    table = pd.DataFrame(rows, columns=["path", "label", "split", "sha1"])
    table["readable"] = True
    return table


def _detections(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    """Detector output from (face_score, grey_range, flatness, noise) rows; NaN score = nothing found."""
    table = pd.DataFrame(rows, columns=["face_score", "grey_range", "flatness", "noise"])
    table["face_found"] = table["face_score"] >= -1.8
    table["n_faces"] = table["face_found"].astype(int)
    for column in ("box_x0", "box_y0", "box_x1", "box_y1"):
        table[column] = np.where(table["face_found"], 10.0, np.nan)
    return table


def test_content_rules_in_order():
    detections = _detections([
        (0.5, 120, 0.05, 0.05),     # a clear face
        (-1.5, 120, 0.05, 0.05),    # a weak face on a photo: kept
        (np.nan, 3, 1.0, 0.0),      # flat frame
        (-1.0, 200, 0.0, 0.9),      # random noise the detector half-likes
        (np.nan, 120, 0.1, 0.05),   # nothing found
        (-1.5, 150, 0.6, 0.0),      # weak score on a flat graphic (text placeholder)
        (0.8, 150, 0.6, 0.0),       # a strong face on a flat background stays
        (-1.9, 120, 0.05, 0.05),    # just below the threshold
    ])
    reasons = filtering.content_reasons(detections, threshold=-1.8)
    assert list(reasons) == ["", "", "blank", "noise", "no_face", "weak_face", "", "no_face"]
    # Without the flatness term the placeholder passes: that is what flat_weight buys.
    assert filtering.content_reasons(detections, -1.8, FilterRules(flat_weight=0.0))[5] == ""
    # A lower threshold keeps the borderline face.
    assert filtering.content_reasons(detections, -2.0)[7] == ""


def test_duplicate_rules():
    manifest = _manifest([
        ("train/a/1.png", "angry", "train", "aaa"),   # conflict without majority: all copies go
        ("train/b/2.png", "sad", "train", "aaa"),
        ("train/a/3.png", "happy", "train", "bbb"),   # majority happy: the fear copy goes, then one happy stays
        ("train/a/4.png", "happy", "train", "bbb"),
        ("train/a/5.png", "fear", "train", "bbb"),
        ("train/a/6.png", "sad", "train", "ccc"),     # also in test: the train copy goes
        ("test/a/7.png", "sad", "test", "ccc"),
        ("val/a/8.png", "sad", "val", "ddd"),         # val and test: the val copy goes
        ("test/a/9.png", "sad", "test", "ddd"),
        ("test/a/10.png", "sad", "test", "eee"),      # unique
    ])
    reasons = filtering.duplicate_reasons(manifest)
    assert list(reasons) == [
        "conflicting_labels", "conflicting_labels", "", "duplicate", "conflicting_labels",
        "cross_split_duplicate", "", "cross_split_duplicate", "", "",
    ]


def test_decide_adds_columns_and_content_reasons_win():
    manifest = _manifest([
        ("train/a/1.png", "angry", "train", "aaa"),
        ("train/b/2.png", "sad", "train", "aaa"),
        ("train/a/3.png", "happy", "train", "bbb"),
    ])
    manifest.loc[2, "readable"] = False
    detections = _detections([(np.nan, 0, 1.0, 0.0), (np.nan, 0, 1.0, 0.0), (np.nan, np.nan, np.nan, np.nan)])
    filtered = filtering.decide(manifest, detections, threshold=-1.8)
    assert list(filtered["reject_reason"]) == ["blank", "blank", "unreadable"]
    assert not filtered["keep"].any()
    for column in ("face_found", "n_faces", "face_score", "keep", "reject_reason", "face_evidence", "path"):
        assert column in filtered
    kept = filtering.decide(manifest.iloc[:2], _detections([(0.1, 90, 0.0, 0.0)] * 2), -1.8, FilterRules())
    assert list(kept["reject_reason"]) == ["conflicting_labels"] * 2
    lenient = filtering.decide(manifest.iloc[:2], _detections([(0.1, 90, 0.0, 0.0)] * 2), -1.8,
                               FilterRules(drop_duplicates=False))
    assert lenient["keep"].all()


@pytest.fixture(scope="module")
def sample_filtered(sample_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("filter_work")
    manifest = data.build_manifest(sample_dir)
    filtered, detections = filtering.filter_manifest(manifest, sample_dir, work_dir=work)
    truth = pd.read_csv(sample_dir / "sample_truth.csv").set_index("path")["kind"]
    return filtered.assign(kind=filtered["path"].map(truth)), detections, work


def test_sample_noise_is_removed_and_faces_kept(sample_filtered):
    filtered, detections, _ = sample_filtered
    assert detections.computed == filtered["sha1"].nunique()
    by_kind = filtered.groupby("kind")["reject_reason"]
    for kind in filtering.TRUTH_NONFACE_KINDS:
        assert filtered.loc[filtered["kind"] == kind, "reject_reason"].isin(filtering.CONTENT_REASONS).all(), kind
    faces_only = filtered[filtered["kind"] == "face"]
    assert (faces_only["reject_reason"].isin(filtering.CONTENT_REASONS)).mean() <= 0.02
    assert set(by_kind.get_group("blank")) == {"blank"}
    assert set(by_kind.get_group("texture")) == {"noise"}
    # Each mislabelled copy conflicts with its original (no majority): both go.
    assert set(by_kind.get_group("mislabelled")) == {"conflicting_labels"}
    # Of an image and its duplicate copy in train, exactly one stays (the first by path).
    copies = filtered[filtered["sha1"].isin(filtered.loc[filtered["kind"] == "duplicate", "sha1"])]
    assert (copies.groupby("sha1")["keep"].sum() == 1).all()
    assert set(copies["reject_reason"]) == {"", "duplicate"}
    # Test copies of train images stay in test; their train originals are rejected.
    crossing = filtered[filtered["kind"] == "cross_split_duplicate"]
    assert crossing["keep"].all()
    originals = filtered[filtered["sha1"].isin(crossing["sha1"]) & (filtered["split"] == "train")]
    assert len(originals) and set(originals["reject_reason"]) == {"cross_split_duplicate"}


def test_notebook_views_of_the_filter(sample_filtered, sample_dir):
    filtered, _, _ = sample_filtered
    samples = filtering.review_samples(filtered, size=8, seed=0)
    assert samples["rejected"]["reject_reason"].isin(filtering.CONTENT_REASONS[1:]).all()
    assert samples["kept"]["keep"].all() and len(samples["borderline"]) == 8
    assert samples["borderline"]["face_evidence"].max() <= samples["kept"]["face_evidence"].max()
    fig = filtering.review_figure(samples["kept"], sample_dir, "kept", with_boxes=True)
    assert len(fig.axes) == 8
    baseline = filtering.output_manifest(filtered, apply_filter=False)
    assert baseline["keep"].all() and not filtered["keep"].all()
    table = filtering.scores_table({"images": 10.0, "nonface_recall": 0.5})
    assert list(table["value"]) == ["10", "50.00%"]


def test_scores_against_sample_truth_and_votes(sample_filtered, sample_dir):
    filtered, _, _ = sample_filtered
    reference, source = filtering.reference_labels(filtered, sample_dir)
    assert source == "sample_truth"
    result = filtering.scores(filtered, reference)
    assert result["nonface_recall"] == 1.0
    assert result["face_false_rejection"] <= 0.02
    assert result["nf_majority_recall"] >= 0.9 and result["zero_nf_false_rejection"] <= 0.02
    table = filtering.rejection_table(filtered, reference)
    assert table.loc["total", "images"] == len(filtered)
    assert set(data.CLASSES) <= set(table.index)
    assert table.loc["total", "kept"] == filtered["keep"].sum()


def test_reference_from_review_and_votes(tmp_path):
    manifest = _manifest([(f"train/a/{i}.png", "angry", "train", f"h{i}") for i in range(5)])
    manifest["vote_NF"] = [0, 10, 10, 10, 3]
    review = tmp_path / "review.csv"
    pd.DataFrame({"path": ["train/a/1.png", "train/a/2.png", "train/a/3.png"],
                  "kind": ["text", "face", "ambiguous"]}).to_csv(review, index=False)
    reference, source = filtering.reference_labels(manifest, None, review)
    assert source == "review+votes"
    assert list(reference) == ["face", "nonface", "face", "", ""]
    votes_only, source = filtering.reference_labels(manifest, None, None)
    assert source == "votes" and list(votes_only) == ["face", "nonface", "nonface", "nonface", ""]


def test_sweep_picks_an_operating_point(sample_filtered, sample_dir):
    filtered, _, work = sample_filtered
    reference, _ = filtering.reference_labels(filtered, sample_dir)
    subset = tuning.sweep_subset(reference, size=120, seed=0)
    assert len(subset) == 120 and (reference[subset] == "nonface").sum() == (reference == "nonface").sum()
    geometries = [DetectorSettings(size=80), DetectorSettings(size=96)]
    table = tuning.sweep(filtered.loc[subset], sample_dir, reference[subset], geometries,
                            thresholds=[-2.2, -1.8, -1.0], work_dir=work)
    assert len(table) == 2 * 2 * 3
    assert table["nonface_recall"].between(0, 1).all() and table["face_false_rejection"].between(0, 1).all()
    # Higher thresholds reject more of everything.
    for _, group in table.groupby(["size", "flat_weight"]):
        assert group["nonface_recall"].is_monotonic_increasing
        assert group["face_false_rejection"].is_monotonic_increasing
    best = tuning.best_operating_point(table, max_false_rejection=0.02)
    assert best["face_false_rejection"] <= 0.02
    settings, rules = tuning.settings_from_row(best)
    assert settings.size in (80, 96) and rules.flat_weight == best["flat_weight"]
    fig = tuning.tradeoff_figure(table, (settings, rules))
    assert len(fig.axes[0].lines) == 4
    with pytest.raises(DataError, match="at most"):
        tuning.best_operating_point(table, max_false_rejection=-1)
    # The notebook's choice: as given, or the sweep's best; a bad name is a ConfigError.
    given = DetectorSettings(), FilterRules(flat_weight=0.5)
    assert tuning.choose_operating_point("default", *given, table) == given
    chosen = tuning.choose_operating_point("sweep", *given, table, max_false_rejection=0.02)
    assert chosen == (settings, FilterRules(flat_weight=rules.flat_weight))
    with pytest.raises(ConfigError, match="operating_point"):
        tuning.choose_operating_point("best", *given)
    assert tuning.sweep_pivot(table).shape == (2 * 2, 3)


def test_cli_filter_writes_manifest_and_shares_cache(sample_dir, tmp_path, capsys):
    work = tmp_path / "work"
    out = tmp_path / "filtered.csv"
    assert cli.main(["filter", str(sample_dir), "--work-dir", str(work), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    written = data.read_manifest(out)
    assert {"path", "keep", "reject_reason", "face_found", "n_faces", "face_score"} <= set(written.columns)
    assert len(written) == len(data.build_manifest(sample_dir))
    assert "from the cache" in first and list((work / "cache" / "faces").glob("*.sqlite"))

    assert cli.main(["filter", str(sample_dir), "--work-dir", str(work), "--out", str(out),
                     "--threshold", "0.5", "--keep-duplicates"]) == 0
    assert " 0 detected" in capsys.readouterr().out
    stricter = data.read_manifest(out)
    content = filtering.CONTENT_REASONS
    assert stricter["reject_reason"].isin(content).sum() > written["reject_reason"].isin(content).sum()
    assert not stricter["reject_reason"].isin(filtering.DUPLICATE_REASONS).any()

    # The notebook's functions read the same cache.
    manifest = data.load_or_build_manifest(sample_dir, work)
    assert detection.detect_manifest(manifest, sample_dir, DetectorSettings(), work).computed == 0


def test_cli_filter_bad_input(tmp_path, capsys):
    assert cli.main(["filter", str(tmp_path / "missing"), "--out", str(tmp_path / "f.csv")]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["filter", str(tmp_path), "--out", str(tmp_path / "f.csv"), "--padding", "3"]) == 2
    assert "padding" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_filters_the_sample_and_logs_to_mlflow(sample_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from fer_lab.pipeline import runner

    work, store = tmp_path / "work", f"sqlite:///{tmp_path / 'mlruns.db'}"
    result = runner.run_pipeline(data_dir=sample_dir, only=["02"], out_dir=tmp_path / "report",
                                 overrides={"tracking_uri": store, "work_dir": str(work), "sweep_size": 120})
    assert result.ok, [nb.error for nb in result.notebooks]
    filtered = data.read_manifest(work / "filtered_manifest.csv")
    truth = pd.read_csv(sample_dir / "sample_truth.csv").set_index("path")["kind"]
    kinds = filtered["path"].map(truth)
    assert not filtered.loc[kinds.isin(filtering.TRUTH_NONFACE_KINDS), "keep"].any()
    assert filtered.loc[kinds == "face", "keep"].mean() >= 0.97

    run = MlflowClient(store).get_run(result.notebooks[0].run_id)
    assert run.data.metrics["filter_nonface_recall"] == 1.0
    assert run.data.metrics["filter_face_false_rejection"] <= 0.02
    assert run.data.tags["filter_reference"] == "sample_truth"
    artifacts = {item.path for folder in ("filter", "figures", "tables")
                 for item in MlflowClient(store).list_artifacts(run.info.run_id, folder)}
    assert {"filter/filtered_manifest.csv", "figures/filter_tradeoff.png", "figures/filter_rejected.png",
            "figures/filter_kept.png", "tables/filter_sweep.csv", "tables/filter_per_class.csv"} <= artifacts
