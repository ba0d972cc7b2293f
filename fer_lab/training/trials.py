"""A training run as an Optuna trial: per-epoch reports to the study and pruning of hopeless trials.

`fer-lab sweep` asks the study for a trial and passes 03_train its coordinates (`optuna_trial`: the
storage URL, the study name, the trial id and the pruner). 03 runs in a papermill kernel, so it cannot
hold the sweep's trial object: `TrialReporter` reopens the study from the shared storage, reports the
monitored validation metric after every epoch, and asks the pruner whether to go on. A pruned trial
stops training cleanly: 03 keeps its best model so far and tags its run so that the pipeline ends
after 03; the sweep then marks the trial pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fer_lab.errors import ConfigError

PRUNED_ATTR = "pruned_at_epoch"
PRUNERS = ("median", "halving", "none")


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    """An Optuna pruner from its description in a sweep file.

    Args:
        spec: `{type: median, startup_trials: 2, warmup_epochs: 1}`,
            `{type: halving, min_epochs: 1, reduction: 3}` or `{type: none}` (default median).

    Returns:
        The pruner.

    Raises:
        ConfigError: An unknown type or key.
    """
    import optuna

    spec = dict(spec or {})
    kind = spec.pop("type", "median")
    allowed = {"median": {"startup_trials", "warmup_epochs"}, "halving": {"min_epochs", "reduction"}, "none": set()}
    if kind not in allowed:
        raise ConfigError(f"pruner type {kind!r}: expected one of {', '.join(PRUNERS)}")
    unknown = set(spec) - allowed[kind]
    if unknown:
        raise ConfigError(f"pruner {kind}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed[kind])})")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("startup_trials", 2)),
                                           n_warmup_steps=int(spec.get("warmup_epochs", 1)))
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(spec.get("min_epochs", 1)),
                                                      reduction_factor=int(spec.get("reduction", 3)))
    return optuna.pruners.NopPruner()


class TrialReporter:
    """Reports one metric per epoch to an Optuna trial; called by `train.train` after every epoch."""

    def __init__(self, storage: str, study: str, trial_id: int, metric: str, pruner: Mapping[str, Any] | None = None):
        import optuna

        self.metric = metric
        loaded = optuna.load_study(study_name=study, storage=storage, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(loaded, trial_id)

    @classmethod
    def from_params(cls, optuna_trial: Mapping[str, Any], monitor: str) -> TrialReporter | None:
        """The reporter 03's `optuna_trial` parameter describes; None when it is empty (not a sweep)."""
        if not optuna_trial:
            return None
        missing = {"storage", "study", "trial_id"} - set(optuna_trial)
        if missing:
            raise ConfigError(f"optuna_trial: missing {sorted(missing)} (fer-lab sweep sets it)")
        return cls(optuna_trial["storage"], optuna_trial["study"], int(optuna_trial["trial_id"]), monitor,
                   optuna_trial.get("pruner"))

    def __call__(self, epoch: int, row: Mapping[str, Any]) -> bool:
        """Report the epoch's metric; True when the pruner says this trial should stop now."""
        self.trial.report(float(row[self.metric]), step=epoch)
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        from fer_lab import tracking

        tracking.set_tags({"optuna_pruned": "true",
                           tracking.STOP_TAG: f"Optuna pruned this trial after epoch {epoch}"})
        return True
