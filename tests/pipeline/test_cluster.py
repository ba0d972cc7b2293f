"""Experiment sets on a real local Ray cluster, tracked by a real PostgreSQL-backed MLflow server:
variants in parallel, one failing, the rest compared."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest

from fer_lab import project
from fer_lab.errors import ConfigError
from fer_lab.pipeline import cluster, experiments, runner
from fer_lab.tracking import server

# 03 + 04 at their smallest: two epochs of a two-block CNN, plain test-time evaluation.
TINY = {
    "03_train.phases": [{"name": "all", "epochs": 2, "trainable": "all", "lr": 0.005, "lr_schedule": "onecycle"}],
    "03_train.cnn": {"widths": [8, 16], "convs_per_block": 1},
    "04_evaluate.tta": "none",
    "04_evaluate.top_pairs": 1,
    "04_evaluate.mistakes_per_pair": 2,
}


@pytest.mark.parametrize("address, local", [
    (None, True), ("local", True), ("auto", True), ("127.0.0.1:6379", True), ("ray://localhost:10001", True),
    ("10.0.0.5:6379", False), ("ray://head.example.org:10001", False),
])
def test_which_addresses_are_this_machine(address, local):
    assert cluster.is_local_address(address) is local


def test_a_remote_cluster_needs_a_tracking_server_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="needs a tracking server") as raised:
        cluster.RayExecutor(f"sqlite:///{tmp_path / 'mlflow.db'}", address="10.0.0.5:6379")
    assert "\n" not in str(raised.value)
    cluster.require_shared_tracking("http://10.0.0.1:5000", remote=True)
    cluster.require_shared_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", remote=False)


@pytest.fixture(scope="module")
def team_server():
    """`fer-lab server start` on free 127.0.0.1 ports, in a folder the postgres user can reach."""
    try:
        server.postgres_bin("initdb")
    except ConfigError:
        if os.geteuid() != 0 or subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"],
                                               capture_output=True).returncode != 0:
            pytest.skip("PostgreSQL binaries are absent and apt-get could not install postgresql")
    services = Path(tempfile.mkdtemp(prefix="fer-lab-services-"))
    services.chmod(0o755)  # PostgreSQL runs as the postgres user, which must reach its data folder
    state = server.start(services, port=server.free_port(), log=lambda *_: None)
    yield state
    assert server.stop(services, log=lambda *_: None)
    assert not (Path(state.pg_data) / "postmaster.pid").exists()
    subprocess.run(["rm", "-rf", str(services)], check=False)


def tiny_experiment(tmp_path, tracking_uri: str) -> Path:
    file = tmp_path / "tiny.yaml"
    overrides = {"tracking_uri": tracking_uri, "work_dir": str(tmp_path / "work"), **TINY}
    file.write_text(json.dumps({
        "description": "three tiny variants, one broken",
        "params": [str(project.PARAMS_DIR / "ci.yaml")],
        "notebooks": ["03", "04"],
        "resources": {"cpus": 1},
        "overrides": overrides,
        "baseline": "seed0",
        "variants": {"seed0": {"seed": 0}, "seed1": {"seed": 1}, "broken": {"03_train.backbone": "nosuchnet"}},
    }))
    return file


def check_ray_experiment(result: experiments.ExperimentResult) -> None:
    """Two variants trained and compared, the broken one reported with its executed notebook."""
    assert set(result.variants) == {"seed0", "seed1", "broken"}
    assert result.variants["seed0"].ok and result.variants["seed1"].ok
    broken = result.variants["broken"]
    assert not broken.ok and "nosuchnet" in broken.notebooks[0].error
    assert broken.notebooks[0].notebook == result.report_dir / "broken" / "03_train.ipynb"
    assert broken.notebooks[0].notebook.is_file()
    for name in ("seed0", "seed1"):
        assert (result.report_dir / name / "04_evaluate.html").is_file()
        assert (result.report_dir / name / "index.html").is_file()
    assert set(result.training_runs) == {"seed0", "seed1"}
    assert result.compare is not None and result.compare.ok
    assert "McNemar" in result.compare.notebooks[0].notebook.read_text()
    assert not result.ok  # a variant failed
    # The two good variants ran at the same time on the cluster's workers.
    (start0, end0), (start1, end1) = result.timings["seed0"], result.timings["seed1"]
    assert max(start0, start1) < min(end0, end1)


def test_the_team_server_keeps_runs_in_postgresql(team_server, sample_dir, tmp_path):
    assert team_server.tracking_uri.startswith("http://127.0.0.1:")
    assert team_server.backend_store_uri.startswith("postgresql+psycopg2://")
    client = mlflow.MlflowClient(team_server.tracking_uri)
    experiment = client.create_experiment("server-check")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "answer", 42)
    import sqlalchemy

    password = Path(team_server.pg_data).parent.joinpath("db-password").read_text().strip()
    engine = sqlalchemy.create_engine(team_server.backend_store_uri.replace("fer_lab@", f"fer_lab:{password}@"))
    with engine.connect() as connection:
        stored = connection.execute(sqlalchemy.text("SELECT value FROM metrics WHERE run_uuid = :run"),
                                    {"run": run.info.run_id}).scalar()
    engine.dispose()
    assert stored == 42

    result = runner.run_pipeline(data_dir=sample_dir, only=["01"], out_dir=tmp_path / "report",
                                 overrides={"tracking_uri": team_server.tracking_uri, "work_dir": str(tmp_path / "work")})
    assert result.ok and result.tracking_uri == team_server.tracking_uri
    notebook_run = client.get_run(result.notebooks[0].run_id)
    assert notebook_run.data.metrics["images"] > 0
    assert "notebook/01_explore.html" in {item.path for item in client.list_artifacts(notebook_run.info.run_id, "notebook")}
    assert any(Path(team_server.artifacts).rglob("01_explore.html"))  # stored by the server, not by the client
    with pytest.raises(ConfigError, match="already running"):
        server.start(Path(team_server.pg_data).parent, port=server.free_port())


@pytest.mark.extended
@pytest.mark.slow
def test_experiment_on_a_local_ray_cluster_against_the_team_server(team_server, sample_dir, tmp_path):
    uri = team_server.tracking_uri
    lines: list[str] = []
    recorded_when_reported: dict[str, bool] = {}

    def log(line: str) -> None:  # reads the state file the moment a variant is reported finished
        lines.append(line)
        if line.startswith("== variant ") and " on " in line:
            name = line.split()[2]
            state = json.loads((tmp_path / "report" / experiments.STATE_FILE).read_text())
            recorded_when_reported[name] = state["variants"][name]["pipeline"] is not None

    result = experiments.run_experiment(tiny_experiment(tmp_path, uri), data_dir=sample_dir,
                                        out_dir=tmp_path / "report", executor="ray", local_cpus=3, log=log)
    check_ray_experiment(result)
    assert recorded_when_reported == {"seed0": True, "seed1": True, "broken": True}
    assert "ray: started a local cluster with 3 CPUs" in lines
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.training_runs["seed1"]).data
    assert run.tags["variant"] == "seed1" and run.params["seed"] == "1"
    assert "test_accuracy" in run.metrics
    import ray

    assert not ray.is_initialized()  # the local cluster started for the experiment is shut down


def test_cli_refuses_a_remote_cluster_with_a_local_store_in_one_line(tmp_path, capsys, monkeypatch):
    from fer_lab import cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    file = tiny_experiment(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = cli.main(["run", "--experiment", str(file), "--executor", "ray", "--address", "10.0.0.5:6379",
                     "--out", str(tmp_path / "report")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "needs a tracking server" in error
    assert not (tmp_path / "report").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_sweep_study_in_the_team_servers_postgresql(team_server, monkeypatch):
    import optuna

    from fer_lab.pipeline import sweeps
    from fer_lab.training import trials

    public, password = sweeps._without_password(team_server.optuna_storage)
    assert password and password not in public  # what trials get, printed into 03's executed notebook
    monkeypatch.setenv("PGPASSWORD", password)
    study = optuna.create_study(study_name="pg-check", storage=public, direction="minimize")
    trial = study.ask()
    reporter = trials.TrialReporter(public, "pg-check", trial._trial_id, "val_loss", {"type": "median"})
    assert reporter(1, {"val_loss": 0.5}) is False  # the first trial is never pruned
    assert study.trials[0].intermediate_values == {1: 0.5}
