"""Model references and the MLflow Model Registry: the one resolver behind every place that takes a model.

A model reference is any of: an MLflow run id (its `model` artifact), `runs:/ID/model`,
`models:/NAME@ALIAS`, `models:/NAME/VERSION`, an MLflow model folder, or a `.keras` file written by
fer-lab (its class labels in a `<stem>.json` or `labels.json` beside it). `resolve` checks that the
reference exists and says what does exist when it does not; `load` returns the Keras model and its
labels; `register` puts a run's model in the registry under a name and, optionally, an alias.
The registry needs a database-backed store, which the default `sqlite:///mlruns/mlflow.db` is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_lab._shared import one_line
from fer_lab.errors import ConfigError
from fer_lab.tracking.models import load_model
from fer_lab.tracking.references import RUN_ID
from fer_lab.tracking.store import MODEL_ARTIFACT

REFERENCE_FORMS = "a run id, runs:/ID/model, models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file"
LABELS_FILE = "labels.json"  # what training writes beside its .keras checkpoints
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/(.+?)/?$")
_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([^/@]+)$")
_VERSION_URI = re.compile(r"^models:/([^/@]+)/(\d+)$")
_SHOWN = 12  # at most this many existing names/versions in an error message


@dataclass(frozen=True)
class ModelRef:
    """A checked model reference: what to load and where the model came from."""

    reference: str  # as given
    uri: str  # what is loaded: an MLflow model URI, or a file or folder path
    run_id: str = ""  # the training run (for a registered version: its source run); "" for a plain file
    name: str = ""  # registered model name
    version: str = ""  # registered model version
    alias: str = ""

    @property
    def is_file(self) -> bool:
        """Whether the model is a local file or folder rather than a tracked model."""
        return not self.uri.startswith(("runs:/", "models:/"))

    def lineage(self) -> dict[str, str]:
        """Tags naming this model as the parent of a run trained from it (empty values left out)."""
        values = {"parent_model": self.reference, "parent_model_name": self.name,
                  "parent_model_version": self.version, "parent_model_alias": self.alias,
                  "parent_model_run_id": self.run_id}
        return {key: value for key, value in values.items() if value}


def resolve(reference: str) -> ModelRef:
    """Check a model reference against the active tracking store and the file system.

    Args:
        reference: See the module docstring for the forms.

    Returns:
        The checked reference, with its source run and registry name/version filled in.

    Raises:
        ConfigError: One line naming what is missing and listing what exists.
    """
    text = str(reference).strip()
    if not text:
        raise ConfigError(f"no model given: pass {REFERENCE_FORMS}")
    if not (RUN_ID.match(text) or text.startswith(("runs:/", "models:/"))):
        return _file_reference(text)
    client = MlflowClient()  # only now: a client opens (and may create) the store
    if RUN_ID.match(text):
        _check_run(client, text)
        return ModelRef(text, f"runs:/{text}/{MODEL_ARTIFACT}", run_id=text)
    if match := _RUNS_URI.match(text):
        _check_run(client, match.group(1))
        return ModelRef(text, text, run_id=match.group(1))
    if match := _ALIAS_URI.match(text):
        name, alias = match.groups()
        _check_name(client, name)
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as error:
            aliases = client.get_registered_model(name).aliases or {}
            known = ", ".join(f"@{key} -> v{value}" for key, value in sorted(aliases.items())) or "none"
            raise ConfigError(f"registered model {name!r} has no alias {alias!r}; its aliases: {known}") from error
        return ModelRef(text, f"models:/{name}/{version.version}", run_id=version.run_id or "", name=name,
                        version=str(version.version), alias=alias)
    if match := _VERSION_URI.match(text):
        name, number = match.groups()
        _check_name(client, name)
        try:
            version = client.get_model_version(name, number)
        except MlflowException as error:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            raise ConfigError(f"registered model {name!r} has no version {number}; its versions: "
                              f"{', '.join(map(str, versions[-_SHOWN:])) or 'none'}") from error
        return ModelRef(text, text, run_id=version.run_id or "", name=name, version=str(version.version))
    raise ConfigError(f"model reference {text!r}: write runs:/ID/model, models:/NAME@ALIAS or models:/NAME/VERSION")


def _file_reference(text: str) -> ModelRef:
    path = Path(text).expanduser()
    if path.suffix == ".keras" or (path.is_dir() and (path / "MLmodel").is_file()):
        if not path.exists():
            raise ConfigError(f"model file {path} not found")
        return ModelRef(text, str(path.resolve()))
    raise ConfigError(f"{text!r} is not a model reference: pass {REFERENCE_FORMS}")


def _check_run(client: MlflowClient, run_id: str) -> None:
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"run {run_id} is not in the tracking store {_store()} "
                          "(set tracking_uri / --tracking-uri, or $MLFLOW_TRACKING_URI)") from error


def _check_name(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        names = sorted(model.name for model in _registered_models(client))
        shown = ", ".join(names[:_SHOWN]) + (" ..." if len(names) > _SHOWN else "")
        raise ConfigError(f"no registered model {name!r} in {_store()}; registered: {shown or 'none'} "
                          "(fer-lab register RUN_ID --name NAME)") from error


def _registered_models(client: MlflowClient) -> list[Any]:
    try:
        return list(client.search_registered_models(max_results=200))
    except MlflowException:
        return []  # a store without a registry: nothing is registered


def _store() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def load(reference: str | ModelRef) -> tuple[Any, list[str], ModelRef]:
    """The Keras model a reference names, its class labels in output order, and the checked reference."""
    ref = reference if isinstance(reference, ModelRef) else resolve(reference)
    if ref.is_file and ref.uri.endswith(".keras"):
        import keras

        try:
            model = keras.models.load_model(ref.uri, compile=False)
        except Exception as error:  # Keras raises several types for a file that is not a Keras model
            raise ConfigError(f"cannot load {ref.uri}: {one_line(error)[:300]}") from error
        return model, _file_labels(Path(ref.uri), int(model.output_shape[-1])), ref
    model, metadata = load_model(ref.uri, f"model {ref.reference!r} cannot be loaded from {ref.uri}")
    labels = metadata.get("labels")
    if not labels:
        raise ConfigError(f"model {ref.reference!r} carries no class labels in its metadata (not logged by fer-lab)")
    return model, list(labels), ref


def _file_labels(path: Path, outputs: int) -> list[str]:
    for sidecar in (path.with_suffix(".json"), path.parent / LABELS_FILE):
        if sidecar.is_file():
            try:
                labels = list(json.loads(sidecar.read_text())["labels"])
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"{sidecar}: expected JSON with a `labels` list ({one_line(error)})") from error
            if len(labels) != outputs:
                raise ConfigError(f"{sidecar} lists {len(labels)} labels but {path.name} has {outputs} outputs")
            return labels
    raise ConfigError(f"{path}: no {path.with_suffix('.json').name} or {LABELS_FILE} beside it naming the classes")


def log_lineage(reference: str | ModelRef) -> ModelRef:
    """Record on the active run the model it starts from: tags naming it, and its run's training data.

    The parent run's dataset inputs are logged again with the context `parent_training`, so the run
    shows in the UI both the data it was fine-tuned on and the data its backbone learnt from.

    Args:
        reference: The parent model.

    Returns:
        The checked reference.
    """
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    ref = reference if isinstance(reference, ModelRef) else resolve(reference)
    mlflow.set_tags(ref.lineage())
    active = mlflow.active_run()
    if ref.run_id and active is not None:
        client = MlflowClient()
        inputs = client.get_run(ref.run_id).inputs
        parent_inputs = [DatasetInput(item.dataset, [InputTag("mlflow.data.context", "parent_training")])
                         for item in (inputs.dataset_inputs if inputs else [])
                         if any(tag.key == "mlflow.data.context" and tag.value == "training" for tag in item.tags)]
        if parent_inputs:
            client.log_inputs(active.info.run_id, datasets=parent_inputs)
    return ref


def register(reference: str, name: str, alias: str = "") -> ModelRef:
    """Register the model of a training run under `name` (a new version) and point `alias` at it.

    Args:
        reference: The run: its id or `runs:/ID/model`.
        name: The registered model's name, created when new.
        alias: E.g. `champion`; moved to the new version when it pointed elsewhere.

    Returns:
        The new version as a checked reference (`models:/NAME/VERSION`).
    """
    import mlflow

    name, alias = str(name).strip(), str(alias).strip().lstrip("@")
    if not name or "/" in name or "@" in name:
        raise ConfigError(f"model name {name!r}: give a name without / or @")
    ref = resolve(reference)
    if not ref.run_id or ref.name:
        raise ConfigError(f"register takes a training run (its id or runs:/ID/model), not {reference!r}")
    try:
        info = mlflow.models.get_model_info(ref.uri)
    except Exception as error:  # MLflow raises several types for a run without that artifact
        raise ConfigError(f"run {ref.run_id} has no logged model at {ref.uri}") from error
    client = MlflowClient()
    try:
        # The logged model's own URI: registering runs:/ID/model makes MLflow 3 warn that it looked it up.
        version = mlflow.register_model(f"models:/{info.model_id}" if info.model_id else ref.uri, name)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as error:
        raise ConfigError(f"cannot register {ref.uri} as {name!r} in {_store()} ({one_line(error)[:200]}); "
                          "the registry needs a database store such as sqlite:///mlruns/mlflow.db") from error
    return ModelRef(f"models:/{name}/{version.version}", f"models:/{name}/{version.version}", run_id=ref.run_id,
                    name=name, version=str(version.version), alias=alias)
