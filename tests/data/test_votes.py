"""FER+ majority labels on hand-made votes whose answers follow from FER+'s rule by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from fer_lab.data import votes
from fer_lab.data.labels import FERPLUS_NAMES, VOTE_COLUMNS
from fer_lab.errors import ConfigError, DataError


def manifest_with_votes(*rows: dict[str, int]) -> pd.DataFrame:
    table = pd.DataFrame([{f"vote_{name}": row.get(name, 0) for name in FERPLUS_NAMES} for row in rows])
    return table.assign(path=[f"img{i}.png" for i in range(len(rows))], label="angry")


def test_majority_rule_drops_single_votes_and_needs_more_than_half() -> None:
    manifest = manifest_with_votes(
        {"happiness": 6, "neutral": 4},  # 6 of 10: happy
        {"happiness": 5, "neutral": 5},  # a tie holds exactly half: excluded
        {"sadness": 3, "fear": 1, "neutral": 1, "anger": 2},  # the single votes go: 3 of 5 -> sad
        {"contempt": 7, "neutral": 3},  # contempt is a class of its own
        {"unknown": 8, "neutral": 2},  # unknown majority: excluded
        {"NF": 9, "happiness": 1},  # not a face: excluded
        {"surprise": 1, "fear": 1},  # only single votes: nothing left, excluded
    )
    assert votes.ferplus_majority(manifest).tolist() == ["happy", "", "sad", "contempt", "", "", ""]
    relabelled = votes.with_label_source(manifest, "ferplus")
    assert relabelled["label"].tolist() == ["happy", "sad", "contempt"]
    assert relabelled["path"].tolist() == ["img0.png", "img2.png", "img3.png"]


def test_fer2013_labels_are_kept_and_bad_sources_are_named() -> None:
    manifest = manifest_with_votes({"happiness": 10})
    assert votes.with_label_source(manifest, "fer2013")["label"].tolist() == ["angry"]
    with pytest.raises(ConfigError, match="labels must be one of fer2013, ferplus"):
        votes.with_label_source(manifest, "fer+")
    with pytest.raises(DataError, match="vote columns"):
        votes.ferplus_majority(manifest.drop(columns=[VOTE_COLUMNS[0]]))
