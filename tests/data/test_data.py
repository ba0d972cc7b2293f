"""The data layer on generated datasets: each format, aliases, splits, votes, bad input, caching."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_lab import cli, data
from fer_lab.data import imaging
from fer_lab.data import manifest as manifest_module
from fer_lab.data.labels import FER2013_EMOTIONS
from fer_lab.errors import CorruptCacheWarning, DataError


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, to prove nothing under `root` was modified."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def write_fer_csv(path: Path, rows: list[tuple], columns: tuple[str, ...] = ("emotion", "pixels", "Usage")) -> Path:
    frame = pd.DataFrame(rows, columns=list(columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression="gzip" if path.name.endswith(".gz") else None)
    return path


def pixel_text(pixels: np.ndarray) -> str:
    return " ".join(map(str, pixels.ravel().tolist()))


# --- formats ---------------------------------------------------------------------------------


def test_kaggle_folder_layout(sample_dir):
    manifest = data.build_manifest(sample_dir)
    assert list(manifest.columns[: len(data.MANIFEST_COLUMNS)]) == list(data.MANIFEST_COLUMNS)
    assert set(data.VOTE_COLUMNS) <= set(manifest.columns)
    truth = pd.read_csv(sample_dir / "sample_truth.csv", keep_default_na=False)
    assert sorted(manifest["path"]) == sorted(truth["path"])
    assert manifest["readable"].all() and (manifest["error"] == "").all()
    assert (manifest[["height", "width", "channels"]] == [48, 48, 1]).all().all()
    expected_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    assert (manifest["split"] == manifest["usage"].map(expected_split)).all()
    assert manifest["path"].str.split("/").str[1].eq(manifest["label"]).all()
    assert set(manifest["label"]) == set(data.CLASSES)
    # votes from ferplus_votes.csv in the root, on every file, ten each
    votes = manifest[list(data.VOTE_COLUMNS)]
    assert votes.notna().all().all() and (votes.sum(axis=1) == 10).all()


def test_sha1_matches_pixels_and_finds_the_planted_duplicates(sample_dir):
    manifest = data.build_manifest(sample_dir).set_index("path")
    truth = pd.read_csv(sample_dir / "sample_truth.csv", keep_default_na=False)
    copies = truth[truth["source"] != ""]
    assert len(copies) > 0
    for copy, source in zip(copies["path"], copies["source"]):
        assert manifest.at[copy, "sha1"] == manifest.at[source, "sha1"]
    first = truth["path"].iloc[0]
    with Image.open(sample_dir / first) as image:
        assert manifest.at[first, "sha1"] == imaging.pixel_sha1(np.asarray(image))


def test_fer2013_csv_with_ferplus_votes(sample_dir, sample_csv_dir):
    manifest = data.build_manifest(sample_csv_dir)
    assert manifest["path"].tolist() == [f"row:{i}" for i in range(len(manifest))]
    raw = pd.read_csv(sample_csv_dir / "fer2013.csv")
    assert manifest["label"].tolist() == [FER2013_EMOTIONS[i] for i in raw["emotion"]]
    assert manifest["usage"].tolist() == raw["Usage"].tolist()
    assert manifest[list(data.VOTE_COLUMNS)].notna().all().all()
    ferplus = pd.read_csv(sample_csv_dir / "fer2013new.csv")
    assert manifest["vote_NF"].tolist() == ferplus["NF"].tolist()
    # the same seed draws the same images in both formats
    folder = data.build_manifest(sample_dir)
    assert sorted(manifest["sha1"]) == sorted(folder["sha1"])
    assert data.count_table(manifest).equals(data.count_table(folder))
    pixels = data.load_pixels(sample_csv_dir, manifest)
    assert pixels.shape == (len(manifest), 48, 48)
    assert np.array_equal(pixels[5], np.array(raw["pixels"][5].split(), dtype=np.uint8).reshape(48, 48))


def test_csv_file_path_gz_and_folder_path_agree(tmp_path, gradient_image):
    rows = [(3, pixel_text(gradient_image(i)), "Training") for i in range(6)]
    rows.append((0, pixel_text(gradient_image(9)), "PublicTest"))
    plain = write_fer_csv(tmp_path / "plain" / "fer2013.csv", rows)
    packed = write_fer_csv(tmp_path / "packed" / "fer2013.csv.gz", rows)
    by_file, by_folder, by_gz = (data.build_manifest(p) for p in (plain, plain.parent, packed))
    assert by_file.equals(by_folder) and by_file.equals(by_gz)
    assert by_file["label"].tolist() == ["happy"] * 6 + ["angry"]
    assert np.array_equal(data.load_pixels(packed, by_gz)[6], gradient_image(9))
    assert gzip.open(packed).read(7) == b"emotion"


def test_class_folder_root_with_aliases_and_unknown_classes(tmp_path, write_image, gradient_image):
    folders = ["Happiness", "ANGER", "sadness", "Surprised", "fearful", "disgusted", "neutrality", "contempt"]
    for index, folder in enumerate(folders):
        for i in range(10):
            write_image(tmp_path / folder / f"img{i}.png", gradient_image(index * 100 + i))
    (tmp_path / "README.txt").write_text("not a class folder")
    (tmp_path / "happiness_notes").mkdir()  # an empty folder is just an empty class
    kept = data.build_manifest(tmp_path, val_fraction=0.2, seed=1)
    assert set(kept["label"]) == {*data.CLASSES, "contempt"}
    assert (kept["usage"] == "").all()
    assert set(kept["split"]) == {"train", "val"}
    assert (kept.groupby("label")["split"].apply(lambda s: (s == "val").sum()) == 2).all()
    assert data.class_names(kept) == [*data.CLASSES, "contempt"]
    dropped = data.build_manifest(tmp_path, unknown_classes="drop")
    assert set(dropped["label"]) == set(data.CLASSES) and len(dropped) == 70
    same_seed = data.build_manifest(tmp_path, val_fraction=0.2, seed=1)
    other_seed = data.build_manifest(tmp_path, val_fraction=0.2, seed=2)
    assert same_seed["split"].equals(kept["split"]) and not other_seed["split"].equals(kept["split"])


def test_canonical_label_aliases():
    assert [data.canonical_label(n) for n in ("Happiness", " anger ", "SADNESS", "surprised", "Fearful")] == [
        "happy", "angry", "sad", "surprise", "fear"]
    assert data.canonical_label("Contempt") == "contempt"


def test_split_folders_of_class_folders(tmp_path, write_image, gradient_image):
    seeds = iter(range(100))
    for split in ("Train", "validation", "test"):
        for label in ("happy", "sad"):
            for i in range(3):
                write_image(tmp_path / split / label / f"{label}{i}.jpg", gradient_image(next(seeds)))
    manifest = data.build_manifest(tmp_path)
    assert manifest.groupby("split").size().to_dict() == {"test": 6, "train": 6, "val": 6}
    assert set(manifest.loc[manifest["split"] == "val", "usage"]) == {"validation"}
    assert set(manifest.loc[manifest["split"] == "train", "usage"]) == {"Train"}


def test_kaggle_test_folder_without_prefixes_is_test_and_val_carved_from_train(tmp_path, write_image, gradient_image):
    for i in range(10):
        write_image(tmp_path / "train" / "happy" / f"Training_{i}.png", gradient_image(i))
        write_image(tmp_path / "train" / "sad" / f"Training_{10 + i}.png", gradient_image(10 + i))
    for i in range(4):
        write_image(tmp_path / "test" / "happy" / f"{i}.png", gradient_image(50 + i))
    manifest = data.build_manifest(tmp_path, val_fraction=0.3)
    assert (manifest.loc[manifest["path"].str.startswith("test/"), "split"] == "test").all()
    train_rows = manifest[manifest["usage"] == "Training"]
    assert train_rows.groupby(["label", "split"]).size().to_dict() == {
        ("happy", "train"): 7, ("happy", "val"): 3, ("sad", "train"): 7, ("sad", "val"): 3}


def test_per_file_votes_keyed_by_path(tmp_path, write_image, gradient_image):
    for i in range(3):
        write_image(tmp_path / "happy" / f"{i}.png", gradient_image(i))
    votes = pd.DataFrame({"path": ["happy/0.png", "./happy/1.png", "elsewhere/9.png"]})
    for name in data.FERPLUS_NAMES:
        votes[name] = [1, 2, 3]
    votes.to_csv(tmp_path / "my_votes.csv", index=False)
    manifest = data.build_manifest(tmp_path, votes=tmp_path / "my_votes.csv", val_fraction=0).set_index("path")
    assert manifest.at["happy/0.png", "vote_happiness"] == 1 and manifest.at["happy/1.png", "vote_NF"] == 2
    assert np.isnan(manifest.at["happy/2.png", "vote_neutral"])
    # the same file named ferplus_votes.csv in the root is attached without asking
    shutil.copy(tmp_path / "my_votes.csv", tmp_path / data.VOTES_FILENAME)
    assert data.build_manifest(tmp_path, val_fraction=0)["vote_fear"].notna().sum() == 2


def test_votes_file_problems_are_data_errors(tmp_path, write_image, gradient_image):
    write_image(tmp_path / "happy" / "0.png", gradient_image(0))
    pd.DataFrame({"path": ["happy/0.png"], "neutral": [1]}).to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(DataError, match="missing vote column"):
        data.build_manifest(tmp_path, votes=tmp_path / "few.csv")
    twice = pd.DataFrame({"path": ["happy/0.png", "happy/0.png"], **{n: [1, 1] for n in data.FERPLUS_NAMES}})
    twice.to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(DataError, match="appear twice"):
        data.build_manifest(tmp_path, votes=tmp_path / "twice.csv")
    with pytest.raises(DataError, match="votes file not found"):
        data.build_manifest(tmp_path, votes=tmp_path / "absent.csv")


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path, write_image, gradient_image) -> Path:
    """A class folder with one good image of each awkward kind and one broken file of each kind."""
    root = tmp_path / "messy"
    happy = root / "happy"
    write_image(happy / "good.png", gradient_image(1))
    opaque = np.full((48, 48), 255, np.uint8)
    write_image(happy / "rgba.png", np.dstack([gradient_image(2), gradient_image(2), gradient_image(2), opaque]))
    write_image(happy / "deep16.png", gradient_image(3).astype(np.uint16) * 257)
    Image.new("CMYK", (48, 48), (10, 20, 30, 40)).save(happy / "cmyk.jpg")
    write_image(happy / "whole.jpg", gradient_image(4))
    whole = (happy / "whole.jpg").read_bytes()
    (happy / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (happy / "empty.png").write_bytes(b"")
    (happy / "notes.jpg").write_text("<html>this is not an image</html>")
    (happy / "Thumbs.db").write_bytes(b"\0\1")  # not an image extension: not listed at all
    return root


def test_bad_images_become_unreadable_rows_with_reasons(messy_folder):
    manifest = data.build_manifest(messy_folder, val_fraction=0).set_index("path")
    assert len(manifest) == 8
    readable = manifest[manifest["readable"]]
    assert sorted(readable.index) == ["happy/cmyk.jpg", "happy/deep16.png", "happy/good.png", "happy/rgba.png",
                                      "happy/whole.jpg"]
    assert manifest.at["happy/rgba.png", "channels"] == 4 and manifest.at["happy/cmyk.jpg", "channels"] == 4
    assert manifest.at["happy/truncated.jpg", "error"].startswith("truncated:")
    assert manifest.at["happy/empty.png", "error"].startswith("empty file:")
    assert manifest.at["happy/notes.jpg", "error"].startswith("not an image:")
    assert (manifest.loc[~manifest["readable"], "sha1"] == "").all()
    summary = data.unreadable_summary(manifest.reset_index())
    assert summary.to_dict() == {"truncated": 1, "empty file": 1, "not an image": 1}
    report = data.manifest_report(manifest.reset_index())
    assert "unreadable: 3 of 8 rows" in report


def test_pixels_of_readable_rows_and_error_for_unreadable(messy_folder, gradient_image):
    manifest = data.build_manifest(messy_folder, val_fraction=0)
    with pytest.raises(DataError, match="3 unreadable rows"):
        data.load_pixels(messy_folder, manifest)
    good = manifest[manifest["readable"]].reset_index(drop=True)
    pixels = data.load_pixels(messy_folder, good).astype(int)
    by_path = dict(zip(good["path"], pixels))
    assert np.array_equal(by_path["happy/good.png"], gradient_image(1))
    assert np.array_equal(by_path["happy/deep16.png"], gradient_image(3))  # 16-bit scaled back, not clipped
    assert np.abs(by_path["happy/rgba.png"] - gradient_image(2)).max() <= 1


def test_raw_files_are_never_modified(messy_folder, tmp_path):
    before = snapshot(messy_folder)
    manifest = data.load_or_build_manifest(messy_folder, tmp_path / "work", val_fraction=0)
    data.load_pixels(messy_folder, manifest[manifest["readable"]], cache_dir=tmp_path / "work" / "cache")
    assert snapshot(messy_folder) == before


def test_bad_csv_rows_are_unreadable_with_reasons(tmp_path, gradient_image):
    good = pixel_text(gradient_image(0))
    rows = [
        (0, good, "Training"),
        (1, " ".join(["7"] * 2303), "Training"),
        (2, good.replace(" ", " abc ", 1), "PublicTest"),
        (3, good + " 9", "PrivateTest"),
        (4, " ".join(["300"] * 2304), "Training"),
        (5, "", "Training"),
    ]
    csv = write_fer_csv(tmp_path / "fer2013.csv", rows)
    before = snapshot(tmp_path)
    manifest = data.build_manifest(csv)
    assert manifest["readable"].tolist() == [True, False, False, False, False, False]
    errors = manifest["error"].tolist()
    assert errors[1].startswith("wrong pixel count: 2303") and errors[3].startswith("wrong pixel count: 2305")
    assert errors[2].startswith("non-numeric pixels: 'abc'")
    assert errors[4].startswith("pixel out of range: 300")
    assert errors[5].startswith("wrong pixel count: 0")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([(9, "1 2 3 4", "Training")], ("emotion", "pixels", "Usage"),
         r"fer2013.csv row:0 \(line 2\): unknown emotion id '9'"),
        ([(1, "1 2 3 4", "Training"), ("sad", "1 2 3 4", "Training")], ("emotion", "pixels", "Usage"),
         r"row:1 \(line 3\): unknown emotion id 'sad'"),
        ([(1, "1 2 3 4", "Holdout")], ("emotion", "pixels", "Usage"), r"row:0 .*unknown Usage 'Holdout'"),
        ([(1, "1 2 3 4")], ("emotion", "pixels"), r"fer2013.csv: missing column\(s\) Usage \(found: emotion, pixels\)"),
        ([], ("emotion", "pixels", "Usage"), r"fer2013.csv: no rows"),
    ],
)
def test_structurally_broken_csv_is_a_data_error(tmp_path, rows, columns, message):
    csv = write_fer_csv(tmp_path / "fer2013.csv", rows, columns)
    with pytest.raises(DataError, match=message):
        data.build_manifest(csv)


def test_missing_empty_and_unrecognised_datasets_are_data_errors(tmp_path, write_image, gradient_image):
    with pytest.raises(DataError, match="no such file or folder"):
        data.build_manifest(tmp_path / "nowhere")
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DataError, match="zero.csv: empty file"):
        data.build_manifest(tmp_path / "zero.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a dataset"):
        data.build_manifest(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        data.build_manifest(tmp_path / "empty")
    (tmp_path / "no_images" / "happy").mkdir(parents=True)
    (tmp_path / "no_images" / "happy" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        data.build_manifest(tmp_path / "no_images")
    write_image(tmp_path / "mixed" / "train" / "happy" / "a.png", gradient_image(0))
    write_image(tmp_path / "mixed" / "happy" / "b.png", gradient_image(1))
    with pytest.raises(DataError, match="mixes split folders"):
        data.build_manifest(tmp_path / "mixed")
    write_image(tmp_path / "only_contempt" / "contempt" / "a.png", gradient_image(0))
    with pytest.raises(DataError, match="unknown classes dropped"):
        data.build_manifest(tmp_path / "only_contempt", unknown_classes="drop")


# --- pixels, cache, manifest files -----------------------------------------------------------


def test_load_pixels_matches_files_and_uses_the_cache(sample_dir, tmp_path):
    manifest = data.build_manifest(sample_dir)
    cache = tmp_path / "cache"
    pixels = data.load_pixels(sample_dir, manifest, cache_dir=cache)
    assert pixels.shape == (len(manifest), 48, 48) and pixels.dtype == np.uint8
    for row in (0, len(manifest) // 2, len(manifest) - 1):
        with Image.open(sample_dir / manifest["path"][row]) as image:
            assert np.array_equal(pixels[row], np.asarray(image))
    (cache_file,) = cache.glob("pixels-*-48.npy")
    np.save(cache_file, np.zeros_like(pixels))  # a second load must come from this file
    assert data.load_pixels(sample_dir, manifest, cache_dir=cache).max() == 0
    small = data.load_pixels(sample_dir, manifest, size=24, cache_dir=cache)
    assert small.shape == (len(manifest), 24, 24) and small.max() > 0


def test_a_truncated_pixel_cache_is_rebuilt_with_a_notice(sample_dir, tmp_path):
    manifest = data.build_manifest(sample_dir)
    pixels = data.load_pixels(sample_dir, manifest, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("pixels-*-48.npy")
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    with pytest.warns(CorruptCacheWarning, match="corrupt pixel cache"):
        again = data.load_pixels(sample_dir, manifest, cache_dir=tmp_path)
    assert np.array_equal(again, pixels)
    assert np.array_equal(np.load(cache_file), pixels)  # written whole again


def test_worker_pool_gives_the_same_manifest_and_pixels(sample_dir, monkeypatch):
    serial = data.build_manifest(sample_dir, workers=1)
    monkeypatch.setattr(manifest_module, "MIN_FILES_FOR_POOL", 10)
    pooled = data.build_manifest(sample_dir, workers=2)
    assert pooled.equals(serial)
    pooled_pixels = data.load_pixels(sample_dir, pooled, workers=2)
    assert np.array_equal(pooled_pixels, data.load_pixels(sample_dir, serial, workers=1))


def test_manifest_csv_round_trip_keeps_types(messy_folder, tmp_path):
    manifest = data.build_manifest(messy_folder, val_fraction=0)
    for column in data.VOTE_COLUMNS:
        manifest[column] = np.nan
    manifest.loc[0, "vote_NF"] = 4
    path = data.write_manifest(manifest, tmp_path / "deep" / "manifest.csv")
    back = data.read_manifest(path)
    assert back["readable"].dtype == bool and back["readable"].tolist() == manifest["readable"].tolist()
    assert back["error"].tolist() == manifest["error"].tolist() and (back["usage"] == "").all()
    assert back["vote_NF"].iloc[0] == 4 and back["vote_NF"].iloc[1:].isna().all()
    assert data.manifest_fingerprint(back) == data.manifest_fingerprint(manifest)
    relabelled = manifest.copy()
    relabelled.loc[0, "label"] = "sad"
    assert data.manifest_fingerprint(relabelled) != data.manifest_fingerprint(manifest)
    (tmp_path / "bad.csv").write_text("path,label\nx,y\n")
    with pytest.raises(DataError, match="missing column"):
        data.read_manifest(tmp_path / "bad.csv")


def test_load_or_build_manifest_reuses_only_while_data_and_options_match(sample_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(sample_dir, data_dir)
    work = tmp_path / "work"
    first = data.load_or_build_manifest(data_dir, work)
    written = (work / "manifest.csv").stat().st_mtime_ns
    again = data.load_or_build_manifest(data_dir, work)
    assert (work / "manifest.csv").stat().st_mtime_ns == written
    assert data.manifest_fingerprint(again) == data.manifest_fingerprint(first)
    assert again[list(data.VOTE_COLUMNS)].equals(first[list(data.VOTE_COLUMNS)])
    other_options = data.load_or_build_manifest(data_dir, work, unknown_classes="drop", seed=3)
    assert (work / "manifest.csv").stat().st_mtime_ns != written and len(other_options) == len(first)
    rebuilt_at = (work / "manifest.csv").stat().st_mtime_ns
    touched = data_dir / first["path"][0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    data.load_or_build_manifest(data_dir, work, unknown_classes="drop", seed=3)
    assert (work / "manifest.csv").stat().st_mtime_ns != rebuilt_at
    elsewhere = data.load_or_build_manifest(sample_dir, work)
    assert data.manifest_fingerprint(elsewhere) == data.manifest_fingerprint(first)
    assert '"data_path": "' + str(sample_dir.resolve()) in (work / "manifest.json").read_text()


# --- command line ----------------------------------------------------------------------------


def test_cli_manifest_writes_csv_and_prints_counts(sample_dir, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert cli.main(["manifest", str(sample_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "surprise" in printed and "votes:" in printed and "unreadable: none" in printed
    assert len(data.read_manifest(out)) == len(list(sample_dir.rglob("*.png")))


def test_cli_bad_input_is_one_line_and_exit_code_two(tmp_path, capsys):
    csv = write_fer_csv(tmp_path / "fer2013.csv", [(8, "1 2 3 4", "Training")])
    assert cli.main(["manifest", str(csv), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "row:0" in err and "unknown emotion id" in err
    assert not (tmp_path / "m.csv").exists()
