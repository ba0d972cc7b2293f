"""The transfer-phases experiment set: its arms as specified, and two of them run for real on the sample."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fer_lab import project, tracking
from fer_lab.pipeline import experiments, runner
from fer_lab.training import schedule


@pytest.mark.parametrize(("name", "top"), [("transfer-phases", "top:2"), ("transfer-phases-efficientnet", "0.5")])
def test_transfer_phases_has_every_arm_at_both_sizes(name: str, top: str) -> None:
    experiment = experiments.load_experiment(name)
    assert experiment.notebooks == ("03", "04") and experiment.overrides["labels"] == "ferplus"
    assert experiment.overrides["03_train.weights"].startswith("models:/")
    plans = {}
    for name, variant in experiment.variants.items():
        plan = schedule.Schedule.from_config(variant["03_train.phases"], variant.get("03_train.cycles", 1))
        plans[name] = (variant["03_train.per_class"], variant.get("03_train.weights", "base"), plan.describe(),
                       plan.total_epochs)
    for size in (50, 400):
        assert plans[f"scratch_n{size}"][:2] == (size, "none")
        assert plans[f"head_only_n{size}"][2] == "[head(head) 20ep]"
        assert plans[f"head6_top4_x2_n{size}"][2:] == (f"[head(head) 6ep, top({top}) 4ep] x 2", 20)
        assert plans[f"head2_all8_n{size}"][2] == "[head(head) 2ep, all(all) 8ep]"
        assert plans[f"all_only_n{size}"][2:] == ("[all(all) 20ep]", 20)
        assert all(plans[f"{arm}_n{size}"][:2] == (size, "base")
                   for arm in ("head_only", "head6_top4_x2", "head2_all8", "all_only"))


@pytest.mark.extended
@pytest.mark.slow
def test_the_seed_arm_runs_on_the_sample_from_a_sample_model(base_model_store, sample_dir, tmp_path) -> None:
    """The experiment's shared overrides plus its seed arm, through the real 03_train notebook (one epoch a
    phase), with the base swapped for a model trained on the sample (it lacks neutral; FER+ labels add it)."""
    uri, base_run = base_model_store
    experiment = experiments.load_experiment("transfer-phases")
    arm = dict(experiment.variants["head6_top4_x2_n50"])
    arm["03_train.phases"] = [{**phase, "epochs": 1} for phase in arm["03_train.phases"]]
    overrides = {**experiment.overrides, **arm, "03_train.weights": base_run, "tracking_uri": uri,
                 "work_dir": str(tmp_path / "work"), "03_train.cnn": {"widths": [8, 16], "convs_per_block": 1}}
    result = runner.run_pipeline(data_dir=sample_dir, params_files=[project.PARAMS_DIR / "ci.yaml"],
                                 overrides=overrides, only=["03_train"], out_dir=tmp_path / "report",
                                 log=lambda *_: None)
    assert result.ok, [nb.error for nb in result.notebooks]
    run_id = result.notebooks[0].run_id
    run = MlflowClient().get_run(run_id).data
    assert run.tags["parent_model_run_id"] == base_run and run.params["per_class"] == "50"
    assert run.tags["schedule"] == "[head(head) 1ep, top(top:2) 1ep] x 2"
    _, labels, _ = tracking.load_reference(run_id)
    assert "neutral" in labels and len(labels) == 7  # the new head has the target's classes, the base had six
