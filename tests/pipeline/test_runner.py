"""The papermill runner: parameter checks before anything runs, tracking, and a failing notebook."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fer_lab.errors import ConfigError, FerLabError
from fer_lab.pipeline import runner

START = ('import mlflow\nfrom fer_lab import tracking\n'
         'tracking.start_notebook_run("{name}", {{"seed": seed}}, tracking_uri=tracking_uri,'
         ' experiment=experiment, parent_run_id=parent_run_id)\n')


@pytest.fixture
def pipeline(tmp_path, write_notebook):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_first.ipynb", "answer = 1\n",
                   START.format(name="01_first") + 'mlflow.log_metric("answer", answer)\nprint(f"answer is {answer}")\n')
    write_notebook(notebooks / "02_second.ipynb", "should_fail = False\n",
                   START.format(name="02_second") + 'if should_fail:\n    raise ValueError("planned failure")\n')
    data = tmp_path / "data"
    data.mkdir()
    return notebooks, data, f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def _run(pipeline, tmp_path, **kwargs):
    notebooks, data, uri = pipeline
    overrides = {"tracking_uri": uri, "work_dir": str(tmp_path / "work"), **kwargs.pop("overrides", {})}
    return runner.run_pipeline(data_dir=data, overrides=overrides, notebooks_dir=notebooks,
                               out_dir=tmp_path / "report", log=lambda *_: None, **kwargs)


def test_pipeline_tracks_parent_and_child_runs(pipeline, tmp_path):
    result = _run(pipeline, tmp_path, overrides={"01_first.answer": 42})
    assert result.ok
    mlflow.set_tracking_uri(result.tracking_uri)
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline"] == "true"
    first = client.get_run(result.notebooks[0].run_id)
    assert first.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert first.data.metrics["answer"] == 42
    assert first.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id, "notebook")}
    assert artifacts == {"notebook/01_first.ipynb", "notebook/01_first.html"}
    index = result.index.read_text()
    assert "01_first.html" in index and "02_second.html" in index


def test_notebook_output_is_shown_while_the_notebook_runs(pipeline, tmp_path):
    notebooks, data, uri = pipeline
    lines: list[str] = []
    result = runner.run_pipeline(data_dir=data, overrides={"tracking_uri": uri, "work_dir": str(tmp_path / "work")},
                                 notebooks_dir=notebooks, out_dir=tmp_path / "report", log=lines.append)
    assert result.ok
    assert lines.index("    | answer is 1") < lines.index("[2/2] 02_second ...")


def test_kernels_start_without_the_unencrypted_transport_warning(pipeline, tmp_path, capfd):
    assert _run(pipeline, tmp_path).ok
    assert "without encryption" not in capfd.readouterr().err


def test_failing_notebook_stops_pipeline_and_marks_runs_failed(pipeline, tmp_path):
    result = _run(pipeline, tmp_path, overrides={"02_second.should_fail": True})
    assert not result.ok
    failed = result.notebooks[-1]
    assert failed.name == "02_second" and "planned failure" in failed.error
    assert "planned failure" in failed.notebook.read_text()
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(result.parent_run_id).info.status == "FAILED"
    assert "FAILED" in result.index.read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"no_such_param": 1}, "unknown parameter 'no_such_param'"),
    ({"01_first.should_fail": True}, "unknown parameter 'should_fail' for 01_first"),
    ({"09_missing.x": 1}, "unknown notebook '09_missing'"),
    ({"01_first.answer": "abc"}, r"01_first.answer = 'abc': expected int, like its default 1"),
    ({"02_second.should_fail": 1}, "02_second.should_fail = 1: expected bool"),
])
def test_bad_parameters_fail_before_anything_runs(pipeline, tmp_path, overrides, message):
    with pytest.raises(FerLabError, match=message):
        _run(pipeline, tmp_path, overrides=overrides)
    assert not (tmp_path / "report").exists()


def test_only_selects_by_number_and_rejects_unknown_names(pipeline, tmp_path):
    result = _run(pipeline, tmp_path, only=["02"])
    assert [nb.name for nb in result.notebooks] == ["02_second"]
    with pytest.raises(FerLabError, match="--only 07"):
        _run(pipeline, tmp_path, only=["07"])


def test_a_params_file_of_the_wrong_shape_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shared: [1, 2]\n")
    with pytest.raises(ConfigError, match="`shared` must map names to values, not a list"):
        runner.load_params_files([bad])


def test_every_shipped_params_file_plans_against_the_notebooks():
    from fer_lab import project
    from fer_lab.training import schedule

    notebooks = runner.discover_notebooks()
    files = sorted(project.PARAMS_DIR.glob("*.yaml"))
    assert {"ci.yaml", "default.yaml", "fer2013-cpu.yaml"} <= {file.name for file in files}
    for file in files:
        # plan_parameters raises on a name no notebook declares or a value of the wrong type.
        planned = runner.plan_parameters(notebooks, runner.load_params_files([file]))
        train = planned["03_train"]
        if "phases" in train:
            schedule.Schedule.from_config(train["phases"], train.get("cycles", 1))


def test_declared_parameters_read_what_papermill_reads(tmp_path, write_notebook):
    """The parameters cell read without papermill (a kernel's first cell calls this) agrees with papermill."""
    import ast

    import papermill

    from fer_lab import project
    from fer_lab.pipeline import notebook

    edge = write_notebook(tmp_path / "edge.ipynb", 'size: int = 48\nphases = [\n    {"epochs": 2},\n]\nlr = 1e-3  # a comment\n', "pass\n")
    for path in [edge, *sorted(project.NOTEBOOKS_DIR.glob("*.ipynb"))]:
        ours = notebook.declared_parameters(path)
        theirs = papermill.inspect_notebook(str(path))
        assert list(ours) == list(theirs), path.name
        assert all(ast.literal_eval(ours[name]) == ast.literal_eval(spec["default"]) for name, spec in theirs.items())


def test_the_next_kernel_loads_its_imports_while_the_notebook_before_it_runs(tmp_path, write_notebook):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "probe.py").write_text("import time\nLOADED = time.time()\n")  # kernels start in the notebooks folder
    write_notebook(notebooks / "01_first.ipynb", "nap = 3.0\n",
                   START.format(name="01_first") + 'import time\ntime.sleep(nap)\nmlflow.log_metric("ended", time.time())\n')
    write_notebook(notebooks / "02_second.ipynb", "answer = 1\n",
                   "import probe\n" + START.format(name="02_second") + 'mlflow.log_metric("loaded", probe.LOADED)\n')
    data = tmp_path / "data"
    data.mkdir()
    result = _run((notebooks, data, f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path)
    assert result.ok
    client = MlflowClient(result.tracking_uri)
    ended = client.get_run(result.notebooks[0].run_id).data.metrics["ended"]
    assert client.get_run(result.notebooks[1].run_id).data.metrics["loaded"] < ended


def test_the_imports_a_kernel_loads_ahead_are_read_from_each_notebook():
    from fer_lab import project
    from fer_lab.pipeline import notebook

    for path in runner.discover_notebooks(project.NOTEBOOKS_DIR):
        imports = notebook.import_statements(path)
        assert any(line.startswith("from fer_lab") for line in imports), path.name
        assert all(line.startswith(("import ", "from ")) for line in imports), imports


def test_parse_overrides_reads_yaml_scalars():
    assert runner.parse_overrides(["a=1", "03_train.lr=0.001", "flag=true", "name=x"]) == {
        "a": 1, "03_train.lr": 0.001, "flag": True, "name": "x"}
    with pytest.raises(FerLabError):
        runner.parse_overrides(["novalue"])


INTERRUPTED_PIPELINE = """
import sys
from pathlib import Path
from fer_lab.pipeline import runner

notebooks, data, uri, out = map(Path, sys.argv[1:5])
runner.run_pipeline(data_dir=data, overrides={"tracking_uri": sys.argv[3], "work_dir": str(out / "work"),
                                              "01_first.answer": 7, "01_first.nap": 120.0},
                    notebooks_dir=notebooks, out_dir=out / "report", log=lambda line: print(line, flush=True))
"""


@pytest.fixture
def sleeping_pipeline(tmp_path, write_notebook, sample_dir):
    """A pipeline process on the sample whose notebook prints "started" and sleeps two minutes."""
    import signal
    import subprocess
    import sys
    import time

    from fer_lab import project

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_first.ipynb", "answer = 1\nnap = 0.0\n",
                   START.format(name="01_first") + 'import time\nprint("started", flush=True)\ntime.sleep(nap)\n')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_PIPELINE)
    # Ctrl-C as in a terminal: tests started in a background job inherit an ignored SIGINT.
    process = subprocess.Popen([sys.executable, str(script), str(notebooks), str(sample_dir), uri, str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    for line in process.stdout:
        if "started" in line or time.time() > deadline:
            break
    yield process, notebooks, uri
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_ctrl_c_ends_every_run_killed_and_writes_the_partial_report(tmp_path, sleeping_pipeline):
    import signal

    process, _, uri = sleeping_pipeline
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)  # a busy machine writes the partial report slowly
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fer-lab").experiment_id])
    assert {run.info.status for run in runs} == {"KILLED"} and len(runs) == 2
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "01_first.html").is_file()


@pytest.mark.slow
def test_runs_left_running_by_kill_9_are_failed_at_the_next_start(tmp_path, sleeping_pipeline, sample_dir):
    import time

    import psutil

    from fer_lab import tracking
    from fer_lab.tracking import owners

    process, notebooks, uri = sleeping_pipeline
    process.kill()  # kill -9: nothing of the pipeline gets to close its runs
    process.wait()
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("fer-lab").experiment_id
    killed = {run.info.run_id: run for run in client.search_runs([exp_id])}
    assert [run.info.status for run in killed.values()] == ["RUNNING", "RUNNING"]
    pids = {run.data.tags[owners.PID_TAG] for run in killed.values()}
    assert str(process.pid) in pids and len(pids) == 2  # the runner owns the parent, the kernel its notebook run
    kernel = int(next(pid for pid in pids if pid != str(process.pid)))
    deadline = time.time() + 30  # the kernel notices its parent is gone within a second or two
    while psutil.pid_exists(kernel) and psutil.Process(kernel).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the orphaned kernel did not exit"
        time.sleep(0.5)
    tracking.configure(uri)
    alive = tracking.create_run(exp_id, "still-going", tracking.base_tags())  # this process: alive, left alone

    lines: list[str] = []
    again = runner.run_pipeline(data_dir=sample_dir, notebooks_dir=notebooks, out_dir=tmp_path / "again",
                                overrides={"tracking_uri": uri, "work_dir": str(tmp_path / "work")}, log=lines.append)
    assert again.ok
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and "ended without closing the run" in run.data.tags["fer_lab.orphaned"]
    assert client.get_run(alive).info.status == "RUNNING"
    assert any("2 run(s) left RUNNING by a killed process marked FAILED" in line for line in lines)


QUIET_PIPELINE = """
import sys
from pathlib import Path
from fer_lab.pipeline import runner

notebooks, data, uri, out = map(Path, sys.argv[1:5])
result = runner.run_pipeline(data_dir=data, overrides={"tracking_uri": sys.argv[3], "work_dir": str(out / "work")},
                             notebooks_dir=notebooks, out_dir=out / "report", log=lambda line: print(line, flush=True))
sys.exit(0 if result.ok else 1)
"""


@pytest.mark.slow
def test_tensorflow_start_up_lines_stay_out_of_notebooks_and_the_terminal(tmp_path, write_notebook, sample_dir):
    import os
    import subprocess
    import sys

    import nbformat

    from fer_lab import _native, project

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # TensorFlow imported the package's way, then the start-up lines written to fd 2 by hand: the runner drops them
    write_notebook(notebooks / "01_first.ipynb", "answer = 1\n",
                   START.format(name="01_first") + "from fer_lab import training\nimport tensorflow as tf\n"
                   "print('sum', float(tf.constant(1.0) + answer))\n"
                   "import os\nos.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
                   "written to STDERR\\nE0000 00:00:1795900317.875781   22576 cuda_platform.cc:52] failed call to "
                   "cuInit: INTERNAL\\nkept line\\n')\n"
                   "import time\ntime.sleep(3)  # fd 2 reaches the notebook through ipykernel's pipe reader\n")
    script = tmp_path / "quiet.py"
    script.write_text(QUIET_PIPELINE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # ipykernel sends fd 2 to the notebook (and the terminal) only outside pytest, as for a user
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    finished = subprocess.run([sys.executable, str(script), str(notebooks), str(sample_dir), uri, str(tmp_path)],
                              capture_output=True, text=True, cwd=project.ROOT, timeout=600, env=env)
    assert finished.returncode == 0, finished.stderr
    assert "| sum 2.0" in finished.stdout
    executed = nbformat.read(tmp_path / "report" / "01_first.ipynb", as_version=4)
    outputs = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "sum 2.0" in outputs and "kept line" in outputs
    for text in (outputs, finished.stdout):
        assert not any(_native.NOISE.match(line) for line in text.splitlines()), text
    # TensorFlow's own lines never reach fd 2; the kernel echoes the cell's deliberate ones to the terminal
    assert "cudart_stub.cc" not in finished.stderr
    assert finished.stderr.count("absl::InitializeLog") <= 1, finished.stderr
