"""The embedded sample: deterministic, FER-shaped, learnable, detectable, and noisy on purpose."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_lab import cli, data
from fer_lab.data import synthetic
from fer_lab.errors import FerLabError


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def truth_of(root) -> pd.DataFrame:
    return pd.read_csv(root / "sample_truth.csv", keep_default_na=False)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = files_of(synthetic.make_sample(tmp_path / "a", per_class=4, seed=3))
    second = files_of(synthetic.make_sample(tmp_path / "b", per_class=4, seed=3))
    other = files_of(synthetic.make_sample(tmp_path / "c", per_class=4, seed=4))
    assert first == second
    assert len(first) > 40
    shared_images = set(first) & set(other)
    assert not any(first[name] == other[name] for name in shared_images if name.endswith(".png"))
    csv_a = files_of(synthetic.make_sample(tmp_path / "d", per_class=4, seed=3, fmt="csv"))
    csv_b = files_of(synthetic.make_sample(tmp_path / "e", per_class=4, seed=3, fmt="csv"))
    assert csv_a == csv_b and {"fer2013.csv", "fer2013new.csv", "sample_truth.csv"} <= set(csv_a)


def test_default_sample_layout_and_noise(sample_dir):
    truth = truth_of(sample_dir)
    pngs = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.rglob("*.png"))
    assert sorted(truth["path"]) == pngs
    assert 300 <= len(pngs) <= 600  # small enough for a fast CI pipeline
    for path in pngs:
        folder, label, name = path.split("/")
        assert folder in ("train", "test") and label in data.CLASSES
        assert name.split("_")[0] == ("Training" if folder == "train" else name.split("_")[0])
        assert name.split("_")[0] in ("Training", "PublicTest", "PrivateTest")
    kinds = truth["kind"].value_counts()
    assert kinds["face"] == 7 * (synthetic.DEFAULT_PER_CLASS + synthetic.DEFAULT_PER_CLASS // 4)
    for kind in ("nonface_text", "nonface_icon", "blank", "texture", "duplicate", "cross_split_duplicate"):
        assert kinds[kind] >= 2
    assert kinds["mislabelled"] == 2
    with Image.open(sample_dir / pngs[0]) as image:
        assert image.mode == "L" and image.size == (48, 48)
    assert json.loads((sample_dir / "sample.json").read_text())["per_class"] == synthetic.DEFAULT_PER_CLASS


def test_planted_duplicates_and_mislabels_are_what_truth_says(sample_dir):
    truth = truth_of(sample_dir).set_index("path")
    pixels = {path: np.asarray(Image.open(sample_dir / path)) for path in truth.index}
    for path, row in truth[truth["source"] != ""].iterrows():
        assert np.array_equal(pixels[path], pixels[row["source"]])
        assert truth.at[row["source"], "kind"] == "face"
        if row["kind"] == "cross_split_duplicate":
            assert path.startswith("test/") and row["source"].startswith("train/")
        if row["kind"] == "mislabelled":
            assert row["label"] != row["true_label"] == truth.at[row["source"], "label"]
        else:
            assert row["label"] == truth.at[row["source"], "label"]
    blanks = truth.index[truth["kind"] == "blank"]
    assert all(pixels[path].std() == 0 for path in blanks)
    assert any(pixels[path].max() == 0 for path in blanks)  # all-black frames, as in FER2013


def test_simulated_votes_follow_the_truth(sample_dir):
    truth = truth_of(sample_dir).set_index("path")
    votes = pd.read_csv(sample_dir / data.VOTES_FILENAME).set_index("path").loc[truth.index]
    counts = votes[list(data.FERPLUS_NAMES)]
    assert (counts.sum(axis=1) == 10).all()
    majority = counts.idxmax(axis=1)
    faces = truth["true_label"] != ""
    assert (majority[~faces] == "NF").all()
    agrees = majority[faces] == truth.loc[faces, "true_label"].map(synthetic.FERPLUS_NAME)
    assert agrees.mean() > 0.85
    mislabelled = truth.index[truth["kind"] == "mislabelled"]
    assert (votes.loc[mislabelled, "fer2013_label"] == truth.loc[mislabelled, "label"]).all()


def test_per_class_option_scales_the_dataset(tmp_path):
    small = data.build_manifest(synthetic.make_sample(tmp_path / "small", per_class=8))
    table = data.count_table(small)
    assert (table.loc["train", list(data.CLASSES)] >= 8).all()
    assert (table.loc[["val", "test"], "total"] > 0).all()
    assert truth_of(tmp_path / "small")["kind"].value_counts()["face"] == 7 * (8 + 2)


def test_csv_format_rows_and_truth(tmp_path):
    root = synthetic.make_sample(tmp_path / "csv", per_class=6, fmt="csv")
    raw = pd.read_csv(root / "fer2013.csv")
    assert list(raw.columns) == ["emotion", "pixels", "Usage"]
    assert raw["Usage"].tolist() == sorted(raw["Usage"], key=["Training", "PublicTest", "PrivateTest"].index)
    ferplus = pd.read_csv(root / "fer2013new.csv")
    assert list(ferplus.columns) == ["Usage", "Image name", *data.FERPLUS_NAMES] and len(ferplus) == len(raw)
    truth = truth_of(root)
    assert truth["path"].tolist() == [f"row:{i}" for i in range(len(raw))]
    manifest = data.build_manifest(root)
    assert manifest["label"].tolist() == truth["label"].tolist()
    sha1 = dict(zip(manifest["path"], manifest["sha1"]))
    for path, source in zip(truth["path"], truth["source"]):
        if source:
            assert sha1[path] == sha1[source]


def test_ensure_sample_creates_once_and_replaces_an_outdated_one(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_PER_CLASS", 4)
    target = tmp_path / "data" / "sample"
    assert synthetic.ensure_sample(target) == target
    marker = (target / "sample.json").stat().st_mtime_ns
    synthetic.ensure_sample(target)
    assert (target / "sample.json").stat().st_mtime_ns == marker
    settings = json.loads((target / "sample.json").read_text())
    (target / "sample.json").write_text(json.dumps({**settings, "version": 0}))
    (target / "train" / "stale.png").write_bytes(b"")
    synthetic.ensure_sample(target)
    assert json.loads((target / "sample.json").read_text()) == settings
    assert not (target / "train" / "stale.png").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_a_sample(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FerLabError, match="not empty and not an earlier sample"):
        synthetic.make_sample(tmp_path / "photos", per_class=4)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_cli_sample_command(tmp_path, capsys):
    assert cli.main(["sample", "--out", str(tmp_path / "s"), "--per-class", "4", "--seed", "2", "--format", "csv"]) == 0
    assert "sample written to" in capsys.readouterr().out
    assert (tmp_path / "s" / "fer2013.csv").is_file()
    assert cli.main(["sample", "--out", str(tmp_path / "s"), "--per-class", "1"]) == 2
    assert "per_class must be at least 4" in capsys.readouterr().err


def test_expressions_are_learnable_from_pixels(sample_dir):
    """A linear model on raw pixels must beat chance (1/7) by far; a small CNN does better still."""
    from sklearn.linear_model import RidgeClassifier

    manifest = data.build_manifest(sample_dir)
    kinds = truth_of(sample_dir).set_index("path").loc[manifest["path"], "kind"].to_numpy()
    pixels = data.load_pixels(sample_dir, manifest).reshape(len(manifest), -1) / 255.0
    train = (kinds == "face") & (manifest["split"] == "train").to_numpy()
    held_out = (kinds == "face") & (manifest["split"] != "train").to_numpy()
    model = RidgeClassifier(alpha=10.0).fit(pixels[train], manifest["label"][train])
    assert model.score(pixels[held_out], manifest["label"][held_out]) > 0.5


def test_hog_detector_finds_faces_but_not_noise(sample_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        import face_recognition

    def detected(path) -> bool:
        # FER-tight crops need room around the face for dlib's 80x80 window: enlarge, then pad.
        with Image.open(sample_dir / path) as image:
            enlarged = np.pad(np.asarray(image.resize((96, 96), Image.Resampling.BILINEAR)), 16, mode="edge")
        rgb = np.repeat(enlarged[:, :, None], 3, axis=2)
        return bool(face_recognition.face_locations(rgb, number_of_times_to_upsample=1, model="hog"))

    truth = truth_of(sample_dir)
    faces = truth.loc[truth["kind"] == "face", "path"].iloc[::6]
    noise = truth.loc[truth["kind"].isin(synthetic.NONFACE_KINDS), "path"]
    assert np.mean([detected(path) for path in faces]) >= 0.9
    assert not any(detected(path) for path in noise)
