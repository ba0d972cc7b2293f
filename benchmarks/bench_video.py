"""Video analysis speed: fer_lab's analyze_video vs a naive per-frame loop, and vs decoding alone.

    python benchmarks/bench_video.py [--data PATH] [--seconds 20] [--sample-fps 10] [--model REF]

A 640x360, 30 fps video of dataset faces (two people, expressions changing, the same generator
as notebook 06's demo) is analysed at `--sample-fps` sampled frames per second by
  decode     the video reader alone (every frame grabbed, sampled frames decoded): the ceiling;
  fer_lab    `video.analyze_video` as 06_apply and `fer-lab predict` run it (detection on every
             2nd sampled frame, faces batched into one model call per 16 frames), and with
             detection on every sampled frame;
  naive      per sampled frame `face_recognition.face_locations` on the full frame (its default,
             one upsampling) and one `model.predict` call per face (the common tutorial loop).
Keeping up with real time means analysing at least `--sample-fps` frames per second. The model is
the CPU recipe's CNN (params/fer2013-cpu.yaml) with random weights unless `--model` names a trained
one (a run id or model URI): speed does not depend on the weights. Rates are wall-clock; the model's
one-time compilation is excluded from every mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from fer_lab import data, project  # noqa: E402
from fer_lab.apply import demo, inference, video, video_io  # noqa: E402
from fer_lab.data import imaging, synthetic  # noqa: E402
from fer_lab.faces.detector import DetectorConfig, FaceDetector, import_quietly  # noqa: E402
from fer_lab.training import models  # noqa: E402

RECIPE = project.PARAMS_DIR / "fer2013-cpu.yaml"


def recipe_model() -> inference.LoadedModel:
    """The CPU recipe's architecture with random weights."""
    values = yaml.safe_load(RECIPE.read_text())["notebooks"]["03_train"]
    config = models.model_config_from_params(values["backbone"], values["image_size"], "none", values["head"],
                                             values["cnn"])
    return inference.LoadedModel(models.build_model(config, len(data.CLASSES)), data.CLASSES, "random recipe CNN")


def dataset_faces(data_dir: str, count: int = 400) -> tuple[np.ndarray, list[str]]:
    """The first `count` readable training images and their labels."""
    data_path = synthetic.resolve_dataset(data_dir)
    manifest = data.build_manifest(data_path)
    rows = manifest[manifest["readable"] & (manifest["split"] == "train")].head(count).reset_index(drop=True)
    return data.load_pixels(data_path, rows), rows["label"].tolist()


def decode_rate(path: Path, sample_fps: float) -> float:
    """Sampled frames per second when the reader does nothing else."""
    reader = video_io.VideoReader(path)
    started = time.perf_counter()
    count = sum(1 for _ in reader.sampled(min(sample_fps, reader.fps), None))
    reader.release()
    return count / (time.perf_counter() - started)


def naive_rate(path: Path, loaded: inference.LoadedModel, sample_fps: float) -> tuple[float, int]:
    """Sampled frames per second and faces found by a per-frame detect-then-predict-each-face loop."""
    face_recognition = import_quietly("face_recognition")
    reader = video_io.VideoReader(path)
    size = loaded.input_size
    loaded.model.predict(np.zeros((1, size, size, 1), np.float32), verbose=0)  # compile outside the clock
    frames = found = 0
    started = time.perf_counter()
    for _, frame in reader.sampled(min(sample_fps, reader.fps), None):
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        gray = imaging.to_gray(rgb)
        for top, right, bottom, left in face_recognition.face_locations(rgb):
            pixels = imaging.to_model_input(gray[max(0, top):bottom, max(0, left):right], size)
            loaded.model.predict(pixels[None, ..., None].astype(np.float32), verbose=0)
            found += 1
        frames += 1
    reader.release()
    return frames / (time.perf_counter() - started), found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/sample", help="dataset whose faces fill the video (default: the sample)")
    parser.add_argument("--seconds", type=float, default=20.0, help="video length (default 20)")
    parser.add_argument("--sample-fps", type=float, default=10.0, help="frames analysed per video second (default 10)")
    parser.add_argument("--model", default="", help="a run id or model URI (default: the recipe's CNN, random weights)")
    args = parser.parse_args(argv)

    loaded = inference.load_model(args.model) if args.model else recipe_model()
    images, labels = dataset_faces(args.data)
    detector = FaceDetector(DetectorConfig(max_side=video.VIDEO_MAX_SIDE))
    with tempfile.TemporaryDirectory() as work_dir:
        inputs = demo.make_demo_inputs(work_dir, images, labels, seconds=args.seconds, detector=detector)
        print(f"{inputs.video.name}: 640x360, 30 fps, {args.seconds:g} s; sampled at {args.sample_fps:g} fps; "
              f"model {loaded.reference} ({loaded.input_size} px); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        ceiling = decode_rate(inputs.video, args.sample_fps)
        rates = {}
        for detect_every in (2, 1):
            predictor = inference.Predictor(loaded, detector)
            analysis = video.analyze_video(inputs.video, predictor, sample_fps=args.sample_fps, detect_every=detect_every)
            rates[detect_every] = analysis.processing_fps
            found = int(analysis.frames["face_id"].notna().sum())
            print(f"fer_lab, detection every {detect_every} sampled frame(s): {analysis.processing_fps:6.1f} frames/s "
                  f"({analysis.sampled} frames, {found} face rows, {analysis.frames['face_id'].nunique()} faces)")
        naive, naive_faces = naive_rate(inputs.video, loaded, args.sample_fps)
        print(f"naive face_locations + predict per face: {naive:6.1f} frames/s ({naive_faces} faces)")
        print(f"decoding alone (the ceiling):            {ceiling:6.1f} frames/s")
    ours = rates[2]
    print(f"real-time factor: {ours / args.sample_fps:.2f}x ({ours:.1f} frames/s analysed for {args.sample_fps:g} "
          f"needed; every-frame detection {rates[1] / args.sample_fps:.2f}x)")
    print(f"speed-up vs naive: {ours / naive:.1f}x (every-frame detection {rates[1] / naive:.1f}x)")
    print(f"share of the decoding ceiling: {ours / ceiling:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
