"""Training throughput of the recipes: the real input pipeline vs ready tensors, and the share of the machine used.

    python benchmarks/bench_train.py [--data PATH] [--recipes params/fer2013-cpu.yaml,...] [--steps 40] [--rounds 3]
                                     [--xla] [--bfloat16]

For each recipe (a params file; its 03_train parameters over the notebook's defaults) the same compiled
model trains for `--steps` steps on
  tensors   one pre-made float32 batch, repeated: the model alone, no input work at all;
  pipeline  fer_lab.training.datasets.training_dataset: cached uint8 pixels, seeded shuffling, the recipe's
            albumentations in parallel tf.data workers, prefetch (what 03_train uses);
  naive     a Python generator that augments one image at a time with the same albumentations
            pipeline and stacks the batch (the common Keras pattern);
  xla       with --xla, `tensors` through a second copy of the model compiled with XLA (`jit_compile`,
            which Keras leaves off on machines without an accelerator).
  bfloat16  with --bfloat16, `tensors` through a copy of the model built in mixed bfloat16 (03_train's
            `mixed_precision: bfloat16`), whether or not this CPU computes bfloat16 natively.
The other modes train in the precision the recipe trains in on this machine (`precision.precision_policy`).
Modes are interleaved over `--rounds` rounds and the median is reported, because other processes
share the CPU. Images/s is wall-clock; CPU ms/image (this process, all threads) is the cost that
does not depend on what else runs. Pipeline overhead = how much slower `pipeline` is than `tensors`.
The training FLOP rate (3 x the model's forward FLOPs per image x images/s) is printed as a share of
this machine's fp32 matrix-multiply rate measured in the same run, with the minutes an epoch of the
recipe's training split takes at the pipeline's rate.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from typing import Any, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from fer_lab import data, project  # noqa: E402
from fer_lab.data import synthetic  # noqa: E402
from fer_lab.errors import FerLabError  # noqa: E402
from fer_lab.pipeline import notebook, runner  # noqa: E402
from fer_lab.training import augment, cost, datasets, models, precision, schedule, train  # noqa: E402

MODES = ("tensors", "pipeline", "naive")
XLA_MODE = "xla"
BFLOAT16_MODE = "bfloat16"
TRAIN_NOTEBOOK = project.NOTEBOOKS_DIR / "03_train.ipynb"


def recipe_config(params_file: str) -> train.TrainConfig:
    """The TrainConfig 03_train would build from `params_file` (its parameters over the notebook's defaults)."""
    values = {name: ast.literal_eval(default) for name, default in notebook.declared_parameters(TRAIN_NOTEBOOK).items()}
    planned = runner.plan_parameters(runner.discover_notebooks(), runner.load_params_files([params_file]))
    values.update(planned["03_train"])
    options = ("mixup", "cutmix", "ema", "batch_size", "label_smoothing", "class_weights", "soft_labels",
               "freeze_batchnorm", "mixed_precision", "monitor", "allow_untrained_head", "seed")
    return train.TrainConfig.from_params(
        backbone=values["backbone"], image_size=values["image_size"], weights="none", phases=values["phases"],
        cycles=values["cycles"], head=values["head"], cnn=values["cnn"], resnet=values["resnet"],
        efficientnet=values["efficientnet"],
        augment_params=values["augment"], **{name: values[name] for name in options})


def load_images(data_dir: str, minimum: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Train pixels and one-hot targets, tiled up to `minimum` images so no epoch boundary falls inside a run,
    and the number of training images (what one epoch is)."""
    data_path = synthetic.resolve_dataset(data_dir)
    work_path = project.WORK_DIR / "bench_train" / data_path.name
    manifest = data.load_or_build_manifest(data_path, work_path)
    rows = manifest[manifest["readable"].astype(bool) & (manifest["split"] == "train")].reset_index(drop=True)
    pixels = data.load_pixels(data_path, rows, cache_dir=work_path / "cache")
    targets = datasets.one_hot(rows["label"].tolist(), data.class_names(manifest))
    repeats = -(-minimum // len(pixels))
    return np.concatenate([pixels] * repeats), np.concatenate([targets] * repeats), len(rows)


def naive_generator(pixels: np.ndarray, targets: np.ndarray, batch_size: int,
                    config: augment.AugmentConfig, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    pipeline = augment.build_pipeline(config, pixels.shape[1], seed=seed)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(pixels))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            images = [pipeline(image=pixels[i])["image"].astype(np.float32)[..., None] for i in order[start:start + batch_size]]
            yield np.stack(images), targets[order[start:start + batch_size]]


def dataset_for(mode: str, pixels: np.ndarray, targets: np.ndarray, config: train.TrainConfig, steps: int,
                round_: int) -> Any:
    import tensorflow as tf

    batch_size = config.batch_size
    if mode in ("tensors", XLA_MODE, BFLOAT16_MODE):
        batch = (tf.constant(pixels[:batch_size, :, :, None].astype(np.float32)), tf.constant(targets[:batch_size]))
        return tf.data.Dataset.from_tensors(batch).repeat(steps)
    if mode == "pipeline":
        split = datasets.Split(pixels, targets)
        return datasets.training_dataset(split, batch_size=batch_size, augmentation=config.augment, seed=0,
                                         epoch=round_, mixup=config.mixup, cutmix=config.cutmix).take(steps)
    return naive_generator(pixels, targets, batch_size, config.augment, seed=round_)


def compiled_model(config: train.TrainConfig, classes: int, steps: int, *, xla: bool = False,
                   policy: str = "") -> Any:
    """The recipe's model compiled as 03_train compiles it, in its precision (or `policy`), optionally with XLA."""
    import keras

    keras.mixed_precision.set_global_policy(policy or precision.precision_policy(config.mixed_precision))
    try:
        model = models.build_model(config.model, classes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    phase = schedule.Schedule.from_config([{"name": "all", "epochs": 1}]).plan()[0]
    schedule.compile_phase(model, phase, steps, freeze_batchnorm=False)
    model.jit_compile = xla
    return model


def bench_recipe(config: train.TrainConfig, pixels: np.ndarray, targets: np.ndarray, *, steps: int,
                 rounds: int, modes: tuple[str, ...] = MODES) -> tuple[dict[str, dict[str, float]], int]:
    """Median images/s and CPU ms/image per mode, and the model's forward FLOPs per image."""
    model = compiled_model(config, targets.shape[1], steps)
    model_for = {mode: model for mode in modes}
    if XLA_MODE in modes:
        model_for[XLA_MODE] = compiled_model(config, targets.shape[1], steps, xla=True)
    if BFLOAT16_MODE in modes:
        model_for[BFLOAT16_MODE] = compiled_model(config, targets.shape[1], steps, policy="mixed_bfloat16")
    for mode in modes:  # warm-up: traces (and for XLA compiles) the train step for each input signature
        model_for[mode].fit(dataset_for(mode, pixels, targets, config, 3, 0), steps_per_epoch=3, epochs=1, verbose=0,
                            shuffle=False)
    samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for round_ in range(1, rounds + 1):
        for mode in modes:
            dataset = dataset_for(mode, pixels, targets, config, steps, round_)
            wall, cpu = time.perf_counter(), time.process_time()
            model_for[mode].fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            images = steps * config.batch_size
            samples[mode].append((images / wall, 1000 * cpu / images))
    medians = {mode: {"images_per_s": statistics.median(s[0] for s in values),
                      "cpu_ms_per_image": statistics.median(s[1] for s in values)} for mode, values in samples.items()}
    return medians, cost.forward_flops(model)


def training_flops_per_s(flops: int, images_per_s: float) -> float:
    """The training FLOP rate at `images_per_s`: forward and backward passes."""
    return cost.TRAINING_FLOPS_PER_FORWARD * flops * images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/sample", help="dataset (default: the embedded sample)")
    parser.add_argument("--recipes", default="params/fer2013-cpu.yaml,params/ci.yaml", help="params files")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="also time ready tensors through an XLA-compiled copy")
    parser.add_argument("--bfloat16", action="store_true", help="also time ready tensors through a mixed bfloat16 copy")
    args = parser.parse_args()
    modes = MODES + ((XLA_MODE,) if args.xla else ()) + ((BFLOAT16_MODE,) if args.bfloat16 else ())
    try:
        recipes = {name: recipe_config(name) for name in args.recipes.split(",")}
        largest_batch = max(config.batch_size for config in recipes.values())
        pixels, targets, epoch_images = load_images(args.data, largest_batch * args.steps * 2)
    except FerLabError as error:
        sys.exit(f"bench_train: {error}")
    matmul = cost.matmul_flops_per_s()
    print(f"{epoch_images} training images, {args.steps} steps x {args.rounds} rounds per mode; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"fp32 matmul {matmul / 1e9:.0f} GFLOP/s measured now")
    for name, config in recipes.items():
        result, flops = bench_recipe(config, pixels, targets, steps=args.steps, rounds=args.rounds, modes=modes)
        tensors, pipeline, naive = (result[mode] for mode in MODES)
        print(f"\n{name}: {models.describe(config.model)}, batch {config.batch_size}, "
              f"{flops / 1e6:.0f} MFLOP/image forward, {precision.precision_policy(config.mixed_precision)}")
        for mode in modes:
            rate = training_flops_per_s(flops, result[mode]["images_per_s"])
            print(f"  {mode:9s} {result[mode]['images_per_s']:7.1f} images/s   {result[mode]['cpu_ms_per_image']:6.2f} "
                  f"CPU ms/image   {rate / 1e9:6.1f} GFLOP/s = {rate / matmul:.1%} of matmul")
        print(f"  pipeline overhead vs tensors: wall {1 - pipeline['images_per_s'] / tensors['images_per_s']:+.1%}, "
              f"CPU {pipeline['cpu_ms_per_image'] / tensors['cpu_ms_per_image'] - 1:+.1%}")
        print(f"  pipeline / naive speed-up: {pipeline['images_per_s'] / naive['images_per_s']:.2f}x")
        print(f"  one epoch ({epoch_images} images) at the pipeline's rate: "
              f"{epoch_images / pipeline['images_per_s'] / 60:.1f} min")
        print(f"  ratios images/s pipeline:tensors {pipeline['images_per_s'] / tensors['images_per_s']:.3f}, "
              f"naive:tensors {naive['images_per_s'] / tensors['images_per_s']:.3f}"
              + "".join(f", {mode}:tensors {result[mode]['images_per_s'] / tensors['images_per_s']:.3f}"
                        for mode in modes if mode not in MODES))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
