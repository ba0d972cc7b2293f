"""Fine-tuning a fer-lab model on new classes: the reused backbone, trainable sets per phase, lineage, subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fer_lab import data, tracking
from fer_lab.errors import ConfigError
from fer_lab.training import datasets, models, schedule, splits, train

PHASES = [{"name": "head", "epochs": 1, "trainable": "head", "lr": 0.003},
          {"name": "top", "epochs": 1, "trainable": "top:1", "lr": 0.001},
          {"name": "all", "epochs": 1, "trainable": "all", "lr": 0.0005}]


def _conv_kernels(backbone) -> dict[str, np.ndarray]:
    return {layer.name: layer.get_weights()[0] for layer in backbone.layers if "conv" in layer.name}


def _trainable_layers(model) -> dict[str, list[str]]:
    """Per backbone block, the layers whose weights train after `set_trainable`."""
    trainable = {id(weight) for weight in model.trainable_weights}
    found: dict[str, list[str]] = {}
    for block, layers in models.layer_groups(models.backbone_of(model)):
        found[block] = [layer.name for layer in layers if any(id(w) in trainable for w in layer.weights)]
    return found


def test_a_new_head_on_the_base_backbone_with_trainable_sets_per_phase(base_model_store) -> None:
    uri, run_id = base_model_store
    tracking.configure(uri)
    base, base_labels, _ = tracking.load_reference(run_id)
    config = train.TrainConfig.from_params(backbone="cnn", image_size=48, weights=f"runs:/{run_id}/model",
                                           head={"pooling": "avg", "dropout": 0.2}, phases=PHASES)
    assert config.model.pretrained and config.batchnorm_frozen
    model = models.build_model(config.model, len(data.CLASSES))
    assert model.output_shape == (None, 7) and len(base_labels) == 6  # neutral is new
    reused = models.backbone_of(model)
    for name, kernel in _conv_kernels(models.backbone_of(base)).items():
        np.testing.assert_array_equal(_conv_kernels(reused)[name], kernel)

    expected = {"head": {"block1": [], "block2": []},
                "top:1": {"block1": [], "block2": ["block2_conv1"]},
                "all": {"block1": ["block1_conv1"], "block2": ["block2_conv1"]}}
    for spec, blocks in expected.items():
        summary = schedule.set_trainable(model, spec, freeze_batchnorm=config.batchnorm_frozen)
        assert _trainable_layers(model) == blocks, spec  # BatchNorm stays frozen (inference mode) throughout
        head = {w.path for w in model.trainable_weights} - {w.path for w in reused.weights}
        assert head and all(path.startswith(("head_", "predictions")) for path in head), spec
        assert summary["trainable_blocks"] == [name for name, layers in blocks.items() if layers]

    with pytest.raises(ConfigError, match="is a cnn backbone at 48 px; set backbone=cnn"):
        models.build_model(models.model_config_from_params("resnet", 48, run_id), 7)
    with pytest.raises(ConfigError, match="trains only the head, but the backbone is untrained"):
        train.TrainConfig.from_params(backbone="cnn", image_size=48, weights="none", phases=PHASES)


def test_resnet_blocks_are_the_stem_and_its_stages() -> None:
    config = models.model_config_from_params("resnet", 48, "none", resnet={"widths": [4, 8, 8], "blocks": 1})
    model = models.build_model(config, 3)
    assert [name for name, _ in models.layer_groups(models.backbone_of(model))] == ["stem", "stage1", "stage2",
                                                                                    "stage3"]
    summary = schedule.set_trainable(model, "top:2", freeze_batchnorm=True)
    found = _trainable_layers(model)
    assert summary["trainable_blocks"] == ["stage2", "stage3"] and found["stem"] == found["stage1"] == []
    assert "stage3_block1_conv2" in found["stage3"] and not any("bn" in name for names in found.values()
                                                               for name in names)
    schedule.set_trainable(model, 0.5, freeze_batchnorm=False)  # half of 4 blocks, BatchNorm trained too
    assert "stage2_block1_bn1" in _trainable_layers(model)["stage2"] and _trainable_layers(model)["stage1"] == []


def test_transfer_training_on_the_sample_records_its_parent(base_model_store, sample_dir, tmp_path) -> None:
    uri, run_id = base_model_store
    tracking.configure(uri)
    ref = tracking.register_model(run_id, "base-cnn", "champion")
    config = train.TrainConfig.from_params(backbone="cnn", image_size=48, weights="models:/base-cnn@champion",
                                           head={"pooling": "avg", "dropout": 0.2}, phases=PHASES, batch_size=16,
                                           augment_params={"crop": 0})
    manifest = data.build_manifest(sample_dir)
    rows = datasets.per_class_subset(manifest[manifest["readable"] & manifest["split"].isin(["train", "val"])],
                                     per_class=8, seed=0)
    pixels = data.load_pixels(sample_dir, rows)
    train_split, val_split, _ = splits.make_splits(rows, pixels, data.CLASSES, config)
    lines: list[str] = []
    with tracking.start_notebook_run("03_train", {"weights": config.model.weights}, tracking_uri=uri,
                                     experiment="transfer") as run:
        digest = tracking.log_dataset(rows[rows["split"] == "train"][["path", "label"]], "sample:8-per-class",
                                      str(sample_dir))
        result = train.train(config, train_split, val_split, data.CLASSES, tmp_path / "ckpt", log=lines.append)
    assert len(train_split) == 8 * 7 and result.history["epoch"].tolist() == [1, 2, 3]
    head_only = next(line for line in lines if line.startswith("phase head#1"))
    head_params = sum(int(np.prod(w.shape)) for w in result.model.weights if w.path.startswith(("head_", "predictions")))
    assert f" {head_params:,} trainable" in head_only
    finished = MlflowClient().get_run(run.info.run_id)
    tags = finished.data.tags
    assert (tags["parent_model_name"], tags["parent_model_alias"], tags["parent_model_run_id"]) == (
        "base-cnn", "champion", run_id)
    assert tags["parent_model_version"] == ref.version
    inputs = {(item.dataset.name, tag.value) for item in finished.inputs.dataset_inputs for tag in item.tags
              if tag.key == "mlflow.data.context"}
    assert inputs == {("sample:8-per-class", "training"), ("sample:fer2013:raw:no-neutral", "parent_training")}
    assert digest in {item.dataset.digest for item in finished.inputs.dataset_inputs}
    # The checkpoint is itself a model reference: best.keras with labels.json beside it.
    model, labels, _ = tracking.load_reference(str(tmp_path / "ckpt" / train.BEST_MODEL))
    assert labels == list(data.CLASSES) and model.output_shape == (None, 7)


def test_per_class_subset_is_seeded_and_leaves_other_splits() -> None:
    rows = pd.DataFrame({"split": ["train"] * 9 + ["val"] * 3, "label": list("aaaaabbbc") + list("abc"),
                         "path": [f"{i}.png" for i in range(12)]})
    kept = datasets.per_class_subset(rows, 2, seed=3)
    assert kept[kept["split"] == "train"]["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 1}
    assert (kept["split"] == "val").sum() == 3
    assert kept.equals(datasets.per_class_subset(rows, 2, seed=3))
    assert not kept["path"].equals(datasets.per_class_subset(rows, 2, seed=4)["path"])
    assert list(kept["path"]) == sorted(kept["path"], key=lambda p: int(p.split(".")[0]))  # original order
    assert datasets.per_class_subset(rows, 0).equals(rows)
    with pytest.raises(Exception, match="per_class must be >= 0"):
        datasets.per_class_subset(rows, -1)
