"""The `fer-lab` command: one subcommand per stage, each a thin wrapper over the package (`commands`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fer_lab.cli import commands
from fer_lab.errors import FerLabError


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one pipeline after another here; ray: each as a Ray task (default local)")
    parser.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--local-cpus", type=int, help="CPUs of a new local Ray cluster (default: this machine's)")


def _add_analysis_options(parser: argparse.ArgumentParser, *, model_help: str) -> None:
    """The options `predict` and `study` share: the model, where to find it, and how faces are found and framed."""
    parser.add_argument("--model", default="", help=model_help)
    parser.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--experiment", default="fer-lab", help="experiment searched for the default model")
    parser.add_argument("--fps", type=float, default=10.0, help="video frames analysed per second (default 10)")
    parser.add_argument("--detect-every", type=int, default=2,
                        help="detect faces on every Nth analysed frame, boxes carried in between "
                             "(default 2; 1 is slower)")
    parser.add_argument("--detector", choices=("hog", "mediapipe", "cnn"), default="mediapipe",
                        help="face detector: dlib HOG (frontal faces of 80 px and more), MediaPipe (smaller and "
                             "turned faces, eyes levelled before the crop; the default) or dlib's CNN (slow)")
    parser.add_argument("--crop-scale", type=float, default=None,
                        help="crop side / detected face box side, as the training images frame faces "
                             "(default: FER2013's; 06_apply prints the value measured on its dataset)")
    parser.add_argument("--crop-lift", type=float, default=None,
                        help="crop centre above the box centre, in box sides (default: FER2013's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fer-lab", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)

    run = subcommands.add_parser("run", help="execute the notebook pipeline with papermill, tracked in MLflow")
    run.add_argument("--data", help="dataset path (default: the embedded sample, generated if missing)")
    run.add_argument("--params", action="append", default=[], metavar="FILE.yaml", help="parameter file(s)")
    run.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter; NN_name.key=value for one notebook")
    run.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (03 or 03_train)")
    run.add_argument("--out", help="report folder (default: reports/<timestamp>-<dataset>)")
    run.add_argument("--experiment", metavar="FILE.yaml",
                     help="run every variant of an experiment set (params/experiments/NAME.yaml), then 05_compare")
    run.add_argument("--resume", metavar="REPORT_DIR", help="with --experiment: finish the set in its report folder, "
                     "reusing the variants that finished there with the same settings; then 05_compare over all")
    _add_executor_options(run)
    run.set_defaults(handler=commands.run)

    train = subcommands.add_parser("train", help="03_train's training alone, without Jupyter or MLflow (a GPU machine); "
                                              "fer-lab run --only 03 04 then logs and evaluates the checkpoint")
    train.add_argument("--data", help="dataset path (default: the params' data_dir, else the embedded sample)")
    train.add_argument("--params", action="append", default=[], metavar="FILE.yaml", help="parameter file(s)")
    train.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter (as for fer-lab run); 03_train.run_name is required")
    train.add_argument("--checkpoints", metavar="DIR",
                       help="checkpoint folder (default: data/work/<dataset>/checkpoints/<run_name>, where 03 looks)")
    train.add_argument("--loader", choices=("auto", "threads", "processes"), default="auto",
                       help="how training batches are prepared (auto: tf.data on TensorFlow, threads on other "
                            "backends; processes: forked workers, past the GIL); the same batches either way")
    train.set_defaults(handler=commands.train)

    predict = subcommands.add_parser("predict", help="find faces in an image, image folder or video and classify them")
    predict.add_argument("path", help="image file, folder of images, or video (.mp4, .avi, .mov, ...)")
    _add_analysis_options(predict, model_help="run id, runs:/<id>/model, models:/<name>@<alias>, "
                          "models:/<name>/<version> or a .keras file written by fer-lab; default: the latest "
                          "finished 03_train run")
    predict.add_argument("--out", help="folder for the per-face/per-frame CSV and annotated copies (default: print only)")
    predict.add_argument("--max-side", type=int, default=None,
                         help="longer side of the image the face detector sees (default 1024 images, 640 video)")
    predict.add_argument("--threshold", type=float, default=0.0, help="face detector score threshold (default 0)")
    predict.add_argument("--crops", action="store_true",
                         help="the images are face crops (such as FER2013's 48 px images): classify each whole "
                              "image as one face, without face detection")
    predict.set_defaults(handler=commands.predict)

    study_ = subcommands.add_parser("study", help="a study: many recordings, participants and conditions, "
                                               "aggregated and tested (participants as the unit)")
    study_.add_argument("study", help="study CSV (path, participant, condition, covariates...) or a folder of "
                                      "recordings (one participant per video or image folder)")
    study_.add_argument("--events", help="events CSV: path or condition, name, start, end (seconds)")
    _add_analysis_options(study_, model_help="model reference (see fer-lab predict); default: the latest "
                          "finished 03_train run")
    study_.add_argument("--out", default="study-results", help="output folder (default study-results)")
    study_.add_argument("--cache", help="analysis cache folder (default: OUT/cache)")
    study_.add_argument("--frame-rate", type=float, default=10.0,
                        help="frames per second of recordings that are folders of images (default 10)")
    study_.add_argument("--workers", type=int, default=0,
                        help="processes (default 0: one per core when the recordings are long enough to repay them)")
    study_.add_argument("--method", choices=("auto", "wilcoxon", "mixed"), default="auto",
                        help="paired Wilcoxon tests or a mixed model (default auto: Wilcoxon when every "
                             "participant saw every condition)")
    study_.add_argument("--correction", choices=("holm", "fdr_bh", "bonferroni"), default="holm",
                        help="multiple-comparison correction across expressions (default holm)")
    study_.add_argument("--reference", default="", help="baseline condition (default: first in sorted order)")
    study_.add_argument("--align", default="", help="event the timelines are aligned on (default: recording start)")
    study_.set_defaults(handler=commands.study)

    register = subcommands.add_parser("register", help="register a training run's model in the MLflow Model Registry")
    register.add_argument("run", help="the 03_train run: its id or runs:/<id>/model")
    register.add_argument("--name", required=True, help="registered model name (a new version when it exists)")
    register.add_argument("--alias", default="", help="alias to point at the new version, e.g. champion")
    register.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/)")
    register.set_defaults(handler=commands.register)

    ensemble = subcommands.add_parser("ensemble", help="log several trained models as one (their class probabilities "
                                                    "averaged) in a new MLflow run, to evaluate, apply or export")
    ensemble.add_argument("models", nargs="+", metavar="MODEL",
                          help="two or more: run id, runs:/<id>/model, models:/<name>@<alias>, "
                               "models:/<name>/<version> or a .keras file written by fer-lab; the same classes and input")
    ensemble.add_argument("--name", default="ensemble", help="the new run's name (default ensemble)")
    ensemble.add_argument("--experiment", default="fer-lab", help="MLflow experiment of the new run (default fer-lab)")
    ensemble.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/)")
    ensemble.set_defaults(handler=commands.ensemble)

    export = subcommands.add_parser("export", help="write a model as ONNX or TFLite (runs without fer-lab) with a "
                                                "JSON contract: labels, input, output, source")
    export.add_argument("model", help="run id, runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version> "
                                      "or a .keras file written by fer-lab")
    export.add_argument("--format", choices=("onnx", "tflite"), required=True, help="onnx (ONNX Runtime) or tflite")
    export.add_argument("--quantize", action="store_true", help="int8: tflite weights; onnx weights and activations")
    export.add_argument("--calibration", metavar="DATA", help="dataset whose training images calibrate int8 onnx")
    export.add_argument("--out", required=True, help="folder for model.<format> and model.json")
    export.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/)")
    export.set_defaults(handler=commands.export)

    ui = subcommands.add_parser("ui", help="the MLflow UI; Ctrl-C stops it and every process it started")
    ui.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI or mlruns/)")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.set_defaults(handler=commands.ui)

    manifest = subcommands.add_parser("manifest", help="list a dataset (fer2013.csv, image folders) as a manifest CSV")
    manifest.add_argument("path", help="fer2013.csv(.gz), a folder holding one, or a folder of class/split folders")
    manifest.add_argument("--votes", help="votes CSV: per-file (path column) or FER+ fer2013new.csv "
                                          "(default: ferplus_votes.csv / fer2013new.csv beside the data)")
    manifest.add_argument("--out", required=True, help="manifest CSV to write")
    manifest.add_argument("--unknown-classes", choices=("keep", "drop"), default="keep",
                          help="classes outside the canonical seven: keep as extra labels or drop (default keep)")
    manifest.add_argument("--val-fraction", type=float, default=0.1,
                          help="share of train held out as val when the data has no validation split (default 0.1)")
    manifest.add_argument("--seed", type=int, default=0, help="seed of that validation split (default 0)")
    manifest.set_defaults(handler=commands.manifest)

    sample = subcommands.add_parser("sample", help="write the synthetic FER-format sample dataset")
    sample.add_argument("--out", help="output folder (default: data/sample)")
    sample.add_argument("--per-class", type=int, default=48, help="training faces per class (default 48)")
    sample.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    sample.add_argument("--format", choices=("folder", "csv"), default="folder",
                        help="Kaggle image folders or fer2013.csv + fer2013new.csv (default folder)")
    sample.set_defaults(handler=commands.sample)

    filter_ = subcommands.add_parser("filter",
                                  help="face-detection noise filter: write the manifest with keep/reject_reason")
    filter_.add_argument("path", help="dataset: fer2013.csv(.gz), a folder holding one, or class/split folders")
    filter_.add_argument("--out", required=True, help="filtered manifest CSV to write")
    filter_.add_argument("--work-dir", help="manifest and face cache folder, shared with the notebooks "
                                            "(default: data/work/<dataset name>, as `fer-lab run`)")
    # Defaults live in faces.DetectorSettings / filtering.FilterRules; None here means "theirs".
    filter_.add_argument("--model", choices=("hog", "cnn"),
                         help="dlib detector (default hog; cnn is far slower on CPU)")
    filter_.add_argument("--size", type=int,
                         help="pixels the 48x48 image is resized to before detection (default 96)")
    filter_.add_argument("--padding", type=float, help="replicated border, as a fraction of --size (default 0)")
    filter_.add_argument("--upsample", type=int, help="dlib's own upsampling passes (default 0)")
    filter_.add_argument("--threshold", type=float,
                         help="minimum face evidence; lower keeps more faces (default -1.8)")
    filter_.add_argument("--flat-weight", type=float,
                         help="evidence penalty per unit of flatness (default 2; 0: off)")
    filter_.add_argument("--noise-limit", type=float, help="reject images noisier than this (default 0.3)")
    filter_.add_argument("--blank-contrast", type=float,
                         help="reject images with a smaller 2-98%% grey range (default 10)")
    filter_.add_argument("--keep-duplicates", action="store_true",
                         help="do not reject duplicate or conflicting copies")
    filter_.add_argument("--workers", type=int, default=None, help="detector processes (default: all cores)")
    filter_.set_defaults(handler=commands.filter_)

    sweep = subcommands.add_parser("sweep", help="an Optuna study over 03_train + 04_evaluate (params/sweeps/NAME.yaml)")
    sweep.add_argument("file", help="sweep file, or its name in params/sweeps/")
    sweep.add_argument("--trials", type=int, required=True,
                       help="finished trials the study should hold; a resumed sweep runs only the rest")
    sweep.add_argument("--data", help="dataset path (default: the embedded sample)")
    sweep.add_argument("--params", action="append", default=[], metavar="FILE.yaml", help="extra parameter file(s)")
    sweep.add_argument("-p", action="append", default=[], metavar="KEY=VALUE", help="a fixed override")
    sweep.add_argument("--out", help="report folder (default: reports/<timestamp>-sweep-<name>)")
    sweep.add_argument("--storage", default="", help="Optuna storage URL (default: beside the tracking store, "
                                                     "or the team server's PostgreSQL)")
    _add_executor_options(sweep)
    sweep.set_defaults(handler=commands.sweep)

    server = subcommands.add_parser("server", help="the team tracking server: mlflow server on PostgreSQL (make server)")
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument("--dir", default="services", help="folder of the database cluster, logs and state "
                                                          "(default services/, git-ignored)")
    server.add_argument("--port", type=int, default=5000, help="MLflow server port (default 5000)")
    server.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (default: a free one)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address both listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    server.add_argument("--artifacts", default="",
                        help="artifact root: a folder (default services/artifacts) or s3://bucket/path")
    server.set_defaults(handler=commands.server)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FerLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
