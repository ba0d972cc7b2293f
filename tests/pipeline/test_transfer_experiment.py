"""The transfer-phases experiment set: its arms as specified, and two of them run for real on the sample."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fer_lab import project, tracking
from fer_lab.pipeline import experiments
from fer_lab.training import schedule


def test_transfer_phases_has_every_arm_at_both_sizes() -> None:
    experiment = experiments.load_experiment("transfer-phases")
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
        assert plans[f"head6_top4_x2_n{size}"][2:] == ("[head(head) 6ep, top(top:2) 4ep] x 2", 20)
        assert plans[f"head2_all8_n{size}"][2] == "[head(head) 2ep, all(all) 8ep]"
        assert plans[f"all_only_n{size}"][2:] == ("[all(all) 20ep]", 20)
        assert all(plans[f"{arm}_n{size}"][:2] == (size, "base")
                   for arm in ("head_only", "head6_top4_x2", "head2_all8", "all_only"))


@pytest.mark.slow
def test_transfer_phases_runs_on_the_sample_from_a_sample_model(base_model_store, sample_dir, tmp_path) -> None:
    uri, base_run = base_model_store
    content = yaml.safe_load((experiments.EXPERIMENTS_DIR / "transfer-phases.yaml").read_text())
    content["params"] = [str(project.PARAMS_DIR / "ci.yaml")]
    content["overrides"].update({"03_train.weights": base_run, "tracking_uri": uri, "work_dir": str(tmp_path / "work"),
                                 "03_train.cnn": {"widths": [8, 16], "convs_per_block": 1}, "04_evaluate.tta": "none"})
    content["variants"] = {name: content["variants"][name] for name in ("scratch_n50", "head6_top4_x2_n50")}
    for variant in content["variants"].values():  # the arms' phase structure, one epoch a phase
        variant["03_train.phases"] = [{**phase, "epochs": 1} for phase in variant["03_train.phases"]]
    experiment_file = tmp_path / "transfer-phases.yaml"
    experiment_file.write_text(yaml.safe_dump(content))
    result = experiments.run_experiment(experiment_file, data_dir=sample_dir, out_dir=tmp_path / "report",
                                        log=lambda *_: None)
    assert result.ok, {name: [nb.error for nb in pipeline.notebooks] for name, pipeline in result.variants.items()}
    client = MlflowClient()
    scratch, seed = (client.get_run(result.training_runs[name]).data for name in ("scratch_n50", "head6_top4_x2_n50"))
    assert seed.tags["parent_model_run_id"] == base_run and "parent_model_run_id" not in scratch.tags
    assert seed.tags["schedule"] == "[head(head) 1ep, top(top:2) 1ep] x 2"
    assert seed.params["per_class"] == scratch.params["per_class"] == "50"
    _, labels, _ = tracking.load_reference(result.training_runs["head6_top4_x2_n50"])
    assert "neutral" in labels  # the base had no neutral; the new head has the target's classes
    assert "McNemar" in result.compare.index.read_text()
