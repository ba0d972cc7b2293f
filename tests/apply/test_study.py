"""Studies: input validation, the per-recording cache, statistics with known answers, and the built-in effect found."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from fer_lab import cli, project
from fer_lab.apply import study, study_demo, study_report, study_stats, study_tables
from fer_lab.errors import DataError

# ---- input ------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_study_csv_is_validated_with_one_line_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.mp4", "x")
    good = write(tmp_path / "study.csv", "path,participant,condition,age\na.mp4,p1,A,31\nmissing.mp4,p1,B,31\n")
    loaded = study.read_study(good)
    assert loaded.covariates == ["age"] and loaded.recordings["age"].dtype.kind == "i"
    assert loaded.recordings["path"].iloc[1] == str(tmp_path / "missing.mp4")  # kept: reported when analysed
    cases = {
        "path,participant\na.mp4,p1\n": "missing column\\(s\\) condition",
        "path,participant,condition\na.mp4,,A\n": "line 2: empty 'participant'",
        "path,participant,condition\na.mp4,p1,A\na.mp4,p2,A\n": "line 3: recording .*a.mp4 is listed twice",
    }
    for text, message in cases.items():
        with pytest.raises(DataError, match=message) as caught:
            study.read_study(write(tmp_path / "bad.csv", text))
        assert "\n" not in str(caught.value) and "bad.csv" in str(caught.value)
    with pytest.raises(DataError, match="file not found"):
        study.read_study(tmp_path / "nope.csv")


@pytest.mark.parametrize(("events", "message"), [
    ("condition,name,start,end\nA,reveal,1,2\n", ""),
    ("path,name,start,end\na.mp4,reveal,0,2.5\n", ""),
    ("condition,name,start,end,colour\nA,reveal,1,2,red\n", "unknown column\\(s\\) colour"),
    ("name,start,end\nreveal,1,2\n", "exactly one of the columns path or condition"),
    ("condition,name,start,end\nA,reveal,2,1\n", "line 2: event 'reveal' needs 0 <= start < end, not 2 to 1"),
    ("condition,name,start,end\nA,reveal,-1,1\n", "needs 0 <= start < end"),
    ("condition,name,start,end\nA,reveal,soon,2\n", "line 2: start and end must be seconds"),
    ("condition,name,start,end\nC,reveal,1,2\n", "line 2: condition 'C' is not in the study"),
])
def test_events_csv_is_validated(tmp_path: Path, events: str, message: str) -> None:
    write(tmp_path / "a.mp4", "x")
    study_csv = write(tmp_path / "study.csv", "path,participant,condition\na.mp4,p1,A\n")
    events_csv = write(tmp_path / "events.csv", events)
    if not message:
        assert len(study.read_study(study_csv, events_csv).events) == 1
        return
    with pytest.raises(DataError, match=message):
        study.read_study(study_csv, events_csv)


def test_folder_study_has_one_participant_per_recording(tmp_path: Path) -> None:
    write(tmp_path / "anna.mp4", "x")
    write(tmp_path / "ben.avi", "x")
    (tmp_path / "carl").mkdir()
    write(tmp_path / "notes.txt", "x")
    recordings = study.load_study(tmp_path).recordings
    assert list(recordings["participant"]) == ["anna", "ben", "carl"]
    with pytest.raises(DataError, match="holds no videos"):
        study.folder_study(tmp_path / "carl")


# ---- statistics with known answers --------------------------------------------------------------


def synthetic_long(participants: int = 12, shift: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """share_happy is `shift` higher in B for every participant; share_sad and valence differ by noise only."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(participants):
        base = rng.uniform(0.1, 0.4, 3)
        for condition in ("A", "B"):
            values = {"share_happy": base[0] + (shift if condition == "B" else 0.0) + rng.normal(0, 0.02),
                      "share_sad": base[1] + rng.normal(0, 0.05), "valence": base[2] + rng.normal(0, 0.05)}
            rows += [{"participant": f"p{number}", "condition": condition, "segment": "whole", "measure": measure,
                      "value": value} for measure, value in values.items()]
    return pd.DataFrame(rows)


def test_paired_wilcoxon_finds_the_shift_and_nothing_else() -> None:
    measures = ["share_happy", "share_sad", "valence"]
    effects = study_stats.condition_effects(synthetic_long(10), measures).set_index("measure")
    happy = effects.loc["share_happy"]
    assert happy["test"] == "wilcoxon" and happy["participants"] == 10
    assert happy["p"] == pytest.approx(2 / 2**10)  # exact test: all ten differences positive
    assert happy["p_adjusted"] == pytest.approx(3 * 2 / 2**10)  # Holm: the smallest p times the family size
    assert happy["effect"] == pytest.approx(1.0) and happy["ci_low"] < 0.3 < happy["ci_high"]
    assert happy["significant"] and not effects.loc[["share_sad", "valence"], "significant"].any()
    assert (effects["p_adjusted"] >= effects["p"]).all()


def test_mixed_model_on_an_incomplete_design_with_covariates() -> None:
    long = synthetic_long(14, shift=0.25)
    long = long[~((long["participant"].isin(["p0", "p1"])) & (long["condition"] == "B"))]
    covariates = pd.DataFrame({"participant": [f"p{n}" for n in range(14) for _ in "AB"],
                               "condition": ["A", "B"] * 14, "age": np.repeat(np.arange(20, 34), 2)})
    effects = study_stats.condition_effects(long, ["share_happy", "share_sad"], covariates=covariates,
                                            correction="fdr_bh").set_index("measure")
    assert (effects["test"] == "mixed").all()
    happy = effects.loc["share_happy"]
    paired = long[long["measure"] == "share_happy"].pivot(index="participant", columns="condition", values="value")
    observed = (paired["B"] - paired["A"]).mean()  # the complete participants' mean difference
    assert happy["difference"] == pytest.approx(observed, abs=0.01) and happy["difference"] == pytest.approx(0.25, abs=0.03)
    assert happy["ci_low"] < happy["difference"] < happy["ci_high"] and happy["ci_high"] - happy["ci_low"] < 0.1
    assert happy["significant"] and happy["effect"] > 2 and not effects.loc["share_sad", "significant"]
    assert "share_happy higher in B" in study_stats.summary_text(effects.reset_index(), "fdr_bh")


def test_identical_conditions_are_not_tested_as_different() -> None:
    long = synthetic_long(6, shift=0.0)
    long.loc[long["measure"] == "share_sad", "value"] = 0.2  # identical everywhere: nothing to test
    effects = study_stats.condition_effects(long, ["share_sad", "share_happy"]).set_index("measure")
    assert effects.loc["share_sad", "p"] == 1.0 and effects.loc["share_sad", "effect"] == 0.0
    assert not effects["significant"].any()
    assert "no significant difference" in study_stats.summary_text(effects.reset_index())


def test_condition_means_have_t_intervals() -> None:
    mean, low, high = study_tables.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert np.isnan(study_tables.mean_ci([1.0])[1])


# ---- analysis, cache, the built-in effect ------------------------------------------------------


@pytest.mark.slow
def test_cache_reanalyses_only_new_recordings_and_reports_bad_ones(tmp_path: Path, expression_model) -> None:
    uri, run_id, framing = expression_model
    generated = study_demo.make_study(tmp_path / "gen", participants=3, seconds=2.5, seed=1)
    full = pd.read_csv(generated.study_csv)
    frames_dir = tmp_path / "gen" / "frames"  # an image-folder recording, read at the frame rate
    frames_dir.mkdir()
    for index in range(6):
        Image.fromarray(skimage.data.astronaut()[::2, ::2]).save(frames_dir / f"{index:03d}.png")
    write(tmp_path / "gen" / "broken.mp4", "not a video")
    extra = pd.DataFrame({"path": ["frames", "broken.mp4", "gone.mp4"], "participant": ["p09", "p10", "p11"],
                          "condition": "A", "age": 40})
    first = full[full["participant"] != "p03"]
    pd.concat([first, extra]).to_csv(tmp_path / "gen" / "first.csv", index=False)
    cache = tmp_path / "cache"
    result = study.analyze_study(study.read_study(tmp_path / "gen" / "first.csv"), run_id, tracking_uri=uri,
                                 cache_dir=cache, workers=1)
    status = result.status.set_index("participant")["status"]
    assert list(status[["p01", "p02", "p09"]]) == ["analysed"] * 4 + ["analysed"]
    assert status["p10"] == "failed" and status["p11"] == "missing"
    reasons = result.problems.set_index("participant")["reason"]
    assert "OpenCV cannot open" in reasons["p10"] and "no such file" in reasons["p11"]
    assert all("\n" not in reason for reason in reasons)
    assert len(result.frames[str(frames_dir.resolve())]) >= 6
    # A participant more: only their two recordings are analysed.
    pd.concat([full, extra]).to_csv(tmp_path / "gen" / "second.csv", index=False)
    again = study.analyze_study(study.read_study(tmp_path / "gen" / "second.csv"), run_id, tracking_uri=uri,
                                cache_dir=cache, workers=1)
    counts = again.status["status"].value_counts()
    assert counts["cached"] == 5 and counts["analysed"] == 2, counts
    for path in first["path"]:
        pd.testing.assert_frame_equal(again.frames[str((tmp_path / "gen" / path).resolve())],
                                      result.frames[str((tmp_path / "gen" / path).resolve())])
    # A corrupt entry is analysed again with a notice; other settings or another model are another key.
    victim = sorted(cache.glob("*.parquet"))[0]
    victim.write_bytes(b"garbage")
    repaired = study.analyze_study(study.read_study(tmp_path / "gen" / "second.csv"), run_id, tracking_uri=uri,
                                   cache_dir=cache, workers=1)
    assert repaired.status["status"].value_counts()["analysed"] == 1
    assert any("corrupt study cache entry" in line for line in repaired.warnings)
    assert study.AnalysisSettings(sample_fps=5.0).key("model") != study.AnalysisSettings().key("model")
    assert study.AnalysisSettings().key("model") != study.AnalysisSettings().key("retrained model")


@pytest.fixture(scope="module")
def generated_study(tmp_path_factory: pytest.TempPathFactory, expression_model):
    """A generated study of 10 participants x 2 conditions, analysed once (cache shared with the CLI test)."""
    uri, run_id, framing = expression_model
    root = tmp_path_factory.mktemp("study")
    generated = study_demo.make_study(root / "gen", participants=10, seed=0)
    settings = study.AnalysisSettings(framing_scale=framing.scale, framing_lift=framing.lift)
    result = study.analyze_study(study.read_study(generated.study_csv, generated.events_csv), run_id,
                                 tracking_uri=uri, settings=settings, cache_dir=root / "cache", workers=2)
    return generated, result, root


@pytest.mark.slow
def test_study_finds_the_built_in_effect_and_no_other(generated_study) -> None:
    _, result, _ = generated_study
    assert (result.status["status"] == "analysed").all()
    summary = study_report.summarize(result)
    effects = summary.effects.set_index(["segment", "measure"])
    for segment in ("response", "whole"):
        for measure in ("share_happy", "valence"):  # B (sad) vs A (happy); this small model reads sad faces poorly
            row = effects.loc[(segment, measure)]
            assert row["significant"] and row["difference"] < 0, (segment, measure, row.to_dict())
        assert effects.loc[(segment, "share_sad"), "difference"] > 0
    assert not effects.loc["reveal", "significant"].any(), effects.loc["reveal"]
    assert "Segment 'reveal', B vs A (wilcoxon, 10 participants" in summary.text
    profile = summary.profile("response")
    assert profile.loc["happy", "A"] > 0.5 > profile.loc["happy", "B"]
    assert set(summary.timelines["condition"]) == {"A", "B"}
    assert summary.timelines_figure().axes and summary.profile_figure().axes


@pytest.mark.slow
def test_cli_study_writes_tables_from_the_cache(generated_study, expression_model,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    generated, _, root = generated_study
    uri, run_id, framing = expression_model
    out = root / "cli"
    code = cli.main(["study", str(generated.study_csv), "--events", str(generated.events_csv), "--model", run_id,
                     "--tracking-uri", uri, "--out", str(out), "--cache", str(root / "cache"), "--align", "reveal",
                     "--crop-scale", str(framing.scale), "--crop-lift", str(framing.lift)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "recordings: 20 cached" in printed.out and "Segment 'response', B vs A" in printed.out
    for name in ("participants", "conditions", "effects", "measures_long", "timelines", "recordings"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.parquet").is_file()
    assert (out / "timelines.png").is_file() and (out / "summary.txt").read_text().startswith("Segment")
    assert cli.main(["study", str(root / "nope.csv"), "--model", run_id, "--tracking-uri", uri]) == 2


@pytest.mark.extended
@pytest.mark.slow
def test_notebook_07_runs_on_the_sample(sample_dir: Path, expression_model, tmp_path: Path) -> None:
    import papermill

    uri, run_id, framing = expression_model
    papermill.execute_notebook(
        str(project.NOTEBOOKS_DIR / "07_study.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
        cwd=str(project.NOTEBOOKS_DIR), progress_bar=False,
        parameters={"data_dir": str(sample_dir), "work_dir": str(tmp_path / "work"), "tracking_uri": uri,
                    "experiment": "study-tests", "model_uri": run_id, "participants": 8, "workers": 1,
                    "correction": "fdr_bh"})
    outputs = list((tmp_path / "work" / "study" / "outputs").glob("*/effects.csv"))
    assert len(outputs) == 1
    effects = pd.read_csv(outputs[0])
    response = effects[effects["segment"] == "response"].set_index("measure")
    assert response.loc["share_happy", "significant"] and not effects[effects["segment"] == "reveal"]["significant"].any()


def test_worker_processes_only_where_the_frames_repay_their_start(generated_study, monkeypatch) -> None:
    generated, _, _ = generated_study
    todo = [(path, Path()) for path in study.read_study(generated.study_csv).recordings["path"]]
    settings = study.AnalysisSettings(sample_fps=10.0)
    assert study._useful_workers(todo, settings) == 1  # 20 recordings of 4 s: 800 frames, one process
    monkeypatch.setattr(study, "FRAMES_PER_WORKER", 100)
    assert study._useful_workers(todo, settings) == min(2, study.available_cores())
    assert study._useful_workers(todo[:1], settings) == 1  # one recording of 40 frames


def test_a_generated_study_is_reused_only_when_made_whole_with_the_same_arguments(tmp_path: Path) -> None:
    first = study_demo.make_study(tmp_path, participants=2, seconds=2.5, seed=3)
    video = tmp_path / first.truth["path"].iloc[0]
    stamp = video.stat().st_mtime_ns
    again = study_demo.make_study(tmp_path, participants=2, seconds=2.5, seed=3)
    assert video.stat().st_mtime_ns == stamp and again.truth.equals(first.truth)
    study_demo.make_study(tmp_path, participants=2, seconds=2.5, seed=4)  # other arguments: made anew
    assert video.stat().st_mtime_ns != stamp
    stamp = video.stat().st_mtime_ns
    video.unlink()  # a file gone: made anew
    study_demo.make_study(tmp_path, participants=2, seconds=2.5, seed=4)
    assert video.is_file() and video.stat().st_mtime_ns != stamp
