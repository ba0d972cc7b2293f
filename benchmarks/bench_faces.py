"""Face filter speed: fer_lab's parallel cached detector vs a naive face_recognition loop.

    python benchmarks/bench_faces.py --data ../shared/data/fer2013 [--limit N] [--naive-limit M]

Steps, each timed:
1. manifest and pixels (not part of the detector comparison);
2. fer_lab: `filtering.filter_manifest` on all images with a fresh cache (process pool over all
   cores, exact duplicates detected once), i.e. what `fer-lab filter` and notebook 02 do;
3. naive: one process that, per image file, calls `face_recognition.load_image_file` and then
   `face_recognition.face_locations(image, upsample, "hog")` on the image resized and padded as
   fer_lab's settings say, on the first `--naive-limit` images; its rate is extrapolated to all
   images (a fer2013.csv dataset has no files: the naive loop then gets decoded pixels);
4. the cached re-run of step 2 (no pixel is read, no image detected);
5. the hardware limit: dlib's bare HOG `run` on already prepared images in one process, per CPU
   second, times the cores: what a detector that spent nothing on reading, caching or
   process start-up would reach.

Wall-clock rates depend on what else the machine runs, so each step also reports its CPU time
(this process and its worker processes); CPU time / cores estimates the wall time on an idle
machine, and the CPU-based speed-up is the one to compare across runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fer_lab import data  # noqa: E402
from fer_lab._shared import available_cores  # noqa: E402
from fer_lab.faces import detection, filtering  # noqa: E402
from fer_lab.faces.detector import import_quietly  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process plus its finished child processes (the detector's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def naive_rate(images: list, settings: detection.DetectorSettings) -> tuple[float, float, int]:
    """Images per wall-clock and per CPU second of a single-process face_locations loop, and faces found.

    `images` are file paths (decoded inside the loop, as a naive script would) or pixel arrays.
    """
    face_recognition = import_quietly("face_recognition")
    found = 0
    started, cpu = time.perf_counter(), time.process_time()
    for image in images:
        pixels = face_recognition.load_image_file(image, mode="L") if isinstance(image, Path) else image
        found += bool(face_recognition.face_locations(detection.prepare(pixels, settings),
                                                      number_of_times_to_upsample=settings.upsample, model="hog"))
    return len(images) / (time.perf_counter() - started), len(images) / (time.process_time() - cpu), found


def hog_limit_rate(pixels: list, settings: detection.DetectorSettings) -> float:
    """Images per CPU second of dlib's HOG detector alone, on images prepared outside the clock."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    prepared = [detection.prepare(image, settings) for image in pixels]
    cpu = time.process_time()
    for image in prepared:
        detector.run(image, settings.upsample, settings.score_floor)
    return len(prepared) / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root or fer2013.csv")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (default: all)")
    parser.add_argument("--naive-limit", type=int, default=2000, help="images timed for the naive loop (default 2000)")
    parser.add_argument("--workers", type=int, default=None, help="fer_lab detector processes (default: all cores)")
    parser.add_argument("--size", type=int, default=detection.DetectorSettings().size)
    parser.add_argument("--padding", type=float, default=detection.DetectorSettings().padding)
    parser.add_argument("--upsample", type=int, default=detection.DetectorSettings().upsample)
    args = parser.parse_args(argv)
    settings = detection.DetectorSettings(size=args.size, padding=args.padding, upsample=args.upsample)

    started = time.perf_counter()
    manifest = data.build_manifest(args.data)
    manifest = manifest[manifest["readable"]].reset_index(drop=True)
    if args.limit:
        manifest = manifest.iloc[: args.limit].reset_index(drop=True)
    print(f"manifest: {len(manifest)} images ({manifest['sha1'].nunique()} distinct) in "
          f"{time.perf_counter() - started:.1f} s; {available_cores()} cores, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine slows every number below)")
    print(f"settings: {settings.label()}")

    with tempfile.TemporaryDirectory() as work_dir:
        started, cpu = time.perf_counter(), cpu_seconds()
        filtered, fresh = filtering.filter_manifest(manifest, args.data, settings, work_dir=work_dir,
                                                    workers=args.workers, progress=True)
        fresh_seconds, fresh_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        pooled = fresh.computed >= detection.MIN_IMAGES_FOR_POOL
        cores = args.workers or (available_cores() if pooled else 1)
        ours, ours_cpu = len(manifest) / fresh_seconds, len(manifest) / fresh_cpu
        print(f"fer_lab, fresh cache: {fresh_seconds:.1f} s for {len(manifest)} images ({fresh.computed} detected, "
              f"pixels read included) = {ours:.0f} images/s; kept {int(filtered['keep'].sum())}")
        print(f"  CPU {fresh_cpu:.1f} s = {ours_cpu:.0f} images per CPU second; "
              f"about {fresh_cpu / cores:.1f} s on {cores} idle core(s)")

        started = time.perf_counter()
        _, cached = filtering.filter_manifest(manifest, args.data, settings, work_dir=work_dir)
        cached_seconds = time.perf_counter() - started
        print(f"fer_lab, cached re-run: {cached_seconds:.2f} s ({cached.computed} detected, {cached.cached} cached)")

    subset = manifest.iloc[: args.naive_limit].reset_index(drop=True)
    root = data.data_root(args.data)
    files = [root / path for path in subset["path"]]
    pixels = list(data.load_pixels(args.data, subset))
    images = files if all(file.is_file() for file in files) else pixels
    naive, naive_cpu, found = naive_rate(images, settings)
    print(f"naive load_image_file + face_locations loop: {naive:.0f} images/s on {len(subset)} images "
          f"({found} with a face at "
          f"threshold 0), {len(manifest) / naive:.0f} s extrapolated to all {len(manifest)}; "
          f"{naive_cpu:.0f} images per CPU second")
    limit = hog_limit_rate(pixels, settings) * available_cores()
    print(f"speed-up, wall clock: {ours / naive:.1f}x fresh, {len(manifest) / naive / cached_seconds:.0f}x cached")
    print(f"speed-up, idle-machine estimate: {ours_cpu * cores / naive_cpu:.1f}x fresh on {cores} cores")
    print(f"hardware limit (bare HOG on prepared images, {available_cores()} cores): {limit:.0f} images/s; "
          f"fer_lab reaches {ours / limit:.0%} on wall clock, {ours_cpu * cores / limit:.0%} on the idle estimate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
