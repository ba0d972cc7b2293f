"""`fer-lab train`: 03_train's training without Jupyter or MLflow, for a machine that has neither.

A GPU machine rented for an hour often has a Keras backend (JAX) but neither the notebook stack nor the
team's tracking store. `train_parameters` plans 03_train's parameters as `fer-lab run` does (the
notebook's defaults, params files, `-p` overrides); `train_headless` trains the same way into the run's
checkpoint folder and stops. Where the tracking store is, `fer-lab run` with the same parameters and that
folder in place finds every epoch done: 03 logs the history to its MLflow run (its `trained_on` tag says
where the epochs ran), fits the decision offsets, logs the model, and 04 evaluates it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from fer_lab import project, tracking
from fer_lab.errors import ConfigError
from fer_lab.pipeline import runner
from fer_lab.pipeline.notebook import declared_parameters

TRAIN_NOTEBOOK = "03_train"
# 03_train's parameters that `TrainConfig.from_params` takes under the same name (`augment` is `augment_params`)
CONFIG_PARAMETERS = ("backbone", "image_size", "weights", "head", "cnn", "resnet", "efficientnet", "phases", "cycles",
                     "mixup", "cutmix", "ema", "batch_size", "label_smoothing", "class_weights", "soft_labels",
                     "teacher", "distill", "freeze_batchnorm", "mixed_precision", "monitor", "allow_untrained_head",
                     "seed")


def train_parameters(params_files: Iterable[str | os.PathLike[str]] = (), overrides: Mapping[str, Any] | None = None,
                     data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """03_train's parameter values as `fer-lab run` would inject them, over the notebook's defaults.

    Args:
        params_files: Params YAML files, later ones winning.
        overrides: `key` / `03_train.key` values over the files.
        data_dir: The dataset (default: the params' `data_dir`, else the embedded sample).

    Returns:
        Every parameter 03_train declares, by name.
    """
    params = runner.apply_overrides(runner.load_params_files(params_files), overrides or {})
    runner.resolve_data(params["shared"], data_dir)
    planned = runner.plan_parameters(runner.discover_notebooks(), params)[TRAIN_NOTEBOOK]
    declared = declared_parameters(project.NOTEBOOKS_DIR / f"{TRAIN_NOTEBOOK}.ipynb")
    return {**{name: ast.literal_eval(source) for name, source in declared.items()}, **planned}


def checkpoint_folder(values: Mapping[str, Any]) -> Path:
    """Where 03_train keeps the checkpoint of the run these parameters name."""
    if not values["run_name"]:
        raise ConfigError("fer-lab train needs 03_train.run_name: 03 finds the finished checkpoint by it "
                          "(e.g. -p 03_train.run_name=fer2013-gpu)")
    return project.resolve(values["work_dir"]) / "checkpoints" / values["run_name"]


def train_headless(values: Mapping[str, Any], *, checkpoint_dir: str | os.PathLike[str] | None = None,
                   loader: str = "auto", log: Callable[[str], None] = print) -> Any:
    """Train 03_train's model for `values` (see `train_parameters`) into its checkpoint folder.

    Args:
        values: 03_train's parameters.
        checkpoint_dir: Where to write the checkpoint (default: the run's folder, `checkpoint_folder`);
            03 reads it from the run's folder, so one written elsewhere is copied there first.
        loader: How training batches are prepared (`fer_lab.training.datasets.LOADERS`).
        log: Called with one line per phase and epoch.

    Returns:
        The `fer_lab.training.train.TrainResult`.
    """
    from fer_lab.training import splits, train

    if values["distill"]:
        raise ConfigError("fer-lab train cannot distil: the teachers are read from the tracking store "
                          "(run 03 with fer-lab run)")
    if tracking.is_reference(values["weights"]) and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"03_train.weights {values['weights']!r} names a trained model, which is read through "
                          "MLflow, and MLflow is not installed here: install it, or pass the weights as an .h5 file")
    folder = checkpoint_folder(values)  # a run name is needed wherever it goes: 03 finds the checkpoint by it
    target = Path(checkpoint_dir) if checkpoint_dir else folder
    config = train.TrainConfig.from_params(augment_params=values["augment"],
                                           **{name: values[name] for name in CONFIG_PARAMETERS})
    prepared = splits.prepare(project.resolve(values["data_dir"]), project.resolve(values["work_dir"]), config,
                              use_filtered=values["use_filtered"], labels=values["labels"],
                              per_class=values["per_class"], seed=values["seed"])
    log(f"{prepared.manifest_name}: {len(prepared.train_split)} train and {len(prepared.val_split)} val images, "
        f"classes {prepared.classes}; checkpoint {target}")
    return train.train(config, prepared.train_split, prepared.val_split, prepared.classes, target, log=log,
                       loader=loader)
