"""Prediction on real photos with a model logged to a real MLflow store, preprocessing parity, bad input, the CLI."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from pathlib import Path

import keras
import matplotlib.cbook
import mlflow
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from fer_lab import cli, data, tracking
from fer_lab.apply import inference
from fer_lab.data import imaging
from fer_lab.errors import FerLabError

EXPERIMENT = "predict-tests"


def tiny_model(seed: int = 0) -> keras.Model:
    """A random-weight classifier honouring the model contract: float 0..255 (N, 48, 48, 1) in, softmax out."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(data.CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(tracking_uri, parent_run_id, train_run_id): a pipeline run whose 03_train child logged a model."""
    root = tmp_path_factory.mktemp("mlruns")
    uri = f"sqlite:///{root}/mlflow.db"
    with tracking.start_notebook_run("pipeline", {}, tracking_uri=uri, experiment=EXPERIMENT) as parent:
        pass
    with tracking.start_notebook_run("03_train", {}, tracking_uri=uri, experiment=EXPERIMENT,
                                     parent_run_id=parent.info.run_id) as run:
        tracking.log_model(tiny_model(), data.CLASSES)
    return uri, parent.info.run_id, run.info.run_id


@pytest.fixture(scope="session")
def predictor(model_store: tuple[str, str, str]) -> inference.Predictor:
    uri, _, run_id = model_store
    return inference.Predictor(inference.load_model(run_id, uri))


def grace_hopper() -> Path:
    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def assert_probabilities(table: pd.DataFrame, labels: tuple[str, ...]) -> None:
    probabilities = table[inference.probability_columns(labels)].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    assert list(table["label"]) == [labels[i] for i in probabilities.argmax(axis=1)]
    np.testing.assert_allclose(table["confidence"], probabilities.max(axis=1))


def test_astronaut_photo_has_one_face(predictor: inference.Predictor) -> None:
    faces = predictor.predict_image(skimage.data.astronaut())
    assert len(faces) == 1
    assert_probabilities(faces, predictor.labels)
    x0, y0, x1, y1 = faces.loc[0, list(inference.BOX_COLUMNS)]
    # Eileen Collins' face is in the upper middle of the 512x512 portrait.
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200


def test_grace_hopper_file_color_and_gray_have_one_face(predictor: inference.Predictor, tmp_path: Path) -> None:
    gray_file = tmp_path / "hopper_gray.png"
    Image.open(grace_hopper()).convert("L").save(gray_file)
    result = predictor.predict_files([grace_hopper(), gray_file])
    assert list(result.table.groupby("path").size()) == [1, 1]
    assert_probabilities(result.table, predictor.labels)
    assert (result.table["error"] == "").all() and result.messages() == []
    assert list(result.table["height"]) == [600, 600] and list(result.table["width"]) == [512, 512]
    boxes = result.table[list(inference.BOX_COLUMNS)].to_numpy()
    np.testing.assert_allclose(boxes[0], boxes[1], atol=2)  # colour and gray find the same face


def test_large_photo_is_downscaled_for_detection(predictor: inference.Predictor) -> None:
    photo = np.asarray(Image.open(grace_hopper()))
    small = predictor.predict_image(photo)
    large = predictor.predict_image(np.asarray(Image.fromarray(photo).resize((2048, 2400))))
    assert len(large) == 1 and predictor.detector.config.max_side < 2400
    np.testing.assert_allclose(large.loc[0, list(inference.BOX_COLUMNS)].to_numpy(dtype=float),
                               4 * small.loc[0, list(inference.BOX_COLUMNS)].to_numpy(dtype=float), rtol=0.1)


def test_preprocessing_parity_with_training(predictor: inference.Predictor, tmp_path: Path) -> None:
    # The colour face square the predictor cuts from the astronaut photo, stored as a training image.
    photo = skimage.data.astronaut()
    gray = inference.read_image(_save(photo, tmp_path / "astronaut.png"))
    boxes, _ = predictor.detector(gray)
    left, top, side = inference.face_square(boxes[0])
    dataset = tmp_path / "dataset"
    _save(photo[top:top + side, left:left + side], dataset / "train" / "happy" / "Training_1.png")
    manifest = data.build_manifest(dataset)
    training_pixels = data.load_pixels(dataset, manifest)
    prediction_pixels = predictor.inputs(gray, boxes[:1])
    assert training_pixels.shape == prediction_pixels.shape == (1, 48, 48)
    np.testing.assert_array_equal(training_pixels, prediction_pixels)
    np.testing.assert_array_equal(predictor.probabilities(training_pixels), predictor.probabilities(prediction_pixels))


def _save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_a_dataset_framing_is_measured_once_per_choice_of_images(sample_dir: Path, tmp_path: Path) -> None:
    manifest = data.build_manifest(sample_dir)
    measured = inference.training_framing(sample_dir, manifest, count=60, cache_dir=tmp_path)
    kept = list(tmp_path.glob("framing-*.json"))
    assert measured.measured_on >= 20 and len(kept) == 1
    kept[0].write_text('{"scale": 1.5, "lift": 0.1, "measured_on": 99}')  # what the cache holds is what is used
    assert inference.training_framing(sample_dir, manifest, count=60, cache_dir=tmp_path) == inference.Framing(
        1.5, 0.1, 99)
    kept[0].write_text("{not json")  # a damaged entry is measured again, not trusted
    assert inference.training_framing(sample_dir, manifest, count=60, cache_dir=tmp_path) == measured
    inference.training_framing(sample_dir, manifest, count=60, seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("framing-*.json"))) == 2  # other images chosen: measured on its own


def test_framing_is_measured_back_from_training_like_crops(predictor: inference.Predictor) -> None:
    # Training images cut around the astronaut's face with a known framing (and slight jitter),
    # then measured: the framing comes back, and crops with it match those images.
    photo = skimage.data.astronaut()
    gray = imaging.to_gray(photo)
    box = predictor.detector(gray)[0][0]
    known = inference.Framing(1.5, 0.15)
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):
        jitter = inference.Framing(known.scale * rng.uniform(0.97, 1.03), known.lift + rng.uniform(-0.02, 0.02))
        images.append(inference.face_inputs(gray, box[None], framing=jitter)[0])
    measured = inference.measure_framing(np.stack(images))
    assert measured.measured_on >= 20
    assert measured.scale == pytest.approx(known.scale, rel=0.08)
    assert measured.lift == pytest.approx(known.lift, abs=0.05)
    assert inference.measure_framing(np.full((30, 48, 48), 128, np.uint8)) == inference.Framing()


def test_batches_are_padded_without_changing_results(predictor: inference.Predictor) -> None:
    inputs = np.random.default_rng(0).integers(0, 256, (predictor.batch_size + 5, 48, 48), dtype=np.uint8)
    together = predictor.probabilities(inputs)
    assert together.shape == (len(inputs), len(predictor.labels))
    np.testing.assert_allclose(together[-3:], predictor.probabilities(inputs[-3:]), rtol=1e-4, atol=1e-6)
    assert predictor.probabilities(inputs[:0]).shape == (0, len(predictor.labels))


def test_crop_reaching_past_the_border_is_padded() -> None:
    gray = np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8)
    crop = inference.crop_face(gray, (-10, -10, 30, 30))
    side = round(40 * inference.FER2013_SCALE)
    assert crop.shape == (side, side)
    assert crop[0, 0] == gray[0, 0]  # replicated corner
    assert inference.face_inputs(gray, np.array([[-10, -10, 30, 30]])).shape == (1, 48, 48)


def test_model_references(model_store: tuple[str, str, str]) -> None:
    uri, parent_run_id, run_id = model_store
    assert inference.default_model_reference(EXPERIMENT, parent_run_id, uri) == run_id
    assert inference.default_model_reference(EXPERIMENT, tracking_uri=uri) == run_id
    loaded = inference.load_model(f"runs:/{run_id}/model", uri)
    assert loaded.labels == data.CLASSES and loaded.input_size == 48
    mlflow.register_model(f"runs:/{run_id}/model", "tiny-fer")
    registered = inference.load_model("models:/tiny-fer/1", uri)
    assert registered.labels == data.CLASSES
    np.testing.assert_array_equal(registered.model.get_weights()[-1], loaded.model.get_weights()[-1])
    with pytest.raises(FerLabError, match="run 0123456789abcdef0123456789abcdef is not in the tracking store"):
        inference.load_model("runs:/0123456789abcdef0123456789abcdef/model", uri)
    with pytest.raises(FerLabError, match="no registered model 'no-such-model' .* registered: .*tiny-fer"):
        inference.load_model("models:/no-such-model/1", uri)
    with pytest.raises(FerLabError, match="no model given and none found: experiment 'no-such-experiment'"):
        inference.default_model_reference("no-such-experiment", tracking_uri=uri)


def test_bad_inputs_are_reported_and_the_rest_kept(predictor: inference.Predictor, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    blank = _save(np.full((200, 300), 128, np.uint8), tmp_path / "blank.png")
    result = predictor.predict_files([grace_hopper(), broken, blank])
    assert len(result.table) == 3 and len(result.faces) == 1
    assert result.errors["error"].tolist() == [f"{broken}: not an image this predictor can read"]
    no_face = result.table[result.table["path"] == str(blank)].iloc[0]
    assert pd.isna(no_face["face"]) and no_face["label"] == "" and no_face["error"] == ""
    assert result.messages() == [f"1 of 3 files unreadable; first: {broken}: not an image this predictor can read"]
    (message,) = predictor.predict_files([blank]).messages()
    assert message.startswith("no faces found in any of the 1 readable images; the detector needs faces of about 80 px")


def test_huge_and_missing_images_raise_one_line_errors(tmp_path: Path) -> None:
    large = _save(np.zeros((2000, 3000), np.uint8), tmp_path / "large.png")
    with pytest.raises(FerLabError, match=r"large.png: image is 3000x2000 \(6 Mpx\), more than the 1 Mpx limit"):
        inference.read_image(large, max_pixels=1_000_000)
    with pytest.raises(FerLabError, match="no such file"):
        inference.read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FerLabError, match="holds no image files"):
        inference.image_files(empty)


def test_cli_predict_writes_table(model_store: tuple[str, str, str], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    uri, _, run_id = model_store
    folder = tmp_path / "photos"
    _save(skimage.data.astronaut(), folder / "astronaut.png")
    (folder / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = cli.main(["predict", str(folder), "--model", f"runs:/{run_id}/model", "--tracking-uri", uri,
                     "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0
    assert f"model: runs:/{run_id}/model (7 classes)" in printed.out
    assert "astronaut.png" in printed.out and "warning: 1 of 2 files unreadable" in printed.err
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 2 and table["face"].notna().sum() == 1
    assert (out / "astronaut_annotated.jpg").is_file()
    assert cli.main(["predict", str(tmp_path / "missing.png"), "--model", run_id, "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["predict", str(folder / "notes.jpg"), "--model", run_id, "--tracking-uri", uri]) == 2
    assert "error: none of the images" in capsys.readouterr().err  # an unreadable image is a failure, not a warning


def test_cli_predict_keeps_every_annotated_image_of_a_class_per_folder_tree(
        model_store: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, _, run_id = model_store
    folder = tmp_path / "photos"
    photo = skimage.data.astronaut()
    for name in ("happy/001.jpg", "sad/001.jpg", "sad/001.png", "sad/002.jpg"):
        _save(photo, folder / name)
    out = tmp_path / "out"
    assert cli.main(["predict", str(folder), "--model", run_id, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert "happy/001.jpg" in capsys.readouterr().out  # the terminal table tells the two 001.jpg apart
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*_annotated.jpg"))
    assert written == ["happy/001_annotated.jpg", "sad/001_jpg_annotated.jpg", "sad/001_png_annotated.jpg",
                       "sad/002_annotated.jpg"]


def test_cli_predict_on_face_crops_says_so_and_classifies_them_with_crops(
        model_store: tuple[str, str, str], sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, _, run_id = model_store
    folder = tmp_path / "crops"
    folder.mkdir()
    for path in inference.image_files(sample_dir / "test")[:3]:  # FER2013-like 48 px face crops
        shutil.copy(path, folder / path.name)
    # without --model: the latest training run, named
    assert cli.main(["predict", str(folder), "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    printed = capsys.readouterr()
    assert f"model: {run_id} (7 classes, the latest finished 03_train run with a model" in printed.out
    assert "looks like a face crop, not a photo (3 of 3 readable images" in printed.err
    assert "fer-lab predict PATH --crops" in printed.err

    out = tmp_path / "out"
    assert cli.main(["predict", str(folder), "--crops", "--model", run_id, "--tracking-uri", uri,
                     "--out", str(out)]) == 0
    assert "looks like a face crop" not in capsys.readouterr().err
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 3 and table["face"].notna().all() and (table["label"].isin(data.CLASSES)).all()
    assert (table[["x0", "y0", "x1", "y1"]].to_numpy() == [0, 0, 48, 48]).all()
    assert np.allclose(table[inference.probability_columns(data.CLASSES)].sum(axis=1), 1, atol=1e-4)

    (folder / "broken.png").write_bytes(b"not a png")
    assert cli.main(["predict", str(folder / "broken.png"), "--crops", "--model", run_id, "--tracking-uri", uri]) == 2
    assert "error: none of the images" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert cli.main(["predict", str(tmp_path / "clip.mp4"), "--crops", "--model", run_id, "--tracking-uri", uri]) == 2
    assert "--crops classifies image files" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_predict_starts_without_mlflow_and_without_tensorflow_noise(model_store: tuple[str, str, str],
                                                                         tmp_path: Path) -> None:
    """What `fer-lab predict photo --model REF` pays at start-up: a run's model in the local sqlite store is read
    from disk, so MLflow (seconds of imports and store start-up) is never imported; TensorFlow starts quietly."""
    import subprocess
    import sys
    import time

    from fer_lab import _native, project

    uri, _, run_id = model_store
    photo = _save(skimage.data.astronaut(), tmp_path / "astronaut.png")
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-X", "importtime", "-m", "fer_lab.cli", "predict", str(photo),
                               "--model", run_id, "--tracking-uri", uri], capture_output=True, text=True,
                              cwd=project.ROOT, timeout=300)
    print(f"fer-lab predict, one photo: {time.perf_counter() - started:.1f} s with -X importtime")
    assert finished.returncode == 0, finished.stderr
    assert f"model: {run_id} (7 classes)" in finished.stdout and "astronaut.png" in finished.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in finished.stderr.splitlines() if line.startswith("import time")]
    assert "tensorflow" in imported and not [name for name in imported if name.split(".")[0] == "mlflow"]
    assert not [line for line in finished.stderr.splitlines() if _native.NOISE.match(line)]
    fast = inference.load_model(run_id, uri)
    model, labels = tracking.load_run_model(run_id, uri)
    slow = inference.Predictor(inference.LoadedModel(model, tuple(labels), run_id))
    pixels = np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    assert fast.labels == slow.labels
    assert np.allclose(inference.Predictor(fast).probabilities(pixels), slow.probabilities(pixels), atol=1e-6)


@pytest.mark.slow
def test_a_run_with_its_tflite_copy_predicts_without_tensorflow(model_store: tuple[str, str, str],
                                                                 tmp_path: Path) -> None:
    """03_train logs a TFLite copy beside the Keras model; inference runs it, so `fer-lab predict` imports neither
    TensorFlow (MediaPipe's detector would, for a decorator) nor MLflow, and answers as the Keras model does."""
    import subprocess
    import sys

    from fer_lab import _native, project, runtime
    from fer_lab.training import deploy

    uri, _, _ = model_store
    model = tiny_model(seed=3)
    with tracking.start_notebook_run("03_train", {}, tracking_uri=uri, experiment="tflite-copy") as run:
        tracking.log_model(model, data.CLASSES)
        assert "logged a TFLite copy" in deploy.log_inference_copy(model, data.CLASSES)
    copy = inference.load_model(run.info.run_id, uri)
    original = inference.load_model(run.info.run_id, uri, runtime="keras")
    assert (copy.runtime, original.runtime) == ("tflite", "keras") and copy.labels == original.labels
    pixels = np.random.default_rng(1).integers(0, 255, (40, 48, 48), dtype=np.uint8)
    assert np.abs(inference.Predictor(copy).probabilities(pixels)
                  - inference.Predictor(original).probabilities(pixels)).max() <= runtime.INFERENCE_TOLERANCE

    photo = _save(skimage.data.astronaut(), tmp_path / "astronaut.png")
    script = ("import sys\nfrom fer_lab import cli\ncode = cli.main(sys.argv[1:])\n"
              "print('loaded:', sorted({name.split('.')[0] for name in sys.modules} & {'mediapipe', 'tensorflow', "
              "'keras', 'mlflow'}))\nsys.exit(code)\n")
    finished = subprocess.run([sys.executable, "-c", script, "predict", str(photo), "--model", run.info.run_id,
                               "--tracking-uri", uri, "--detector", "mediapipe"],
                              capture_output=True, text=True, cwd=project.ROOT, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "astronaut.png" in finished.stdout and "loaded: ['mediapipe']" in finished.stdout
    assert not [line for line in finished.stderr.splitlines() if "XNNPACK" in line or _native.NOISE.match(line)]
