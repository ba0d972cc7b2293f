"""Model builders: EfficientNet (B0..B7, V2), a small plain CNN or a small ResNet behind one input and head contract.

Every model takes float32 grayscale pixels (N, 48, 48, 1) in 0..255 and returns softmax
probabilities. Resizing to the backbone's resolution, the gray->RGB repeat and the scaling each
backbone expects all happen inside the model, so a saved model needs no outside preprocessing
and only built-in Keras layers (it loads anywhere, without fer_lab). With `weights` naming a fer-lab model
(run, registered model or .keras file), the backbone and its weights come from that model and only the
head is new: fine-tuning a FER2013 model on other data and other classes.
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import keras
from keras import layers

from fer_lab.errors import ConfigError, FerLabError

INPUT_SIZE = 48
CNN_BACKBONE = "cnn"
RESNET_BACKBONE = "resnet"
HEAD_PREFIX = "head_"

_EFFICIENTNET_V1 = {f"efficientnetb{i}": f"EfficientNetB{i}" for i in range(8)}
_EFFICIENTNET_V2 = {
    f"efficientnetv2{suffix.lower()}": f"EfficientNetV2{suffix}" for suffix in ("B0", "B1", "B2", "B3", "S", "M", "L")
}
EFFICIENTNETS = {**_EFFICIENTNET_V1, **_EFFICIENTNET_V2}
BACKBONES = (CNN_BACKBONE, RESNET_BACKBONE, *EFFICIENTNETS)

# The drop_connect_rate every keras.applications EfficientNet constructor builds its blocks with.
KERAS_DROP_CONNECT_RATE = 0.2

_V1_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"
_V2_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"


@dataclass(frozen=True)
class HeadConfig:
    """Classifier on top of the backbone's feature map."""

    pooling: str = "avg"  # avg | max | flatten
    dropout: float = 0.3
    dense: tuple[int, ...] = ()  # hidden layer widths before the softmax

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "HeadConfig":
        values = dict(values or {})
        unknown = set(values) - {"pooling", "dropout", "dense"}
        if unknown:
            raise FerLabError(f"head: unknown keys {sorted(unknown)} (known: pooling, dropout, dense)")
        if "dense" in values:
            values["dense"] = tuple(int(units) for units in (values["dense"] or ()))
        head = cls(**values)
        if head.pooling not in ("avg", "max", "flatten"):
            raise FerLabError(f"head.pooling must be avg, max or flatten, not {head.pooling!r}")
        if not 0.0 <= head.dropout < 1.0:
            raise FerLabError(f"head.dropout must be in [0, 1), not {head.dropout}")
        return head


@dataclass(frozen=True)
class CnnConfig:
    """The plain CNN baseline: VGG-style stages of 3x3 conv + BatchNorm + ReLU, then max-pooling."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_block: int | tuple[int, ...] = 2  # one count for every block, or one per block
    block_dropout: float = 0.0
    # Keras' 0.99 needs a few hundred steps to settle; a tiny dataset with ten steps an epoch needs ~0.9.
    batchnorm_momentum: float = 0.99

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "CnnConfig":
        values = dict(values or {})
        known = {"widths", "convs_per_block", "block_dropout", "batchnorm_momentum"}
        unknown = set(values) - known
        if unknown:
            raise FerLabError(f"cnn: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
        if "widths" in values:
            values["widths"] = tuple(int(width) for width in values["widths"])
        if isinstance(values.get("convs_per_block"), (list, tuple)):
            values["convs_per_block"] = tuple(int(count) for count in values["convs_per_block"])
        config = cls(**values)
        if len(config.convs()) != len(config.widths) or min(config.convs()) < 1:
            raise FerLabError(f"cnn: convs_per_block {list(config.convs())} must give a positive count "
                              f"for each of the widths {list(config.widths)}")
        return config

    def convs(self) -> tuple[int, ...]:
        """The number of convolutions in each block."""
        if isinstance(self.convs_per_block, tuple):
            return self.convs_per_block
        return (int(self.convs_per_block),) * len(self.widths)


@dataclass(frozen=True)
class ResnetConfig:
    """A ResNet for 48 px faces: a 3x3 stem, then stages of basic residual blocks, max-pooling between stages.

    Pooling between stages instead of strided convolutions keeps the compute of the plain CNN (every
    stage costs about the same: channels double as the area quarters), so the skips come nearly free.
    """

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # basic blocks (two 3x3 convolutions each) per stage
    batchnorm_momentum: float = 0.99  # see CnnConfig

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ResnetConfig":
        values = dict(values or {})
        unknown = set(values) - {"widths", "blocks", "batchnorm_momentum"}
        if unknown:
            raise FerLabError(f"resnet: unknown keys {sorted(unknown)} (known: batchnorm_momentum, blocks, widths)")
        widths = tuple(int(width) for width in values.get("widths", cls.widths))
        blocks = values.get("blocks", cls.blocks)
        blocks = (int(blocks),) * len(widths) if isinstance(blocks, (int, float)) else tuple(int(b) for b in blocks)
        if len(blocks) != len(widths) or min(blocks) < 1 or min(widths) < 1:
            raise FerLabError(f"resnet: blocks {list(blocks)} must give a positive count for each of the widths {list(widths)}")
        return cls(widths, blocks, float(values.get("batchnorm_momentum", cls.batchnorm_momentum)))


@dataclass(frozen=True)
class EfficientNetConfig:
    """What fer-lab changes in a Keras EfficientNet (B0..B7, V2): the stochastic depth of its blocks."""

    # Keras drops each residual block's branch with a rate rising linearly with depth to this value;
    # 0 turns stochastic depth off, for a network that underfits its budget.
    drop_connect_rate: float = KERAS_DROP_CONNECT_RATE

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "EfficientNetConfig":
        values = dict(values or {})
        unknown = set(values) - {"drop_connect_rate"}
        if unknown:
            raise FerLabError(f"efficientnet: unknown keys {sorted(unknown)} (known: drop_connect_rate)")
        rate = float(values.get("drop_connect_rate", cls.drop_connect_rate))
        if not 0.0 <= rate < 1.0:
            raise FerLabError(f"efficientnet.drop_connect_rate must be in [0, 1), not {rate}")
        return cls(rate)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the architecture and its initial weights."""

    backbone: str = "efficientnetb2"
    image_size: int = INPUT_SIZE  # resolution the backbone sees; the model input stays 48x48
    weights: str = "none"  # imagenet | none | a backbone weights file (.h5) | a fer-lab model reference
    head: HeadConfig = field(default_factory=HeadConfig)
    cnn: CnnConfig = field(default_factory=CnnConfig)
    resnet: ResnetConfig = field(default_factory=ResnetConfig)
    efficientnet: EfficientNetConfig = field(default_factory=EfficientNetConfig)

    @property
    def pretrained(self) -> bool:
        return normalise_weights(self.weights) is not None


def normalise_weights(weights: str | None) -> str | None:
    """`imagenet`, a file path or model reference, or None for random initialisation."""
    if weights is None or str(weights).strip().lower() in ("", "none", "null", "random"):
        return None
    return "imagenet" if str(weights).strip().lower() == "imagenet" else str(weights)


def build_model(config: ModelConfig, num_classes: int, input_size: int = INPUT_SIZE, seed: int = 0) -> keras.Model:
    """Build the classifier; fails before any training when the requested weights are unavailable."""
    if config.backbone not in BACKBONES:
        raise FerLabError(f"unknown backbone {config.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if num_classes < 2:
        raise FerLabError(f"a classifier needs at least 2 classes, got {num_classes}")
    if config.image_size < 32:
        raise FerLabError(f"image_size must be at least 32 pixels, not {config.image_size}")
    weights = resolve_weights(config.backbone, config.weights)
    if weights is not None and is_model_reference(weights):
        return _transfer(config, weights, num_classes, input_size, seed)
    keras.utils.set_random_seed(seed)

    pixels = keras.Input((input_size, input_size, 1), name="pixels")
    x = pixels
    if config.image_size != input_size:
        x = layers.Resizing(config.image_size, config.image_size, interpolation="bilinear", name="resize")(x)
    if config.backbone == CNN_BACKBONE:
        backbone = _plain_cnn(config.image_size, config.cnn)
    elif config.backbone == RESNET_BACKBONE:
        backbone = _resnet(config.image_size, config.resnet)
    else:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
        backbone = _efficientnet(config.backbone, config.image_size, weights, config.efficientnet)
    x = backbone(x)
    x = _head(x, config.head, num_classes)
    return keras.Model(pixels, x, name=f"fer_{config.backbone}")


def is_model_reference(weights: str) -> bool:
    """Whether `weights` names a trained model (run, registered model, .keras file) rather than weights."""
    from fer_lab import tracking

    return tracking.is_reference(weights)


def _transfer(config: ModelConfig, reference: str, num_classes: int, input_size: int, seed: int) -> keras.Model:
    """A new classifier on the backbone (and its weights) of the model `reference` names, with a fresh head.

    The head is built for `num_classes`, which need not be the parent's classes (FER+ adds contempt;
    another dataset may lack neutral). The backbone's family and resolution must be what `config` says,
    so the run's parameters describe the model it trains.
    """
    from fer_lab import tracking

    parent, _, _ = tracking.load_reference(reference)
    family = parent.name.removeprefix("fer_")
    if family not in BACKBONES:
        raise ConfigError(f"weights {reference!r}: model {parent.name!r} was not built by fer-lab (no fer_<backbone> name)")
    backbone = backbone_of(parent)
    size, channels = int(backbone.input_shape[1]), int(backbone.input_shape[-1])
    if (family, size) != (config.backbone, config.image_size):
        raise ConfigError(f"weights {reference!r} is a {family} backbone at {size} px; set backbone={family} and "
                          f"image_size={size} (not {config.backbone} at {config.image_size} px)")
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((input_size, input_size, 1), name="pixels")
    x = pixels
    if size != input_size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    if channels == 3:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = _head(backbone(x), config.head, num_classes)
    return keras.Model(pixels, x, name=f"fer_{family}")


def _efficientnet(backbone: str, image_size: int, weights: str | None, config: EfficientNetConfig) -> keras.Model:
    constructor: Callable[..., keras.Model] = getattr(keras.applications, EFFICIENTNETS[backbone])
    try:
        # EfficientNet's own Rescaling/Normalization layers expect 0..255 RGB, which is what we feed it.
        model = constructor(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))
    except (ValueError, OSError) as error:
        raise FerLabError(f"cannot load weights {weights!r} into {backbone}: {error}") from error
    # The constructors do not take the rate; a Dropout layer reads its rate when the training step is traced.
    scale = config.drop_connect_rate / KERAS_DROP_CONNECT_RATE
    for layer in model.layers:
        if isinstance(layer, layers.Dropout) and layer.name.endswith("_drop"):
            layer.rate = layer.rate * scale
    return model


def _plain_cnn(image_size: int, config: CnnConfig) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 1), name="cnn_input")
    x = layers.Rescaling(1.0 / 255.0, name="stem_rescale")(inputs)
    for block, (width, convs) in enumerate(zip(config.widths, config.convs()), start=1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=config.batchnorm_momentum, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        if config.block_dropout:
            x = layers.Dropout(config.block_dropout, name=f"block{block}_dropout")(x)
    return keras.Model(inputs, x, name="plain_cnn")


def _resnet(image_size: int, config: ResnetConfig) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 1), name="resnet_input")
    x = layers.Rescaling(1.0 / 255.0, name="stem_rescale")(inputs)
    x = layers.Conv2D(config.widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=config.batchnorm_momentum, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, (width, blocks) in enumerate(zip(config.widths, config.blocks), start=1):
        if stage > 1:
            x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
        for block in range(1, blocks + 1):
            x = _basic_block(x, width, f"stage{stage}_block{block}", config.batchnorm_momentum)
    return keras.Model(inputs, x, name="resnet")


def _basic_block(x: Any, width: int, name: str, momentum: float) -> Any:
    shortcut = x
    if x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    # Zero-initialised last BatchNorm: each block starts as the identity, which trains faster.
    y = layers.BatchNormalization(momentum=momentum, gamma_initializer="zeros", name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _head(features: Any, head: HeadConfig, num_classes: int) -> Any:
    pooling = {
        "avg": layers.GlobalAveragePooling2D,
        "max": layers.GlobalMaxPooling2D,
        "flatten": layers.Flatten,
    }[head.pooling]
    x = pooling(name=f"{HEAD_PREFIX}pool")(features)
    for index, units in enumerate(head.dense, start=1):
        if head.dropout:
            x = layers.Dropout(head.dropout, name=f"{HEAD_PREFIX}dropout{index}")(x)
        x = layers.Dense(units, use_bias=False, name=f"{HEAD_PREFIX}dense{index}")(x)
        x = layers.BatchNormalization(name=f"{HEAD_PREFIX}bn{index}")(x)
        x = layers.Activation("relu", name=f"{HEAD_PREFIX}relu{index}")(x)
    if head.dropout:
        x = layers.Dropout(head.dropout, name=f"{HEAD_PREFIX}dropout")(x)
    # float32 output keeps the softmax stable under mixed precision.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a model from `build_model`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise FerLabError(f"model {model.name!r} has no nested backbone model")


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers after the backbone: pooling, dense, dropout and the softmax output."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX) or layer.name == "predictions"]


def layer_groups(backbone: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The backbone's layers with weights, grouped into blocks in network order.

    A block is the layer-name prefix before the first `_` (`stem`, `block1a`, ..., `block7a`, `top`
    for EfficientNet; `block1`..`blockN` for the plain CNN; `stem`, `stage1`..`stageN` for the ResNet),
    so `top:N` means the last N of these.
    """
    groups: dict[str, list[keras.layers.Layer]] = {}
    for layer in backbone.layers:
        # Normalization holds fixed ImageNet statistics, nothing to train.
        if layer.weights and not isinstance(layer, layers.Normalization):
            groups.setdefault(layer.name.split("_")[0], []).append(layer)
    return list(groups.items())


def imagenet_weights_file(backbone: str) -> tuple[Path, str]:
    """Where Keras caches a backbone's no-top ImageNet weights, and the URL it downloads them from."""
    if backbone in _EFFICIENTNET_V1:
        file_name, base_url = f"{backbone}_notop.h5", _V1_WEIGHTS_URL
    elif backbone in _EFFICIENTNET_V2:
        file_name, base_url = f"efficientnetv2-{backbone.removeprefix('efficientnetv2')}_notop.h5", _V2_WEIGHTS_URL
    else:
        raise FerLabError(f"backbone {backbone!r} has no ImageNet weights; use weights=none")
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return keras_home / "models" / file_name, base_url + file_name


def resolve_weights(backbone: str, weights: str | None, *, base_url: str | None = None, timeout: float = 5.0) -> str | None:
    """Check that the requested weights can be had, before any training starts.

    Returns what `keras.applications` takes (`imagenet`, a file path or None). ImageNet weights must be
    in the Keras cache or downloadable within `timeout` seconds; `base_url` replaces the download site.
    """
    weights = normalise_weights(weights)
    if weights is None:
        return None
    if is_model_reference(weights):
        return weights  # loaded, and checked, by the model build
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FerLabError(f"weights file {path} not found (weights: imagenet, none, a .h5 file, or a model: "
                              "run id, runs:/ID/model, models:/NAME@ALIAS, models:/NAME/VERSION, .keras file)")
        if backbone in (CNN_BACKBONE, RESNET_BACKBONE):
            raise FerLabError(f"the {backbone} backbone takes no weights file; use weights=none")
        return str(path.resolve())
    cached, url = imagenet_weights_file(backbone)
    if cached.is_file():
        return "imagenet"
    if base_url is not None:
        url = base_url.rstrip("/") + "/" + cached.name
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return "imagenet"
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise FerLabError(
            f"ImageNet weights for {backbone} are not cached at {cached} and cannot be downloaded from {url} "
            f"({getattr(error, 'reason', error)}). Download that file on a machine with internet access and "
            f"copy it to {cached}, or pass weights=<path to the file>, or train from scratch with weights=none."
        ) from error


def count_params(model: keras.Model) -> dict[str, int]:
    """Trainable and frozen parameter counts."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {"trainable": int(trainable), "non_trainable": int(frozen)}


def model_config_from_params(
    backbone: str,
    image_size: int,
    weights: str,
    head: dict[str, Any] | None = None,
    cnn: dict[str, Any] | None = None,
    resnet: dict[str, Any] | None = None,
    efficientnet: dict[str, Any] | None = None,
) -> ModelConfig:
    """A `ModelConfig` from plain notebook parameters."""
    return ModelConfig(
        backbone=str(backbone).lower(),
        image_size=int(image_size),
        weights=str(weights),
        head=HeadConfig.from_dict(head),
        cnn=CnnConfig.from_dict(cnn),
        resnet=ResnetConfig.from_dict(resnet),
        efficientnet=EfficientNetConfig.from_dict(efficientnet),
    )


def describe(config: ModelConfig) -> str:
    """One line naming the architecture, for logs and run descriptions."""
    base = f"{config.backbone}@{config.image_size}px"
    if config.backbone == CNN_BACKBONE:
        base += f" widths={list(config.cnn.widths)}x{config.cnn.convs_per_block}"
    elif config.backbone == RESNET_BACKBONE:
        base += f" widths={list(config.resnet.widths)} blocks={list(config.resnet.blocks)}"
    elif config.efficientnet != EfficientNetConfig():
        base += f" drop_connect_rate={config.efficientnet.drop_connect_rate:g}"
    weights = normalise_weights(config.weights) or "none"
    if is_model_reference(weights):
        base, weights = f"{config.backbone}@{config.image_size}px", f"backbone of {weights}"
    return f"{base}, weights={weights}, head={config.head.pooling}" + (
        f"+dense{list(config.head.dense)}" if config.head.dense else ""
    )
