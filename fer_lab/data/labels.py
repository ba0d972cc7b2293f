"""The one vocabulary: expression classes, their aliases, FER+ vote columns and split names."""

from __future__ import annotations

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# fer2013.csv `emotion` ids, in the order the challenge defined them.
FER2013_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS_NAMES = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
VOTE_COLUMNS = tuple(f"vote_{name}" for name in FERPLUS_NAMES)
SPLITS = ("train", "val", "test")  # in the order a dataset is used
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# Every FER+ vote column and what it counts for, in FER+'s column order (it breaks ties).
FERPLUS_CLASS = {"vote_neutral": "neutral", "vote_happiness": "happy", "vote_surprise": "surprise",
                 "vote_sadness": "sad", "vote_anger": "angry", "vote_disgust": "disgust", "vote_fear": "fear",
                 "vote_contempt": "contempt", "vote_unknown": "unknown", "vote_NF": "not a face"}
# The vote columns of the seven classes; contempt, unknown and not-a-face have none.
VOTE_CLASS = {column: name for column, name in FERPLUS_CLASS.items() if name in CLASSES}
CLASS_ALIASES = {
    "angry": "angry", "anger": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "joyful": "happy",
    "neutral": "neutral", "neutrality": "neutral",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "surprising": "surprise",
}


def canonical_label(name: str) -> str:
    """Map a class name or alias (any case) to its canonical name; unknown names are lowercased."""
    key = name.strip().lower()
    return CLASS_ALIASES.get(key, key)


def probability_column(label: str) -> str:
    """The column holding the predicted probability of `label`, in every prediction table fer_lab writes."""
    return f"prob_{label}"
