"""Exported models: ONNX and TFLite files that reproduce the Keras model's probabilities without fer-lab."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from fer_lab import cli, data, tracking
from fer_lab.apply import export
from fer_lab.errors import ConfigError, FerLabError

ONNX_WITHOUT_FER_LAB = """
import json, sys
import numpy as np
import onnxruntime
contract = json.load(open(sys.argv[1] + "/model.json"))
session = onnxruntime.InferenceSession(sys.argv[1] + "/" + contract["file"])
pixels = np.load(sys.argv[2])
probabilities = session.run(None, {session.get_inputs()[0].name: pixels})[0]
assert "fer_lab" not in sys.modules
print(json.dumps([contract["labels"][i] for i in probabilities.argmax(1)]))
"""


@pytest.fixture(scope="module")
def sample_faces(sample_dir) -> np.ndarray:
    """The sample's test images as the model takes them: float32 (N, 48, 48, 1) pixels 0..255."""
    manifest = data.build_manifest(sample_dir)
    rows = manifest[manifest["readable"] & (manifest["split"] == "test")].reset_index(drop=True)
    return data.load_pixels(sample_dir, rows)[..., None].astype(np.float32)


def test_onnx_matches_keras_and_runs_without_fer_lab(base_model_store, sample_faces, tmp_path, capsys) -> None:
    uri, run_id = base_model_store
    assert cli.main(["export", run_id, "--format", "onnx", "--out", str(tmp_path), "--tracking-uri", uri]) == 0
    assert "model.onnx" in capsys.readouterr().out
    contract = json.loads((tmp_path / "model.json").read_text())
    assert contract["input"]["shape"] == [None, 48, 48, 1] and contract["source"]["run_id"] == run_id
    assert contract["labels"] == ["angry", "disgust", "fear", "happy", "sad", "surprise"]
    assert contract["parity"]["max_abs_diff"] <= 1e-4 and contract["parity"]["same_class"] == 1.0
    keras_model, labels, _ = tracking.load_reference(run_id)
    expected = keras_model.predict(sample_faces, verbose=0)
    onnx = export.run_exported(tmp_path / "model.onnx", sample_faces)
    assert np.abs(onnx - expected).max() <= 1e-4
    np.save(tmp_path / "faces.npy", sample_faces)
    predicted = subprocess.run([sys.executable, "-I", "-c", ONNX_WITHOUT_FER_LAB, str(tmp_path),
                                str(tmp_path / "faces.npy")], capture_output=True, text=True, check=True)
    assert json.loads(predicted.stdout) == [labels[i] for i in expected.argmax(1)]


def test_tflite_float_and_quantized(base_model_store, sample_faces, tmp_path) -> None:
    uri, run_id = base_model_store
    tracking.configure(uri)
    keras_model, _, _ = tracking.load_reference(run_id)
    expected = keras_model.predict(sample_faces, verbose=0)
    exported = export.export_model(run_id, "tflite", tmp_path / "float", tracking_uri=uri)
    assert np.abs(export.run_exported(exported.model_file, sample_faces) - expected).max() <= 1e-4
    quantized = export.export_model(run_id, "tflite", tmp_path / "int8", quantize=True, tracking_uri=uri)
    assert quantized.contract["quantized"] and quantized.model_file.stat().st_size < exported.model_file.stat().st_size
    agreement = (export.run_exported(quantized.model_file, sample_faces).argmax(1) == expected.argmax(1)).mean()
    assert agreement >= 0.9
    with pytest.raises(ConfigError, match="--calibration goes with --format onnx --quantize"):
        export.export_model(run_id, "tflite", tmp_path / "x", quantize=True, calibration="data", tracking_uri=uri)
    with pytest.raises(ConfigError, match="format 'pb'"):
        export.export_model(run_id, "pb", tmp_path / "x", tracking_uri=uri)


def test_int8_onnx_is_calibrated_on_training_images_and_keeps_the_classes(base_model_store, sample_dir, sample_faces,
                                                                        tmp_path, capsys) -> None:
    uri, run_id = base_model_store
    with pytest.raises(ConfigError, match="--calibration DATA"):
        export.export_model(run_id, "onnx", tmp_path / "x", quantize=True, tracking_uri=uri)
    assert cli.main(["export", run_id, "--format", "onnx", "--quantize", "--calibration", str(sample_dir),
                     "--out", str(tmp_path / "int8"), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    contract = json.loads((tmp_path / "int8" / "model.json").read_text())
    manifest = data.build_manifest(sample_dir)
    train_images = int((manifest["split"] == "train").sum())
    assert contract["quantized"] and contract["calibration"]["images"] == min(export.CALIBRATION_IMAGES, train_images)
    # The check on faces: the sample's images that did not calibrate (its val and test images here).
    held_out = contract["held_out_parity"]
    assert held_out["images"] == min(export.CALIBRATION_IMAGES, len(manifest) - train_images)
    assert held_out["same_class"] >= 0.9 and f"on {held_out['images']} images it was not calibrated on" in printed
    quantized = export.run_exported(tmp_path / "int8" / "model.onnx", sample_faces)
    keras_model, _, _ = tracking.load_reference(run_id)
    expected = keras_model.predict(sample_faces, verbose=0)
    assert 0 < np.abs(quantized - expected).max() < 0.2  # int8 moves the probabilities a little, not the classes
    assert (quantized.argmax(1) == expected.argmax(1)).mean() >= 0.9
    graph = onnx.load(tmp_path / "int8" / "model.onnx").graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    weights = [onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer
               if tensor.data_type == onnx.TensorProto.INT8 and tensor.dims]
    # 7-bit weights, so that u8s8 kernels adding products in 16 bits (x86 without VNNI) cannot saturate.
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    with pytest.raises(FerLabError, match="nowhere"):
        export.export_model(run_id, "onnx", tmp_path / "y", quantize=True, calibration=tmp_path / "nowhere",
                            tracking_uri=uri)


def test_calibration_and_held_out_images_are_disjoint_seeded_draws(sample_dir) -> None:
    calibration, held_out = export.calibration_split(sample_dir, 48, count=100, held_out=30)
    again, _ = export.calibration_split(sample_dir, 48, count=100, held_out=30)
    assert calibration.shape == (100, 48, 48, 1) and held_out.shape == (30, 48, 48, 1)
    np.testing.assert_array_equal(again, calibration)
    assert not any((calibration == image).all(axis=(1, 2, 3)).any() for image in held_out)
    np.testing.assert_array_equal(export.calibration_split(sample_dir, 48, count=100, held_out=0)[0], calibration)


def test_onnx_reproduces_a_model_that_resizes_before_batchnorm(sample_faces, tmp_path) -> None:
    # The demo recipe's shape: 48 px in, resized to 32 inside, then BatchNorm. Keras' own ONNX export
    # traced its BatchNorm in training mode, off by up to 0.5 on this model.
    from fer_lab.training import models

    config = models.model_config_from_params("cnn", 32, "none", head={"pooling": "avg", "dropout": 0.0},
                                             cnn={"widths": [8, 16], "convs_per_block": 1, "batchnorm_momentum": 0.9})
    model = models.build_model(config, 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(sample_faces, np.arange(len(sample_faces)) % 3, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    exported = export.export_model(str(tmp_path / "model.keras"), "onnx", tmp_path / "onnx")
    assert exported.contract["parity"]["max_abs_diff"] <= 1e-4
    keras_model, _, _ = tracking.load_reference(str(tmp_path / "model.keras"))
    difference = export.run_exported(exported.model_file, sample_faces) - keras_model.predict(sample_faces, verbose=0)
    assert np.abs(difference).max() <= 1e-4


def test_onnx_folds_an_input_scale_into_the_first_convolution_and_leaves_an_offset(sample_faces, tmp_path) -> None:
    import keras

    from fer_lab.training import deploy, models

    config = models.model_config_from_params("cnn", 48, "none", head={"pooling": "avg", "dropout": 0.0},
                                             cnn={"widths": [8, 16], "convs_per_block": 1})
    offset = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 127.5, offset=-1.0),
                               keras.layers.Conv2D(4, 3, padding="same"), keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(3, activation="softmax")])
    for name, model, folded in (("cnn", models.build_model(config, 3), True), ("offset", offset, False)):
        deploy.write_onnx(model, tmp_path / f"{name}.onnx")
        first = [node.op_type for node in onnx.load(tmp_path / f"{name}.onnx").graph.node if "pixels" in node.input]
        assert (first != ["Mul"]) == folded, (name, first)
        difference = export.run_exported(tmp_path / f"{name}.onnx", sample_faces) - model.predict(sample_faces, verbose=0)
        assert np.abs(difference).max() <= 1e-4
