"""Training throughput: the real input pipeline vs in-memory tensors vs a naive per-image generator.

    python benchmarks/bench_train.py [--data PATH] [--steps 40] [--rounds 3]

For each model (EfficientNetB0 at 48 px, EfficientNetB2 at 96 px by default) the same compiled
model trains for `--steps` steps on
  tensors   one pre-made float32 batch, repeated: the model alone, no input work at all;
  pipeline  fer_lab.training.datasets.training_dataset: cached uint8 pixels, seeded shuffling, albumentations
            in parallel tf.data workers, prefetch (what 03_train uses);
  naive     a Python generator that augments one image at a time with the same albumentations
            pipeline and stacks the batch (the common Keras pattern).
Modes are interleaved over `--rounds` rounds and the median is reported, because other processes
share the CPU. Images/s is wall-clock; CPU ms/image (this process, all threads) is the cost that
does not depend on what else runs. Pipeline overhead = how much slower `pipeline` is than `tensors`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from fer_lab import augment, data, inputs, models, project, sample, schedule  # noqa: E402

MODES = ("tensors", "pipeline", "naive")


def load_images(data_dir: str, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Train pixels and one-hot targets, tiled up to `minimum` images so no epoch boundary falls inside a run."""
    data_path = sample.resolve_dataset(data_dir)
    work_path = project.WORK_DIR / "bench_train" / data_path.name
    manifest = data.load_or_build_manifest(data_path, work_path)
    rows = manifest[manifest["readable"].astype(bool) & (manifest["split"] == "train")].reset_index(drop=True)
    pixels = data.load_pixels(data_path, rows, cache_dir=work_path / "cache")
    targets = inputs.one_hot(rows["label"].tolist(), data.class_names(manifest))
    repeats = -(-minimum // len(pixels))
    return np.concatenate([pixels] * repeats), np.concatenate([targets] * repeats)


def naive_generator(pixels: np.ndarray, targets: np.ndarray, batch_size: int,
                    config: augment.AugmentConfig, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    pipeline = augment.build_pipeline(config, seed=seed)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(pixels))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            images = [pipeline(image=pixels[i])["image"].astype(np.float32)[..., None] for i in order[start:start + batch_size]]
            yield np.stack(images), targets[order[start:start + batch_size]]


def dataset_for(mode: str, pixels: np.ndarray, targets: np.ndarray, batch_size: int, steps: int,
                config: augment.AugmentConfig, round_: int) -> Any:
    import tensorflow as tf

    if mode == "tensors":
        batch = (tf.constant(pixels[:batch_size, :, :, None].astype(np.float32)), tf.constant(targets[:batch_size]))
        return tf.data.Dataset.from_tensors(batch).repeat(steps)
    if mode == "pipeline":
        split = inputs.Split(pixels, targets)
        return inputs.training_dataset(split, batch_size=batch_size, augmentation=config, seed=0, epoch=round_).take(steps)
    return naive_generator(pixels, targets, batch_size, config, seed=round_)


def bench_model(name: str, image_size: int, pixels: np.ndarray, targets: np.ndarray, *, batch_size: int,
                steps: int, rounds: int) -> dict[str, dict[str, float]]:
    model = models.build_model(models.ModelConfig(backbone=name, image_size=image_size), targets.shape[1])
    phase = schedule.Schedule.from_config([{"name": "all", "epochs": 1}]).plan()[0]
    schedule.compile_phase(model, phase, steps, freeze_batchnorm=False)
    config = augment.AugmentConfig(dropout=0.3)
    for mode in MODES:  # warm-up: traces the train step for each input signature
        model.fit(dataset_for(mode, pixels, targets, batch_size, 3, config, 0), steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for round_ in range(1, rounds + 1):
        for mode in MODES:
            dataset = dataset_for(mode, pixels, targets, batch_size, steps, config, round_)
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            images = steps * batch_size
            samples[mode].append((images / wall, 1000 * cpu / images))
    return {mode: {"images_per_s": statistics.median(s[0] for s in values),
                   "cpu_ms_per_image": statistics.median(s[1] for s in values)} for mode, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/sample", help="dataset (default: the embedded sample)")
    parser.add_argument("--models", default="efficientnetb0@48,efficientnetb2@96", help="backbone@size list")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pixels, targets = load_images(args.data, args.batch_size * args.steps * 2)
    print(f"{len(pixels)} images (tiled), batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds per mode; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for spec in args.models.split(","):
        name, _, size = spec.partition("@")
        result = bench_model(name, int(size or 48), pixels, targets, batch_size=args.batch_size,
                             steps=args.steps, rounds=args.rounds)
        tensors, pipeline, naive = (result[mode] for mode in MODES)
        print(f"\n{spec}")
        for mode in MODES:
            print(f"  {mode:9s} {result[mode]['images_per_s']:7.1f} images/s   {result[mode]['cpu_ms_per_image']:6.2f} CPU ms/image")
        print(f"  pipeline overhead vs tensors: wall {1 - pipeline['images_per_s'] / tensors['images_per_s']:+.1%}, "
              f"CPU {pipeline['cpu_ms_per_image'] / tensors['cpu_ms_per_image'] - 1:+.1%}")
        print(f"  pipeline / naive speed-up: {pipeline['images_per_s'] / naive['images_per_s']:.2f}x")
        print(f"  ratios images/s pipeline:tensors {pipeline['images_per_s'] / tensors['images_per_s']:.3f}, "
              f"naive:tensors {naive['images_per_s'] / tensors['images_per_s']:.3f}")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
