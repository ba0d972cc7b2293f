"""Phased, resumable training with MLflow tracking (through `fer_lab.tracking`, which also logs and loads models).

`train()` runs a `Schedule` epoch by epoch. After every epoch it writes, in this order, the model
with its optimizer state (`last.keras`), the best model so far (`best.keras`) and `state.json`
(finished epochs, history, best epoch): a process killed at any point resumes from the last
finished epoch, in the same MLflow run, without redoing or losing an epoch. The model it returns
is the best checkpoint by the validation metric over all phases, not the last one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import pandas as pd

from fer_lab import _native
from fer_lab.errors import ConfigError, FerLabError
from fer_lab.training import augment, datasets, distillation, ema, models, precision, schedule

STATE_FILE = "state.json"
LAST_MODEL = "last.keras"
BEST_MODEL = "best.keras"
EMA_FILE = "ema.npz"
LABELS_FILE = "labels.json"  # the class labels beside the checkpoints, as `tracking.load_reference` reads them
MONITORS = {"val_accuracy": "max", "val_loss": "min"}
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
                 "images_per_s", "val_time_s", "epoch_cpu_s", "phase", "cycle")
PRECISION_TAG = "precision"  # the Keras dtype policy the epochs computed in (see precision.precision_policy)
TRAINED_ON_TAG = "trained_on"  # where the epochs ran ("jax NVIDIA H200", "tensorflow cpu"), from the history


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes (and so whether a checkpoint can be resumed)."""

    model: models.ModelConfig = field(default_factory=models.ModelConfig)
    schedule: schedule.Schedule = field(
        default_factory=lambda: schedule.Schedule((schedule.Phase("all", 10),))
    )
    batch_size: int = 64
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced | sqrt
    soft_labels: float = 0.0  # weight of the FER+ vote distribution in the targets
    teacher: tuple[str, ...] = ()  # model references whose averaged probabilities the targets blend in
    distill: float = 0.0  # the teachers' share of the targets; 0: off
    augment: augment.AugmentConfig = field(default_factory=augment.AugmentConfig)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup's mixing share; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix's pasted area; 0: off (both on: one per batch)
    ema: float = 0.0  # decay of the weight average that is validated, checkpointed and logged; 0: off
    freeze_batchnorm: str = "auto"  # auto (= when the weights are pretrained) | true | false
    monitor: str = "val_accuracy"
    seed: int = 0
    mixed_precision: str = "auto"  # auto (float16 on a GPU) | true (float16) | bfloat16 (where native) | false
    allow_untrained_head: bool = False  # True: allow a head-only phase on a backbone nothing has trained yet

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, not {self.monitor!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, not {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"mixup and cutmix are Beta alphas >= 0 (0: off), not {self.mixup} / {self.cutmix}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be a decay in [0, 1) (0: off), e.g. 0.999, not {self.ema}")
        if str(self.freeze_batchnorm).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"freeze_batchnorm must be auto, true or false, not {self.freeze_batchnorm!r}")
        if str(self.mixed_precision).lower() not in precision.PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(precision.PRECISIONS)}, "
                              f"not {self.mixed_precision!r}")
        distillation.check(self.teacher, self.distill)
        if not self.allow_untrained_head:
            schedule.check_head_phases(self.schedule, pretrained=self.model.pretrained)

    @classmethod
    def from_params(
        cls,
        *,
        backbone: str,
        image_size: int,
        weights: str,
        phases: Sequence[dict[str, Any]],
        cycles: int = 1,
        head: dict[str, Any] | None = None,
        cnn: dict[str, Any] | None = None,
        resnet: dict[str, Any] | None = None,
        efficientnet: dict[str, Any] | None = None,
        augment_params: dict[str, Any] | None = None,
        **options: Any,
    ) -> "TrainConfig":
        """Build from the plain values of notebook parameters / YAML (`teacher`: one reference or a list)."""
        if "teacher" in options:
            teacher = options["teacher"]
            options["teacher"] = tuple(str(t) for t in ([teacher] if isinstance(teacher, str) else teacher or []) if t)
        return cls(
            model=models.model_config_from_params(backbone, image_size, weights, head, cnn, resnet, efficientnet),
            schedule=schedule.Schedule.from_config(phases, cycles),
            augment=augment.AugmentConfig.from_dict(augment_params),
            **{key: (str(value).lower() if key in ("freeze_batchnorm", "mixed_precision") else value)
               for key, value in options.items()},
        )

    @property
    def batchnorm_frozen(self) -> bool:
        mode = str(self.freeze_batchnorm).lower()
        return self.model.pretrained if mode == "auto" else mode == "true"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["schedule"] = self.schedule.to_config()
        # Settings at their defaults that older checkpoints predate are left out, so those still resume.
        if not self.distill:
            del values["teacher"], values["distill"]
        if self.model.efficientnet == models.EfficientNetConfig():
            del values["model"]["efficientnet"]
        return values

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TrainResult:
    """What a training call produced: the best model and the full per-epoch history."""

    model: keras.Model
    history: pd.DataFrame
    best_epoch: int
    best_value: float
    monitor: str
    checkpoint_dir: Path
    resumed_after: int  # epochs that were already finished when this call started
    compiles: int  # how many times this call (re-)compiled the model: once per phase it started


def train(
    config: TrainConfig,
    train_split: datasets.Split,
    val_split: datasets.Split,
    labels: Sequence[str],
    checkpoint_dir: str | os.PathLike[str],
    *,
    run_id: str = "",
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, dict[str, Any]], bool] | None = None,
    loader: str = "auto",
) -> TrainResult:
    """Run (or resume) the schedule; return the best model over all phases.

    `run_id` is the MLflow run the checkpoint belongs to; default is the active run, and metrics go
    to the active run when there is one. A checkpoint of another run is discarded (this is a new run);
    a checkpoint of the same run made with other settings is an error; one made without a run (`fer-lab
    train`, on a machine without MLflow) becomes this run's. `on_epoch(epoch, row)` is called after each
    epoch with its metrics; returning True ends training there (a pruned sweep trial). `loader` is how
    training batches are prepared (`datasets.LOADERS`): the same batches, at another speed.
    """
    from fer_lab import tracking

    labels = list(labels)
    if train_split.targets.shape[1] != len(labels) or val_split.targets.shape[1] != len(labels):
        raise FerLabError(f"targets have {train_split.targets.shape[1]} classes but there are {len(labels)} labels")
    # Metrics and tags go to the active run only; without MLflow loaded there is none.
    active = tracking.active_run_id() if sys.modules.get("mlflow") is not None else ""
    run_id = run_id or active
    checkpoint_dir = Path(checkpoint_dir)
    state = _load_state(checkpoint_dir, config, run_id, log)
    policy = precision.precision_policy(config.mixed_precision)
    caller_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(config, train_split, val_split, labels, checkpoint_dir, state, policy, run_id=run_id,
                      active=active, log=log, on_epoch=on_epoch, loader=loader)
    finally:
        keras.mixed_precision.set_global_policy(caller_policy)


def _train(config: TrainConfig, train_split: datasets.Split, val_split: datasets.Split, labels: list[str],
           checkpoint_dir: Path, state: dict[str, Any], policy: str, *, run_id: str, active: str,
           log: Callable[[str], None], on_epoch: Callable[[int, dict[str, Any]], bool] | None,
           loader: str) -> TrainResult:
    from fer_lab import tracking

    plan = config.schedule.plan()
    total_epochs = config.schedule.total_epochs
    steps = datasets.steps_per_epoch(len(train_split), min(config.batch_size, len(train_split)))
    val_data = datasets.eval_dataset(val_split)
    best_sign = 1.0 if MONITORS[config.monitor] == "max" else -1.0

    completed = state["completed_epochs"]
    if not state["run_id"] and run_id:
        state["run_id"] = run_id
    model, average = None, None
    if completed >= total_epochs:  # nothing left to train (perhaps trained elsewhere): best.keras is all it needs
        if not (checkpoint_dir / BEST_MODEL).is_file():
            raise FerLabError(f"{checkpoint_dir}: state says all {completed} epochs are done but {BEST_MODEL} is missing")
        log(f"all {total_epochs} epochs finished in {checkpoint_dir}")
    elif completed:
        if not (checkpoint_dir / LAST_MODEL).is_file():
            raise FerLabError(f"{checkpoint_dir}: state says {completed} epochs but {LAST_MODEL} is missing")
        model = keras.models.load_model(checkpoint_dir / LAST_MODEL)  # with its optimizer state
        log(f"resuming after epoch {completed}/{total_epochs} from {checkpoint_dir / LAST_MODEL}")
    else:
        model = models.build_model(config.model, len(labels), train_split.pixels.shape[1], seed=config.seed)
    _write_state(checkpoint_dir, state)
    if config.ema and model is not None:
        average = ema.WeightAverage(model, config.ema)
        if completed:
            if not (checkpoint_dir / EMA_FILE).is_file():
                raise FerLabError(f"{checkpoint_dir}: state says {completed} epochs but {EMA_FILE} is missing")
            average.load(checkpoint_dir / EMA_FILE)
    (checkpoint_dir / LABELS_FILE).write_text(json.dumps({"labels": labels}))  # best.keras is then a model reference
    device = f"{keras.config.backend()} {_native.accelerator() or 'cpu'}"
    if active:
        if completed:
            _relog_missing_epochs(run_id, state["history"])
        tracking.set_tags({"schedule": config.schedule.describe(), "total_epochs": str(total_epochs),
                           "model": models.describe(config.model), PRECISION_TAG: policy})
        if models.is_model_reference(config.model.weights):
            tracking.log_lineage(config.model.weights)

    compiles = 0
    stopped = False
    for planned in plan:
        if stopped:
            break
        if planned.last_epoch <= completed:
            continue
        if completed < planned.first_epoch:
            trainable = schedule.compile_phase(model, planned, steps, freeze_batchnorm=config.batchnorm_frozen,
                                               label_smoothing=config.label_smoothing)
            compiles += 1
        else:  # resumed inside this phase: the checkpoint carries its trainable flags and optimizer
            trainable = {"spec": planned.phase.trainable, **models.count_params(model)}
        if not datasets.uses_tf_data(loader):
            # Keras' JAX trainer builds a freshly compiled or loaded model's metrics from the first batch of
            # fit's own input and then restarts it: batches that workers had prepared came twice and others
            # never (measured). Built on a validation batch first, they are built once before fit.
            model.evaluate(val_data, steps=1, verbose=0)
        log(f"phase {planned.tag} ({planned.phase.trainable}, {planned.phase.optimizer} lr {planned.phase.lr:g} "
            f"{planned.phase.lr_schedule}): epochs {planned.first_epoch}-{planned.last_epoch}, "
            f"{trainable['trainable']:,} trainable / {trainable['non_trainable']:,} frozen parameters")
        if active:
            tracking.set_tags({"phase": planned.tag})
        for epoch in range(max(planned.first_epoch, completed + 1), planned.last_epoch + 1):
            row = {**_run_epoch(model, config, planned, epoch, train_split, val_data, steps, average, loader),
                   "device": device}
            state["history"].append(row)
            value = row[config.monitor]
            if state["best_epoch"] == 0 or best_sign * (value - state["best_value"]) > 0:
                state["best_epoch"], state["best_value"] = epoch, value
            if planned.phase.lr_schedule == "plateau" and schedule.plateau_reduces(
                    [r[config.monitor] for r in state["history"] if r["phase"] == planned.index],
                    higher_is_better=best_sign > 0, patience=planned.phase.plateau_patience):
                model.optimizer.learning_rate.assign(row["lr"] * planned.phase.plateau_factor)
                log(f"{config.monitor} has not improved for {planned.phase.plateau_patience} epochs: "
                    f"lr {row['lr']:.2e} -> {row['lr'] * planned.phase.plateau_factor:.2e}")
            _save_checkpoint(model, checkpoint_dir, best=state["best_epoch"] == epoch, average=average)
            state["completed_epochs"] = completed = epoch
            _write_state(checkpoint_dir, state)
            if active:
                _log_epoch(row)
            log(f"epoch {epoch}/{total_epochs} [{planned.tag}] loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
                f"| lr {row['lr']:.2e} | {row['epoch_time_s']:.0f}s, {row['images_per_s']:.0f} img/s")
            if on_epoch is not None and on_epoch(epoch, row):
                log(f"stopped after epoch {epoch}/{total_epochs}: pruned")
                stopped = True
                break

    best = _float32_best(checkpoint_dir)
    history = pd.DataFrame(state["history"])
    if active:
        tracking.log_metrics({"best_epoch": state["best_epoch"], f"best_{config.monitor}": state["best_value"]})
        trained_on = dict.fromkeys(row["device"] for row in state["history"] if row.get("device"))
        tracking.set_tags({TRAINED_ON_TAG: ", ".join(trained_on) or "unrecorded"})
    return TrainResult(best, history, state["best_epoch"], state["best_value"], config.monitor,
                       checkpoint_dir, state["resumed_after"], compiles)


def _run_epoch(model: keras.Model, config: TrainConfig, planned: schedule.PlannedPhase, epoch: int,
               train_split: datasets.Split, val_data: Any, steps: int,
               average: ema.WeightAverage | None, loader: str) -> dict[str, Any]:
    dataset = datasets.training_dataset(train_split, batch_size=config.batch_size, augmentation=config.augment,
                                      seed=config.seed, epoch=epoch, mixup=config.mixup, cutmix=config.cutmix,
                                      loader=loader)
    learning_rate = schedule.current_learning_rate(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    fitted = model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[average] if average else None)
    train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    started = time.perf_counter()
    raw = {}
    if average is not None:
        raw = {"val_accuracy_raw": float(model.evaluate(val_data, verbose=0, return_dict=True)["accuracy"])}
        with average.applied():
            validated = model.evaluate(val_data, verbose=0, return_dict=True)
    else:
        validated = model.evaluate(val_data, verbose=0, return_dict=True)
    val_seconds = time.perf_counter() - started
    images = steps * min(config.batch_size, len(train_split))
    return {**raw,
        "epoch": epoch, "phase_tag": planned.tag, "phase": planned.index, "cycle": planned.cycle,
        "train_loss": float(fitted.history["loss"][-1]), "train_accuracy": float(fitted.history["accuracy"][-1]),
        "val_loss": float(validated["loss"]), "val_accuracy": float(validated["accuracy"]),
        "lr": learning_rate, "epoch_time_s": train_seconds,
        "images_per_s": images / train_seconds, "val_time_s": val_seconds,
        # CPU seconds of this process: on a shared machine, wall time alone overstates the cost.
        "epoch_cpu_s": cpu_seconds,
    }


def _fresh_state(config: TrainConfig, run_id: str) -> dict[str, Any]:
    return {"config_fingerprint": config.fingerprint(), "config": config.to_dict(), "run_id": run_id,
            "completed_epochs": 0, "best_epoch": 0, "best_value": math.nan, "history": [], "resumed_after": 0}


def _load_state(checkpoint_dir: Path, config: TrainConfig, run_id: str, log: Callable[[str], None]) -> dict[str, Any]:
    state_file = checkpoint_dir / STATE_FILE
    if not state_file.is_file():
        return _fresh_state(config, run_id)
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as error:
        raise FerLabError(f"{state_file}: unreadable checkpoint state ({error}); delete {checkpoint_dir} to start over")
    if run_id and state.get("run_id") and state["run_id"] != run_id:
        log(f"{checkpoint_dir} holds run {state['run_id']}, not {run_id}: starting a new training")
        for name in (STATE_FILE, LAST_MODEL, BEST_MODEL, EMA_FILE):
            (checkpoint_dir / name).unlink(missing_ok=True)
        return _fresh_state(config, run_id)
    if state.get("config_fingerprint") != config.fingerprint():
        raise FerLabError(
            f"{checkpoint_dir} holds a checkpoint of this run made with different settings; resume it with the "
            f"same parameters, or use another run_name / delete {checkpoint_dir} to start over"
        )
    state["resumed_after"] = state["completed_epochs"]
    return state


def _write_state(checkpoint_dir: Path, state: dict[str, Any]) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    partial = checkpoint_dir / f"{STATE_FILE}.tmp"
    partial.write_text(json.dumps(state, indent=1, default=float))
    os.replace(partial, checkpoint_dir / STATE_FILE)


def _save_checkpoint(model: keras.Model, checkpoint_dir: Path, *, best: bool,
                     average: ema.WeightAverage | None = None) -> None:
    """Replace last.keras (and best.keras) atomically: a kill mid-write leaves the previous files intact.

    With a weight average, last.keras keeps the raw weights (what training resumes from), ema.npz the
    average, and best.keras the averaged weights (what is validated and logged).
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    partial = checkpoint_dir / "last.partial.keras"
    model.save(partial)
    if best:
        best_partial = checkpoint_dir / "best.partial.keras"
        if average is None:
            shutil.copyfile(partial, best_partial)
        else:
            with average.applied():
                model.save(best_partial)
        os.replace(best_partial, checkpoint_dir / BEST_MODEL)
    if average is not None:
        average.save(checkpoint_dir / EMA_FILE)
    os.replace(partial, checkpoint_dir / LAST_MODEL)


def _float32_best(checkpoint_dir: Path) -> keras.Model:
    """best.keras, rewritten in float32 when it trained in mixed precision: what is logged, exported and
    evaluated then computes the same way on every device."""
    best = keras.models.load_model(checkpoint_dir / BEST_MODEL)
    converted = precision.float32_copy(best)
    if converted is not best:
        partial = checkpoint_dir / "best.partial.keras"
        converted.save(partial)
        os.replace(partial, checkpoint_dir / BEST_MODEL)
    return converted


def _log_epoch(row: dict[str, Any]) -> None:
    from fer_lab import tracking

    tracking.log_metrics({name: row[name] for name in (*EPOCH_METRICS, "val_accuracy_raw") if name in row},
                         step=int(row["epoch"]))


def _relog_missing_epochs(run_id: str, history: list[dict[str, Any]]) -> None:
    """Log epochs that reached the checkpoint but not MLflow (a kill between the two writes)."""
    from fer_lab import tracking

    logged = set(tracking.metric_history([run_id], "val_accuracy")["step"].astype(int))
    for row in history:
        if int(row["epoch"]) not in logged:
            _log_epoch(row)
