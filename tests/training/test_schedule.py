"""Phased schedules: global epoch numbering, what each phase trains, re-compiling, learning rates."""

from __future__ import annotations

import numpy as np
import pytest

from fer_lab.errors import FerLabError
from fer_lab.training import models, schedule

SEED_EXAMPLE = [
    {"name": "head", "epochs": 6, "trainable": "head"},
    {"name": "top", "epochs": 4, "trainable": "top:2", "lr": 1e-4},
]


def tiny_cnn() -> "models.keras.Model":
    config = models.ModelConfig(backbone="cnn", cnn=models.CnnConfig(widths=(4, 8, 8, 8), convs_per_block=1),
                                head=models.HeadConfig(dropout=0.0, dense=(8,)))
    return models.build_model(config, num_classes=3)


def backbone_groups(model):
    return models.layer_groups(models.backbone_of(model))


def trainable_names(model) -> set[str]:
    return {weight.path for weight in model.trainable_weights}


def test_plan_numbers_epochs_globally_across_phases_and_cycles():
    plan_ = schedule.Schedule.from_config(SEED_EXAMPLE, cycles=2).plan()
    assert [(p.tag, p.first_epoch, p.last_epoch) for p in plan_] == [
        ("head#1", 1, 6), ("top#1", 7, 10), ("head#2", 11, 16), ("top#2", 17, 20)]
    sched = schedule.Schedule.from_config(SEED_EXAMPLE, cycles=2)
    assert sched.total_epochs == 20
    assert sched.phase_at(7).tag == "top#1" and sched.phase_at(16).tag == "head#2"
    assert sched.describe() == "[head(head) 6ep, top(top:2) 4ep] x 2"
    assert list(sched.table()["first_epoch"]) == [1, 7, 11, 17]
    with pytest.raises(FerLabError, match="outside the schedule"):
        sched.phase_at(21)


@pytest.mark.parametrize("spec, expected", [
    ("head", ("head", 0.0)), ("ALL", ("all", 0.0)), ("top:3", ("top", 3.0)), ("0.25", ("fraction", 0.25)),
    ("fraction:1", ("fraction", 1.0)),
])
def test_parse_trainable(spec, expected):
    assert schedule.parse_trainable(spec) == expected


@pytest.mark.parametrize("bad", [
    {"name": "x", "epochs": 1, "trainable": "top:0"},
    {"name": "x", "epochs": 1, "trainable": "1.5"},
    {"name": "x", "epochs": 1, "trainable": "backbone"},
    {"name": "x", "epochs": 0},
    {"name": "x", "epochs": 2, "optimizer": "lion"},
    {"name": "x", "epochs": 2, "lr_schedule": "step"},
    {"name": "x", "epochs": 2, "warmup_epochs": 2},
    {"name": "x", "epochs": 2, "learning_rate": 0.1},
    {"epochs": 2},
])
def test_bad_phases_are_rejected(bad):
    with pytest.raises(FerLabError):
        schedule.Schedule.from_config([bad])


def test_trainable_sets_follow_the_spec():
    model = tiny_cnn()
    groups = backbone_groups(model)
    assert [name for name, _ in groups] == ["block1", "block2", "block3", "block4"]
    head = {w.path for layer in models.head_layers(model) for w in layer.trainable_weights}

    summary = schedule.set_trainable(model, "head", freeze_batchnorm=False)
    assert trainable_names(model) == head and summary["trainable_blocks"] == []

    summary = schedule.set_trainable(model, "top:2", freeze_batchnorm=False)
    assert summary["trainable_blocks"] == ["block3", "block4"]
    for name, layers in groups:
        for layer in layers:
            assert layer.trainable == (name in ("block3", "block4")), layer.name

    schedule.set_trainable(model, "0.5", freeze_batchnorm=False)  # ceil(0.5 * 4) = 2 blocks
    assert {layer.name.split("_")[0] for layer in models.backbone_of(model).layers if layer.trainable and layer.weights} == {"block3", "block4"}

    summary = schedule.set_trainable(model, "all", freeze_batchnorm=False)
    assert summary["non_trainable"] == sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert all(layer.trainable for _, layers in groups for layer in layers)


def test_frozen_batchnorm_stays_in_inference_mode_while_its_block_trains():
    model = tiny_cnn()
    schedule.set_trainable(model, "all", freeze_batchnorm=True)
    backbone = models.backbone_of(model)
    bn = [layer for layer in backbone.layers if isinstance(layer, models.layers.BatchNormalization)]
    convs = [layer for layer in backbone.layers if isinstance(layer, models.layers.Conv2D)]
    assert bn and not any(layer.trainable for layer in bn)
    assert all(layer.trainable for layer in convs)
    x = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 1)).astype("float32")
    moving_mean = bn[0].moving_mean.numpy().copy()
    model(x, training=True)  # a trainable BN layer would update its moving statistics here
    np.testing.assert_array_equal(bn[0].moving_mean.numpy(), moving_mean)


def _fit_a_few_steps(model) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (32, 48, 48, 1)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 32)]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_each_phase_recompiles_so_the_frozen_part_really_stays_frozen():
    model = tiny_cnn()
    plan_ = schedule.Schedule.from_config([
        {"name": "head", "epochs": 1, "trainable": "head", "lr": 0.05, "optimizer": "sgd"},
        {"name": "all", "epochs": 1, "trainable": "all", "lr": 0.05, "optimizer": "sgd"},
    ]).plan()
    backbone_weights = lambda: [w.numpy().copy() for w in models.backbone_of(model).trainable_weights + models.backbone_of(model).non_trainable_weights]  # noqa: E731
    head_kernel = lambda: model.get_layer("predictions").kernel.numpy().copy()  # noqa: E731

    schedule.compile_phase(model, plan_[0], steps_per_epoch=2, freeze_batchnorm=False)
    before, head_before = backbone_weights(), head_kernel()
    _fit_a_few_steps(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone_weights())), "head phase changed the backbone"
    assert not np.array_equal(head_before, head_kernel())
    first_optimizer = model.optimizer

    schedule.compile_phase(model, plan_[1], steps_per_epoch=2, freeze_batchnorm=False)
    assert model.optimizer is not first_optimizer and int(model.optimizer.iterations) == 0
    before = backbone_weights()
    _fit_a_few_steps(model)
    assert not all(np.array_equal(a, b) for a, b in zip(before, backbone_weights())), "all phase left the backbone frozen"


def test_learning_rate_schedules():
    steps = 10
    onecycle = schedule.learning_rate(schedule.Phase("p", 10, lr=0.01, lr_schedule="onecycle"), steps)
    assert float(onecycle(0)) == pytest.approx(0.01 / 25, rel=1e-5)
    assert float(onecycle(30)) == pytest.approx(0.01, rel=1e-5)  # peak after 30% of 100 steps
    assert float(onecycle(100)) == pytest.approx(0.0, abs=1e-7)
    cosine = schedule.learning_rate(schedule.Phase("p", 2, lr=0.1, min_lr_ratio=0.1), steps)
    assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(20)) == pytest.approx(0.01, rel=1e-5)
    assert schedule.learning_rate(schedule.Phase("p", 2, lr=0.1, lr_schedule="constant"), steps) == 0.1
    assert isinstance(schedule.make_optimizer(schedule.Phase("p", 1, optimizer="adamw"), steps), models.keras.optimizers.AdamW)
