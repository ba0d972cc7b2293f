"""Phased training schedules as data: which layers train, with which optimizer and learning rate, for how long.

A schedule is a list of phases repeated `cycles` times, e.g. the seed's
`[{name: head, epochs: 6, trainable: head}, {name: top, epochs: 4, trainable: "top:3"}] x 2`.
Epochs are numbered globally (1..total) across phases and cycles. Every phase re-compiles the
model: in Keras a change of `trainable` only takes effect at the next `compile()`, which is the bug
that made the original notebook's "frozen" phase train everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import keras
import pandas as pd
from keras import layers

from fer_lab.errors import ConfigError, FerLabError
from fer_lab.training import models

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
ONECYCLE_WARMUP = 0.3  # share of a one-cycle phase spent warming up
ONECYCLE_START = 1 / 25  # one-cycle starts at lr/25, as in fast.ai's recipe


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable layers and one optimizer."""

    name: str
    epochs: int
    trainable: str = "all"  # head | all | top:N (last N backbone blocks) | a fraction 0..1 of the blocks
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine | onecycle (linear warm-up then cosine) | plateau
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # where cosine decay ends, as a fraction of lr
    plateau_patience: int = 2  # plateau: epochs without a better validation metric before the lr drops
    plateau_factor: float = 0.5  # plateau: what the lr is multiplied by when it drops
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov momentum 0.9) | rmsprop
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise FerLabError(f"phase {self.name!r}: epochs must be at least 1, not {self.epochs}")
        if self.lr <= 0:
            raise FerLabError(f"phase {self.name!r}: lr must be positive, not {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise FerLabError(f"phase {self.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FerLabError(
                f"phase {self.name!r}: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}"
            )
        if self.plateau_patience < 1 or not 0.0 < self.plateau_factor < 1.0:
            raise FerLabError(f"phase {self.name!r}: plateau_patience must be >= 1 and plateau_factor in (0, 1)")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise FerLabError(f"phase {self.name!r}: warmup_epochs must be in [0, epochs) ({self.epochs})")
        parse_trainable(self.trainable)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Phase":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise FerLabError(f"phase {values.get('name', '?')!r}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        if "name" not in values or "epochs" not in values:
            raise FerLabError(f"phase {values!r}: every phase needs a name and epochs")
        values = dict(values)
        values["epochs"] = int(values["epochs"])
        if "plateau_patience" in values:
            values["plateau_patience"] = int(values["plateau_patience"])
        values["trainable"] = str(values.get("trainable", "all"))
        for key in ("lr", "warmup_epochs", "min_lr_ratio", "weight_decay", "plateau_factor"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values)


@dataclass(frozen=True)
class PlannedPhase:
    """A phase placed in the schedule: its cycle and its global epoch range (inclusive, 1-based)."""

    index: int
    cycle: int
    phase: Phase
    first_epoch: int
    last_epoch: int

    @property
    def tag(self) -> str:
        """Phase name and cycle, e.g. `head#2`: what metrics and checkpoints are labelled with."""
        return f"{self.phase.name}#{self.cycle}"


@dataclass(frozen=True)
class Schedule:
    """Phases repeated `cycles` times."""

    phases: tuple[Phase, ...]
    cycles: int = 1

    def __post_init__(self) -> None:
        if not self.phases:
            raise FerLabError("a schedule needs at least one phase")
        if self.cycles < 1:
            raise FerLabError(f"cycles must be at least 1, not {self.cycles}")

    @classmethod
    def from_config(cls, phases: Iterable[dict[str, Any] | Phase], cycles: int = 1) -> "Schedule":
        """Build from notebook/YAML parameters: a list of phase dicts and a cycle count."""
        if isinstance(phases, dict):
            raise FerLabError("phases must be a list of phase dicts, e.g. [{name: head, epochs: 6, trainable: head}]")
        parsed = tuple(p if isinstance(p, Phase) else Phase.from_dict(dict(p)) for p in phases)
        return cls(parsed, int(cycles))

    def plan(self) -> list[PlannedPhase]:
        planned, epoch = [], 1
        for cycle in range(1, self.cycles + 1):
            for phase in self.phases:
                planned.append(PlannedPhase(len(planned), cycle, phase, epoch, epoch + phase.epochs - 1))
                epoch += phase.epochs
        return planned

    @property
    def total_epochs(self) -> int:
        return self.cycles * sum(phase.epochs for phase in self.phases)

    def phase_at(self, epoch: int) -> PlannedPhase:
        """The planned phase that global epoch `epoch` (1-based) belongs to."""
        for planned in self.plan():
            if planned.first_epoch <= epoch <= planned.last_epoch:
                return planned
        raise FerLabError(f"epoch {epoch} is outside the schedule (1..{self.total_epochs})")

    def describe(self) -> str:
        """Short form, e.g. `[head 6ep, top:3 4ep] x 2`."""
        body = ", ".join(f"{p.name}({p.trainable}) {p.epochs}ep" for p in self.phases)
        return f"[{body}] x {self.cycles}" if self.cycles > 1 else f"[{body}]"

    def table(self) -> pd.DataFrame:
        """One row per planned phase, for notebooks and the run's artifacts."""
        rows = []
        for planned in self.plan():
            rows.append({"tag": planned.tag, "cycle": planned.cycle, "first_epoch": planned.first_epoch,
                         "last_epoch": planned.last_epoch, **asdict(planned.phase)})
        return pd.DataFrame(rows)

    def to_config(self) -> dict[str, Any]:
        return {"phases": [asdict(phase) for phase in self.phases], "cycles": self.cycles}


def parse_trainable(spec: str) -> tuple[str, float]:
    """`head`/`all` -> (kind, 0); `top:N` -> ("top", N); `0.3` or `fraction:0.3` -> ("fraction", 0.3)."""
    text = str(spec).strip().lower()
    if text in ("head", "all"):
        return text, 0.0
    kind, _, value = text.partition(":")
    try:
        if kind == "top" and value and int(value) >= 1:
            return "top", float(int(value))
        fraction = float(value if kind == "fraction" else text)
    except ValueError:
        fraction = -1.0
    if 0.0 < fraction <= 1.0:
        return "fraction", fraction
    raise FerLabError(f"trainable {spec!r}: use head, all, top:N (N >= 1 backbone blocks) or a fraction in (0, 1]")


def check_head_phases(schedule: Schedule, *, pretrained: bool) -> None:
    """Refuse a `head` phase whose backbone nothing has trained: a frozen random backbone gives random features.

    The seed's head phases assume ImageNet (or fer-lab) weights; from scratch, a backbone only becomes
    useful once an `all`, `top:N` or fraction phase before the head phase has trained it.
    """
    trained = pretrained
    for planned in schedule.plan():
        if parse_trainable(planned.phase.trainable)[0] != "head":
            trained = True
        elif not trained:
            raise ConfigError(
                f"phase {planned.tag} trains only the head, but the backbone is untrained (weights=none) and "
                "frozen, so the head would learn from random features; start with an `all` phase, use "
                "pretrained weights, or set allow_untrained_head=True to measure exactly that"
            )


def set_trainable(model: keras.Model, spec: str, *, freeze_batchnorm: bool) -> dict[str, Any]:
    """Make the head and the backbone blocks that `spec` selects trainable; freeze the rest.

    With `freeze_batchnorm`, BatchNormalization layers inside the backbone stay frozen even in trained
    blocks: a frozen BN layer runs in inference mode (Keras 3), so fine-tuning with small batches does
    not wreck the pretrained statistics, as in the keras-io EfficientNet fine-tuning example.
    Takes effect at the next `compile()`.
    """
    kind, amount = parse_trainable(spec)
    backbone = models.backbone_of(model)
    groups = models.layer_groups(backbone)
    if kind == "all":
        count = len(groups)
    elif kind == "top":
        count = min(int(amount), len(groups))
    elif kind == "fraction":
        count = math.ceil(amount * len(groups))
    else:
        count = 0
    model.trainable = True
    backbone.trainable = count > 0  # also flips layers without weights, which is harmless
    trained = [name for name, _ in groups[len(groups) - count:]] if count else []
    for position, (_, group_layers) in enumerate(groups):
        in_trained_part = position >= len(groups) - count
        for layer in group_layers:
            is_bn = isinstance(layer, layers.BatchNormalization)
            layer.trainable = in_trained_part and not (freeze_batchnorm and is_bn)
    for layer in models.head_layers(model):
        layer.trainable = True
    return {"spec": spec, "trainable_blocks": trained, "blocks": len(groups), **models.count_params(model)}


def learning_rate(phase: Phase, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The phase's learning rate, as a schedule over the phase's own optimizer steps.

    `plateau` starts constant; `plateau_reduces` decides after each epoch whether training lowers it.
    """
    if phase.lr_schedule in ("constant", "plateau"):
        return phase.lr
    total = max(1, phase.epochs * steps_per_epoch)
    warmup_epochs = phase.warmup_epochs or (ONECYCLE_WARMUP * phase.epochs if phase.lr_schedule == "onecycle" else 0)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(phase.lr, total, alpha=phase.min_lr_ratio)
    start = phase.lr * (ONECYCLE_START if phase.lr_schedule == "onecycle" else 0.1)
    return keras.optimizers.schedules.CosineDecay(
        start, total - warmup, alpha=phase.min_lr_ratio, warmup_target=phase.lr, warmup_steps=warmup
    )


def make_optimizer(phase: Phase, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """A fresh optimizer for the phase (its step counter drives the phase's learning-rate schedule)."""
    lr = learning_rate(phase, steps_per_epoch)
    if phase.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if phase.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=phase.weight_decay or 1e-4)
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=phase.weight_decay or None)
    return keras.optimizers.RMSprop(lr)


def compile_phase(
    model: keras.Model,
    planned: PlannedPhase,
    steps_per_epoch: int,
    *,
    freeze_batchnorm: bool,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """Apply the phase's trainable set and re-compile with a fresh optimizer; returns what is trainable."""
    summary = set_trainable(model, planned.phase.trainable, freeze_batchnorm=freeze_batchnorm)
    model.compile(
        optimizer=make_optimizer(planned.phase, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return summary


def plateau_reduces(values: Iterable[float], *, higher_is_better: bool, patience: int) -> bool:
    """Whether a reduce-on-plateau rule lowers the learning rate after the last of a phase's epoch `values`.

    The rule of Keras' ReduceLROnPlateau: count the epochs since the best value; at `patience` the rate
    drops and the count restarts. Computed from the history alone, so a resumed run decides the same.
    """
    best, waited, reduce = None, 0, False
    for value in values:
        reduce = False
        if best is None or (value > best if higher_is_better else value < best):
            best, waited = value, 0
            continue
        waited += 1
        if waited >= patience:
            reduce, waited = True, 0
    return reduce


def current_learning_rate(model: keras.Model) -> float:
    """The learning rate the optimizer uses at its current step."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
