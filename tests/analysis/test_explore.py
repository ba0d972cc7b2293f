"""Exploration statistics on a hand-made manifest whose answers are known."""

import numpy as np
import pandas as pd

from fer_lab.analysis import explore
from fer_lab.data.labels import FERPLUS_CLASS


def _manifest() -> tuple[pd.DataFrame, np.ndarray]:
    rows = [
        ("train/happy/a.png", "happy", "train", "h1"),
        ("train/happy/b.png", "happy", "train", "h1"),   # exact duplicate, same label
        ("train/sad/c.png", "sad", "train", "h2"),
        ("train/happy/d.png", "happy", "train", "h2"),   # same pixels as c, other label
        ("train/happy/e.png", "happy", "train", "h3"),
        ("test/happy/f.png", "happy", "test", "h3"),      # test image also in train
        ("test/sad/g.png", "sad", "test", "h4"),
        ("val/sad/h.png", "sad", "val", "h5"),
    ]
    manifest = pd.DataFrame(rows, columns=["path", "label", "split", "sha1"]).assign(readable=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(len(rows), 48, 48), dtype=np.uint8)
    pixels[6] = 0  # an all-black frame
    return manifest, pixels


def test_distribution_and_imbalance():
    manifest, _ = _manifest()
    table = explore.class_distribution(manifest)
    assert list(table.columns) == ["train", "val", "test", "total"]
    assert table.loc["happy", "train"] == 4 and table.loc["sad", "test"] == 1 and table.loc["total", "total"] == 8
    assert explore.imbalance_ratio(manifest) == 4.0


def test_duplicates_conflicts_and_leaks():
    manifest, _ = _manifest()
    groups = explore.duplicate_groups(manifest).set_index("sha1")
    assert set(groups.index) == {"h1", "h2", "h3"}
    assert groups.loc["h2", "conflicting_labels"] and not groups.loc["h1", "conflicting_labels"]
    assert groups.loc["h3", "splits"] == "test,train" and not groups.loc["h3", "conflicting_labels"]
    leaks = explore.cross_split_leaks(manifest)
    assert list(leaks["path"]) == ["test/happy/f.png"]


def test_near_constant_images_and_mean_faces():
    manifest, pixels = _manifest()
    assert list(np.flatnonzero(explore.near_constant_mask(pixels))) == [6]
    means = explore.mean_faces(pixels, manifest["label"])
    np.testing.assert_allclose(means["sad"], pixels[manifest["label"].eq("sad").to_numpy()].mean(axis=0))


def test_vote_agreement_counts_majorities():
    manifest, _ = _manifest()
    votes = {column: 0 for column in FERPLUS_CLASS}
    manifest = manifest.assign(**votes)
    manifest.loc[[0, 1, 4], "vote_happiness"] = 8  # happy agrees three times
    manifest.loc[3, "vote_sadness"] = 9             # labelled happy, crowd says sad
    manifest.loc[[2, 6], "vote_NF"] = 10            # crowd says not a face
    agreement = explore.vote_agreement(manifest)
    assert agreement.loc["happy", "images"] == 4 and agreement.loc["happy", "agreement"] == 0.75
    assert agreement.loc["sad", "nf_majority"] == 2 and "val" not in agreement.index


def test_findings_table_and_metrics():
    manifest, pixels = _manifest()
    table = explore.findings(manifest, pixels)
    metrics = explore.findings_metrics(table)
    assert metrics["images"] == 8 and metrics["duplicate_groups"] == 3
    assert metrics["conflicting_duplicate_groups"] == 1 and metrics["leaked_images"] == 1
    assert metrics["near_constant_images"] == 1 and "ferplus_agreement" not in metrics
