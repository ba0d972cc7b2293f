"""The handler of each `fer-lab` subcommand: a thin wrapper over the package, importing it only when called."""

from __future__ import annotations

import argparse
import os
import sys

from fer_lab.errors import FerLabError


def run(args: argparse.Namespace) -> int:
    import signal

    from fer_lab.pipeline import runner

    # A pipeline stopped by SIGTERM ends like one stopped by Ctrl-C: its MLflow runs KILLED, its report written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    if args.resume and (args.out or not args.experiment):
        raise FerLabError("--resume REPORT_DIR goes with --experiment FILE and without --out")
    if args.experiment:
        return _run_experiment(args)
    if args.executor != "local":
        raise FerLabError("--executor ray runs experiment sets and sweeps: add --experiment FILE")
    result = runner.run_pipeline(
        data_dir=args.data,
        params_files=args.params,
        overrides=runner.parse_overrides(args.p),
        only=args.only,
        out_dir=args.out,
    )
    print(f"report: {result.index}")
    print(f"mlflow: parent run {result.parent_run_id} in {result.tracking_uri}")
    if not result.ok:
        failed = next(nb for nb in result.notebooks if not nb.ok)
        print(f"error: {failed.name} failed ({failed.error}); executed notebook: {failed.notebook}", file=sys.stderr)
        return 1
    return 0


def _run_experiment(args: argparse.Namespace) -> int:
    from fer_lab.pipeline import experiments, runner

    if args.only:
        raise FerLabError("--only cannot be combined with --experiment: the experiment file lists the notebooks")
    outcome = experiments.run_experiment(
        args.experiment, data_dir=args.data, params_files=args.params,
        overrides=runner.parse_overrides(args.p), out_dir=args.resume or args.out,
        executor=args.executor, address=args.address, local_cpus=args.local_cpus, resume=bool(args.resume),
    )
    print(f"report: {outcome.index}")
    failed = [name for name in outcome.experiment.variants
              if name not in outcome.variants or not outcome.variants[name].ok]
    if failed or not outcome.ok:
        print(f"error: experiment {outcome.experiment.name} incomplete; failed variants: "
              f"{', '.join(failed) or 'none'}; comparison: {'ran' if outcome.compare else 'not run'}", file=sys.stderr)
        return 1
    return 0


def train(args: argparse.Namespace) -> int:
    from fer_lab.pipeline import headless, runner

    values = headless.train_parameters(args.params, runner.parse_overrides(args.p), args.data)
    result = headless.train_headless(values, checkpoint_dir=args.checkpoints, loader=args.loader)
    print(f"best epoch {result.best_epoch}: {result.monitor} {result.best_value:.4f}; checkpoint {result.checkpoint_dir}")
    print(f"next, where the tracking store is, with this folder as {headless.checkpoint_folder(values)}: "
          f"fer-lab run (the same --data, --params and -p) --only 03 04")
    return 0


def predict(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_lab.apply import crops, inference, video

    if args.crops and video.is_video(args.path):
        raise FerLabError(f"{args.path}: --crops classifies image files of face crops, not videos")
    reference = args.model or inference.default_model_reference(args.experiment, tracking_uri=args.tracking_uri)
    loaded = inference.load_model(reference, args.tracking_uri)
    chosen = "" if args.model else f", the latest finished 03_train run with a model in experiment {args.experiment!r}"
    print(f"model: {reference} ({len(loaded.labels)} classes{chosen})")
    if args.crops:
        result = crops.predict_crops(loaded, inference.image_files(args.path), progress=True)
        if args.out:
            result.save(args.out)
    else:
        fer2013 = inference.Framing()
        framing = inference.Framing(args.crop_scale or fer2013.scale,
                                    fer2013.lift if args.crop_lift is None else args.crop_lift)
        result = video.analyze_path(args.path, loaded, out_dir=args.out, max_side=args.max_side,
                                    threshold=args.threshold, framing=framing, sample_fps=args.fps,
                                    detect_every=args.detect_every, progress=True, detector=args.detector)
    print(video.result_text(result))
    if args.out:
        print(f"written to {args.out}")
    for line in (result.warnings if isinstance(result, video.VideoAnalysis) else result.messages()):
        print(f"warning: {line}", file=sys.stderr)
    if isinstance(result, inference.ImagePredictions):
        if not (result.table["error"] == "").any():
            print(f"error: none of the images under {args.path} could be read", file=sys.stderr)
            return 2
        hint = "" if args.crops else crops.crop_hint(result)
        if hint:
            print(f"note: {hint}", file=sys.stderr)
    return 0


def study(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pathlib import Path

    from fer_lab.apply import inference, study, study_report

    reference = args.model or inference.default_model_reference(args.experiment, tracking_uri=args.tracking_uri)
    the_study = study.load_study(args.study, args.events)
    out = Path(args.out)
    fer2013 = inference.Framing()
    settings = study.AnalysisSettings(sample_fps=args.fps, detect_every=args.detect_every, frame_rate=args.frame_rate,
                                      detector=args.detector, framing_scale=args.crop_scale or fer2013.scale,
                                      framing_lift=fer2013.lift if args.crop_lift is None else args.crop_lift)
    result = study.analyze_study(the_study, reference, tracking_uri=args.tracking_uri, settings=settings,
                                 cache_dir=Path(args.cache) if args.cache else out / "cache", workers=args.workers,
                                 progress=True)
    counts = result.status["status"].value_counts()
    print(f"model: {reference}; recordings: " + ", ".join(f"{count} {name}" for name, count in counts.items()))
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for reason in result.problems["reason"]:
        print(f"warning: left out: {reason}", file=sys.stderr)
    if not result.frames:
        print("error: no recording of the study could be analysed", file=sys.stderr)
        return 2
    summary = study_report.summarize(result, method=args.method, correction=args.correction,
                                     reference=args.reference, align=args.align)
    summary.save(out)
    summary.timelines_figure().savefig(out / "timelines.png", dpi=100)
    summary.profile_figure().savefig(out / "profile.png", dpi=100)
    print(summary.effects.drop(columns=["reference", "effect_size"]).round(3).to_string(index=False))
    print(summary.text)
    print(f"written to {out}")
    return 0


def register(args: argparse.Namespace) -> int:
    from fer_lab import tracking

    uri = tracking.configure(args.tracking_uri)
    ref = tracking.register_model(args.run, args.name, args.alias)
    print(f"registered run {ref.run_id} as {ref.uri}" + (f" (alias {ref.name}@{ref.alias})" if ref.alias else "")
          + f" in {uri}")
    if ref.alias:
        print(f"use it as models:/{ref.name}@{ref.alias}")
    return 0


def ensemble(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_lab import tracking
    from fer_lab.training import ensemble as ensembles

    ensembles.check_member_count(len(args.models))
    uri = tracking.configure(args.tracking_uri)
    loaded = [tracking.load_reference(reference) for reference in args.models]
    model = ensembles.average_models([member for member, _, _ in loaded], [labels for _, labels, _ in loaded],
                                     names=args.models)
    member_runs = [ref.run_id for _, _, ref in loaded]
    # What the members were trained with, where they all agree: 04's ten-crop takes its crop side from it.
    params = ensembles.shared_params([tracking.run_params(run) for run in member_runs]) if all(member_runs) else {}
    run_id, model_uri = tracking.log_model_run(
        model, loaded[0][1], experiment=args.experiment, run_name=args.name,
        params={**params, "members": ", ".join(args.models)},
        tags={"ensemble_of": ", ".join(ref.run_id or ref.uri for _, _, ref in loaded)})
    print(f"logged the average of {len(loaded)} models as run {run_id} ({model_uri}) in {uri}")
    print(f"evaluate it: fer-lab run --only 04 -p 04_evaluate.model_run_id={run_id}")
    return 0


def export(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_lab import runtime
    from fer_lab.apply import export

    exported = export.export_model(args.model, args.format, args.out, quantize=args.quantize,
                                   calibration=args.calibration, tracking_uri=args.tracking_uri)
    parity = exported.contract["parity"]
    print(f"{exported.model_file} ({exported.model_file.stat().st_size / 1e6:.2f} MB) and its contract "
          f"{exported.contract_file}: {len(exported.contract['labels'])} classes; on {parity['probe_images']} probe "
          f"images max |p - p_keras| {parity['max_abs_diff']:.2e}, same class {parity['same_class']:.0%}"
          + "".join(f"; on {faces['images']} images it was not calibrated on, same class {faces['same_class']:.1%}"
                    for faces in [exported.contract.get("held_out_parity")] if faces))
    if not exported.contract["quantized"] and parity["max_abs_diff"] > runtime.INFERENCE_TOLERANCE:
        other = "tflite" if exported.contract["format"] == "onnx" else "onnx"
        print(f"warning: {exported.model_file.name} does not reproduce the Keras model's probabilities (the "
              f"converter changed the model); try --format {other}", file=sys.stderr)
    return 0


def ui(args: argparse.Namespace) -> int:
    from fer_lab.tracking import ui

    return ui.serve_ui(args.tracking_uri, host=args.host, port=args.port)


def manifest(args: argparse.Namespace) -> int:
    from fer_lab import data

    manifest = data.build_manifest(args.path, votes=args.votes, unknown_classes=args.unknown_classes,
                                   val_fraction=args.val_fraction, seed=args.seed)
    data.write_manifest(manifest, args.out)
    print(data.manifest_report(manifest))
    print(f"manifest: {len(manifest)} rows written to {args.out}")
    return 0


def sample(args: argparse.Namespace) -> int:
    from fer_lab import project
    from fer_lab.data import synthetic

    out = synthetic.make_sample(args.out or project.SAMPLE_DIR, per_class=args.per_class, seed=args.seed,
                                fmt=args.format)
    print(f"sample written to {out}")
    return 0


def filter_(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fer_lab import data, project
    from fer_lab.faces import detection, filtering

    data_path = project.resolve(args.path)
    name = data_path.name.removesuffix(".gz").removesuffix(".csv")
    work_dir = project.resolve(args.work_dir) if args.work_dir else project.WORK_DIR / name
    given = {key: value for key, value in vars(args).items() if value is not None}
    detector_keys = ("model", "size", "padding", "upsample", "threshold")
    settings = detection.DetectorSettings(**{key: given[key] for key in detector_keys if key in given})
    rules = filtering.FilterRules(drop_duplicates=not args.keep_duplicates, **{
        key: given[key] for key in ("blank_contrast", "noise_limit", "flat_weight") if key in given})
    manifest = data.load_or_build_manifest(data_path, work_dir)
    filtered, detections = filtering.filter_manifest(manifest, data_path, settings, rules, work_dir,
                                                     workers=args.workers, progress=True)
    data.write_manifest(filtered, Path(args.out))
    print(filtering.rejection_table(filtered, by="split").to_string())
    print(f"faces: {detections.computed} detected, {detections.cached} from the cache, {detections.seconds:.1f} s "
          f"({settings.label()})")
    print(f"filtered manifest: {int(filtered['keep'].sum())} of {len(filtered)} kept, written to {args.out}")
    return 0


def sweep(args: argparse.Namespace) -> int:
    import signal

    from fer_lab.pipeline import runner, sweeps

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = sweeps.run_sweep(args.file, args.trials, executor=args.executor, address=args.address,
                              data_dir=args.data, params_files=tuple(args.params),
                              overrides=runner.parse_overrides(args.p), out_dir=args.out, storage=args.storage,
                              local_cpus=args.local_cpus)
    print(f"report: {result.report_dir}")
    print(f"mlflow: sweep run {result.parent_run_id}")
    if result.best_file is None:
        print(f"error: sweep {result.sweep.name}: no trial completed", file=sys.stderr)
        return 1
    print(f"best params: {result.best_file}")
    return 0


def server(args: argparse.Namespace) -> int:
    from fer_lab import project
    from fer_lab.tracking import server

    if args.action == "start":
        state = server.start(args.dir, port=args.port, pg_port=args.pg_port, host=args.host, artifacts=args.artifacts)
        print(f"export MLFLOW_TRACKING_URI={state.tracking_uri}")
    elif args.action == "stop":
        server.stop(args.dir)
    else:
        state = server.read_state(project.resolve(args.dir))
        print(f"running: {state.tracking_uri}, PostgreSQL {state.pg_data} port {state.pg_port}" if state
              else f"no server started from {args.dir}")
    return 0
