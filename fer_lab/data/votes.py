"""FER+ crowd votes: attached to a manifest as ten `vote_*` columns, and FER+'s majority-label rule.

Votes come from a per-file CSV keyed by relative path (`ferplus_votes.csv` in a folder dataset's
root is attached automatically) or from Microsoft's `fer2013new.csv`, row by row beside fer2013.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fer_lab._shared import read_csv
from fer_lab.data.labels import FERPLUS_CLASS, FERPLUS_NAMES, VOTE_COLUMNS
from fer_lab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fer_lab.data.manifest import DataSource

VOTES_FILENAME = "ferplus_votes.csv"
FERPLUS_CSV_NAMES = ("fer2013new.csv", "fer2013new.csv.gz")


def attach_votes(manifest: pd.DataFrame, votes_file: Path, source: DataSource) -> pd.DataFrame:
    """Add the ten `vote_*` columns from a per-file votes CSV or a FER+ `fer2013new.csv`.

    Rows without votes get NaN; votes for files not in the manifest are ignored.
    """
    if not votes_file.is_file():
        raise DataError(f"{votes_file}: votes file not found")
    table = read_csv(votes_file)
    if "path" in table.columns:
        votes = _vote_table(table, votes_file)
        votes.index = table["path"].str.replace("\\", "/", regex=False).str.removeprefix("./")
        repeated = votes.index[votes.index.duplicated()]
        if len(repeated):
            raise DataError(f"{votes_file}: {len(repeated)} paths appear twice, e.g. {repeated[0]}")
        joined = votes.reindex(manifest["path"])
    elif {"Usage", "Image name"} & set(table.columns):
        if source.kind != "csv":
            raise DataError(f"{votes_file}: FER+ row-order votes fit only fer2013.csv; folders need a 'path' column")
        joined = _ferplus_row_votes(manifest, table, votes_file, source.csv_file)
    else:
        raise DataError(f"{votes_file}: a votes file needs a 'path' column (or be FER+ fer2013new.csv)")
    manifest = manifest.drop(columns=[c for c in VOTE_COLUMNS if c in manifest.columns])
    for column in VOTE_COLUMNS:
        values = joined[column].to_numpy()
        manifest[column] = values.astype(np.int64) if not np.isnan(values).any() else values
    return manifest


def default_votes_file(source: DataSource) -> Path | None:
    if source.kind == "csv":
        names = FERPLUS_CSV_NAMES
    else:
        names = (VOTES_FILENAME,)
    return next((source.root / name for name in names if (source.root / name).is_file()), None)


def _vote_table(table: pd.DataFrame, votes_file: Path) -> pd.DataFrame:
    by_name = {column.lower().removeprefix("vote_"): column for column in table.columns}
    missing = [name for name in FERPLUS_NAMES if name.lower() not in by_name]
    if missing:
        raise DataError(f"{votes_file}: missing vote column(s) {', '.join(missing)}")
    votes = pd.DataFrame({f"vote_{name}": table[by_name[name.lower()]] for name in FERPLUS_NAMES})
    numeric = votes.apply(pd.to_numeric, errors="coerce")
    bad_rows = np.flatnonzero((numeric.isna() & votes.notna()).any(axis=1).to_numpy())
    if len(bad_rows):
        raise DataError(f"{votes_file} row {bad_rows[0]} (line {bad_rows[0] + 2}): vote counts must be numbers")
    return numeric.astype(np.float64)


def _ferplus_row_votes(manifest: pd.DataFrame, table: pd.DataFrame, votes_file: Path, csv_file: Path) -> pd.DataFrame:
    votes = _vote_table(table, votes_file)
    rows = manifest["path"].str.removeprefix("row:").astype(int).to_numpy()
    if len(table) <= rows.max():
        raise DataError(f"{votes_file}: {len(table)} rows but {csv_file.name} has {rows.max() + 1}; not the same rows")
    if "Usage" in table.columns:
        theirs = table["Usage"].astype(str).str.strip().to_numpy()[rows]
        differs = np.flatnonzero(theirs != manifest["usage"].to_numpy())
        if len(differs):
            row = rows[differs[0]]
            raise DataError(
                f"{votes_file} row:{row}: Usage {theirs[differs[0]]!r} but {csv_file.name} says "
                f"{manifest['usage'].iat[differs[0]]!r}; the files are not in the same row order"
            )
    return votes.iloc[rows].reset_index(drop=True)


LABEL_SOURCES = ("fer2013", "ferplus")
FERPLUS_EXCLUDED = ("unknown", "not a face")


def ferplus_majority(manifest: pd.DataFrame) -> pd.Series:
    """Each row's FER+ majority label by FER+'s own rule, or "" where the rule excludes the image.

    The rule of Microsoft's FERPlus code (`majority` mode): votes of 1 are dropped as outliers; the
    most voted class must then hold more than half of the remaining votes; an image whose majority
    is `unknown` or not-a-face, or that has no usable votes, is excluded. Labels include `contempt`.
    """
    missing = [column for column in VOTE_COLUMNS if column not in manifest.columns]
    if missing:
        raise DataError(f"FER+ labels need the manifest's vote columns; missing {', '.join(missing)} "
                        f"(put a {VOTES_FILENAME} in the data root, or fer2013new.csv beside fer2013.csv)")
    counts = manifest[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64, na_value=0.0)
    counts[counts <= 1] = 0.0
    total, peak = counts.sum(axis=1), counts.max(axis=1)
    names = np.array([FERPLUS_CLASS[column] for column in VOTE_COLUMNS], dtype=object)
    majority = names[counts.argmax(axis=1)]
    usable = (total > 0) & (peak > 0.5 * total) & ~np.isin(majority, FERPLUS_EXCLUDED)
    return pd.Series(np.where(usable, majority, ""), index=manifest.index, name="label")


def with_label_source(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    """The manifest labelled by `source`: `fer2013` as it is, `ferplus` with FER+ majority labels.

    With `ferplus`, the images the majority rule excludes are left out (the row count shows how many).
    """
    if source not in LABEL_SOURCES:
        raise ConfigError(f"labels must be one of {', '.join(LABEL_SOURCES)}, not {source!r}")
    if source == "fer2013":
        return manifest
    majority = ferplus_majority(manifest)
    relabelled = manifest.assign(label=majority)
    return relabelled[majority != ""].reset_index(drop=True)
