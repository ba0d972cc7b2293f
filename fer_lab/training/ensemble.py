"""Several trained models as one: a Keras model whose output is the mean of its members' class probabilities.

An ensemble of a recipe's seeds is often worth more than any seed, at the sum of their costs. Built as one
Keras model it is used like any other: 04_evaluate scores it (with the same test-time views), 06 applies it,
`fer-lab export` writes it, `bench_peers.py` pairs it with `fer`. `fer-lab ensemble` builds and logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fer_lab.errors import ConfigError


def check_member_count(count: int) -> None:
    """Raise ConfigError unless there are two or more members."""
    if count < 2:
        raise ConfigError(f"an ensemble needs two or more models, got {count}")


def average_models(members: Sequence[Any], labels: Sequence[Sequence[str]],
                   names: Sequence[str] = ()) -> Any:
    """One Keras model that feeds its input to every member and averages their class probabilities.

    Args:
        members: Two or more Keras classifiers taking the same input and giving probabilities.
        labels: Each member's classes in output order; they must be the same for all.
        names: How each member is named in errors (default: its position).

    Returns:
        A functional Keras model; its members are layers named `member_1`, `member_2`, ...

    Raises:
        ConfigError: Fewer than two members, or members with other inputs or classes than the first.
    """
    import keras

    check_member_count(len(members))
    names = list(names) or [f"model {number}" for number in range(1, len(members) + 1)]
    for member, member_labels, name in zip(members, labels, names, strict=True):
        if tuple(member.input_shape[1:]) != tuple(members[0].input_shape[1:]):
            raise ConfigError(f"{name} takes input {member.input_shape[1:]}, {names[0]} {members[0].input_shape[1:]}: "
                              "an ensemble's models must take the same images")
        if list(member_labels) != list(labels[0]):
            raise ConfigError(f"{name} gives classes {list(member_labels)}, {names[0]} {list(labels[0])}: an "
                              "ensemble's models must give the same classes in the same order")
    inputs = keras.Input(shape=members[0].input_shape[1:], name="pixels")
    outputs = []
    for number, member in enumerate(members, start=1):
        member.name = f"member_{number}"  # loaded models share their architecture's name
        outputs.append(member(inputs))
    return keras.Model(inputs, keras.layers.Average(name="probabilities")(outputs), name="ensemble")


def shared_params(params: Sequence[dict[str, str]]) -> dict[str, str]:
    """The training parameters every member run logged with the same value (what the ensemble was trained
    with, e.g. `augment`, whose crop side 04_evaluate's ten-crop takes), without `seed`."""
    first, *others = params
    return {key: value for key, value in first.items()
            if key != "seed" and all(other.get(key) == value for other in others)}
