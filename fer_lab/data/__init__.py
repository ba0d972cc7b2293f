"""Datasets (01_explore's input): one manifest for any supported layout, pixels, the class vocabulary, the sample.

The manifest API is re-exported here, so `from fer_lab import data` then `data.build_manifest(...)`.
"""

from fer_lab.data.labels import (
    CLASSES,
    FERPLUS_NAMES,
    SPLITS,
    USAGE_SPLIT,
    VOTE_COLUMNS,
    canonical_label,
)
from fer_lab.data.manifest import (
    IMAGE_EXTENSIONS,
    MANIFEST_COLUMNS,
    DataSource,
    build_manifest,
    class_names,
    count_table,
    data_root,
    detect_source,
    load_or_build_manifest,
    manifest_fingerprint,
    manifest_report,
    read_manifest,
    unreadable_summary,
    write_manifest,
)
from fer_lab.data.pixels import load_pixels
from fer_lab.data.votes import VOTES_FILENAME, with_label_source

__all__ = [
    "CLASSES",
    "DataSource",
    "FERPLUS_NAMES",
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "USAGE_SPLIT",
    "VOTES_FILENAME",
    "VOTE_COLUMNS",
    "build_manifest",
    "canonical_label",
    "class_names",
    "count_table",
    "data_root",
    "detect_source",
    "load_or_build_manifest",
    "load_pixels",
    "manifest_fingerprint",
    "manifest_report",
    "read_manifest",
    "unreadable_summary",
    "with_label_source",
    "write_manifest",
]
