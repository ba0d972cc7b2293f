"""Pipelines as Ray tasks: each experiment variant or sweep trial runs its notebooks on a Ray cluster.

A task runs `python -m fer_lab.pipeline.cluster` in a process of its own (papermill inside a pooled
worker process hangs on re-runs), sends the executed notebooks back as bytes and the driver writes them
into its report folder, so a worker on another machine needs no shared disk for the reports. Runs are
tracked wherever the spec's `tracking_uri` points: with more than one machine, a tracking server.

`ray` is imported only here and only when a Ray executor is built, so the plain pipeline never pays for it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from fer_lab import project
from fer_lab._shared import available_cores, one_line, write_atomic
from fer_lab.errors import ConfigError
from fer_lab.pipeline.report import PipelineResult

SHARED_SCHEMES = ("http://", "https://", "postgresql://", "postgresql+psycopg2://", "mysql://", "mssql://")
_LOCAL_START_ATTEMPTS = 3
_STOP_GRACE_S = 60  # how long an interrupted variant may take to end its MLflow runs KILLED


@dataclass(frozen=True)
class VariantSpec:
    """One pipeline to run: what `runner.run_pipeline` takes, in a form that travels as JSON."""

    name: str
    data_dir: str | None = None
    params_files: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    notebooks_dir: str = ""  # default: the project's notebooks/ on the worker
    env: dict[str, str] = field(default_factory=dict)  # set in the child process (a database password)


@dataclass
class VariantOutcome:
    """How one variant went: its pipeline result (None when it never started), when and where it ran."""

    name: str
    result: PipelineResult | None
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    node: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok and not self.error


def is_local_address(address: str | None) -> bool:
    """Whether a Ray address means this machine: none or `local` (a new local cluster) or a loopback host."""
    if not address or address in ("local", "auto"):
        return True
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_shared_tracking(tracking_uri: str, remote: bool) -> None:
    """Refuse a store only this machine can write to when the workers may run on other machines.

    Raises:
        ConfigError: `remote` and `tracking_uri` is a local file or sqlite store.
    """
    if remote and not tracking_uri.startswith(SHARED_SCHEMES):
        raise ConfigError(f"tracking store {tracking_uri or '(local default)'} is on this machine only: a Ray cluster "
                          "of several machines needs a tracking server (set MLFLOW_TRACKING_URI=http://HOST:PORT, "
                          "e.g. `make server` on a machine every node reaches)")


class RayExecutor:
    """Variants as Ray tasks on a cluster: `address` (or $RAY_ADDRESS) joins one, none starts a local one.

    Used as a context manager: on leaving it, unfinished tasks are cancelled (Ctrl-C included) and a
    cluster started here is shut down.
    """

    def __init__(self, tracking_uri: str, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 local_cpus: int | None = None, log: Callable[[str], None] = print) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.tracking_uri = tracking_uri
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.local_cpus = local_cpus
        self.log = log
        self._pending: dict[Any, tuple[VariantSpec, Path]] = {}
        self._started_here = False
        self._ray: Any = None
        self._task: Any = None
        require_shared_tracking(tracking_uri, remote=not is_local_address(self.address))

    def __enter__(self) -> RayExecutor:
        import ray

        self._ray = ray
        self._task = ray.remote(_variant_task)
        if self.address in (None, "local"):
            cpus = self.local_cpus or available_cores()
            for attempt in range(1, _LOCAL_START_ATTEMPTS + 1):
                try:
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
                    break
                except Exception as failure:  # Ray gives its raylet 30 s to register: a busy machine may need more
                    ray.shutdown()
                    if attempt == _LOCAL_START_ATTEMPTS:
                        raise ConfigError(f"the local Ray cluster did not start: {one_line(failure)}") from failure
                    self.log(f"ray: the local cluster did not start ({one_line(failure)}); trying again")
            self._started_here = True
            self.log(f"ray: started a local cluster with {cpus} CPUs")
        else:
            ray.init(address=self.address, log_to_driver=True)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        require_shared_tracking(self.tracking_uri, remote=len(nodes) > 1)
        total = ray.cluster_resources()
        self.log(f"ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs; "
                 f"each variant takes {self.resources['num_cpus']:g} CPU(s), {self.resources['num_gpus']:g} GPU(s)")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        try:
            if self._pending:
                self.cancel_all()
        finally:
            if self._started_here:
                self._ray.shutdown()

    @property
    def pending(self) -> int:
        """Variants submitted and not yet collected."""
        return len(self._pending)

    def submit(self, spec: VariantSpec, out_dir: Path) -> None:
        """Queue `spec` on the cluster; its reports will be written to `out_dir`."""
        task = self._task.options(name=f"fer-lab:{spec.name}", max_retries=0, **self.resources)
        self._pending[task.remote(asdict(spec))] = (spec, Path(out_dir))
        self.log(f"ray: submitted {spec.name}")

    def next_finished(self) -> VariantOutcome:
        """Wait for any submitted variant to end; write its reports and return how it went."""
        ray = self._ray
        (ref,), _ = ray.wait(list(self._pending), num_returns=1)
        spec, out_dir = self._pending.pop(ref)
        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as failure:  # the task itself died (node lost, worker crashed, cancelled)
            return VariantOutcome(spec.name, None, error=one_line(failure))
        return _outcome(spec.name, payload, out_dir)

    def cancel_all(self) -> None:
        """Cancel every unfinished variant and give each a moment to end its runs KILLED."""
        ray = self._ray
        self.log(f"ray: cancelling {len(self._pending)} unfinished variant(s)")
        for ref in self._pending:
            ray.cancel(ref)
        ray.wait(list(self._pending), num_returns=len(self._pending), timeout=_STOP_GRACE_S + 10)
        self._pending.clear()


class LocalExecutor:
    """The same interface, one variant after another in this process (no Ray)."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self._queue: list[tuple[VariantSpec, Path]] = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *_: Any) -> None:
        self._queue.clear()

    @property
    def pending(self) -> int:
        """Variants submitted and not yet run."""
        return len(self._queue)

    def submit(self, spec: VariantSpec, out_dir: Path) -> None:
        """Queue `spec`; it runs when `next_finished` is called."""
        self._queue.append((spec, Path(out_dir)))

    def next_finished(self) -> VariantOutcome:
        """Run the oldest queued variant here and return how it went."""
        spec, out_dir = self._queue.pop(0)
        started = time.time()
        result = _run_spec(spec, out_dir, self.log)
        return VariantOutcome(spec.name, result, started=started, finished=time.time(), node=socket.gethostname())


def _run_spec(spec: VariantSpec, out_dir: Path, log: Callable[[str], None]) -> PipelineResult:
    from fer_lab.pipeline import runner

    return runner.run_pipeline(data_dir=spec.data_dir, params_files=spec.params_files, overrides=spec.overrides,
                               only=spec.only or None, out_dir=out_dir, tags=spec.tags, log=log,
                               notebooks_dir=Path(spec.notebooks_dir) if spec.notebooks_dir else project.NOTEBOOKS_DIR)


def _variant_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Ray task body: run the variant in a child process; return its result and report files.

    A cancel arrives as KeyboardInterrupt: the child gets SIGINT, ends its MLflow runs KILLED, and the
    interrupt goes on to Ray.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"fer-lab-{spec['name']}-") as tmp:
        spec_file, result_file, out_dir = Path(tmp) / "spec.json", Path(tmp) / "result.json", Path(tmp) / "report"
        spec_file.write_text(json.dumps(spec))
        child = subprocess.Popen([sys.executable, "-m", "fer_lab.pipeline.cluster", str(spec_file), str(result_file),
                                  str(out_dir)], cwd=project.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1)
        tail: list[str] = []
        try:
            for line in child.stdout or ():
                print(f"[{spec['name']}] {line.rstrip()}", flush=True)
                tail = [*tail[-19:], line.rstrip()]
            child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
        payload: dict[str, Any] = {"started": started, "finished": time.time(), "node": socket.gethostname(),
                                   "returncode": child.returncode, "tail": tail, "files": {}}
        if result_file.is_file():
            payload["result"] = json.loads(result_file.read_text())
        if out_dir.is_dir():
            payload["files"] = {str(path.relative_to(out_dir)): path.read_bytes()
                                for path in out_dir.rglob("*") if path.is_file()}
        return payload


def _outcome(name: str, payload: dict[str, Any], out_dir: Path) -> VariantOutcome:
    """Write a finished task's report files under `out_dir` and rebuild its result with paths there."""
    for relative, content in payload["files"].items():
        write_atomic(out_dir / relative, content)
    times = {"started": payload["started"], "finished": payload["finished"], "node": payload["node"]}
    found = payload.get("result")
    if found is None:
        last = next((line for line in reversed(payload["tail"]) if line.strip()), "")
        return VariantOutcome(name, None, error=f"exit code {payload['returncode']}: {last}", **times)
    return VariantOutcome(name, PipelineResult.from_dict(found, out_dir), error=found.get("error", ""), **times)


def _child_main(spec_file: str, result_file: str, out_dir: str) -> int:
    """The child process: run the spec's pipeline and write its result as JSON (paths relative to `out_dir`)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    fields = json.loads(Path(spec_file).read_text())
    spec = VariantSpec(**{**fields, "params_files": tuple(fields["params_files"]), "only": tuple(fields["only"])})
    os.environ.update(spec.env)
    try:
        result = _run_spec(spec, Path(out_dir), print)
    except KeyboardInterrupt:
        return 130
    except Exception as failure:  # a bad parameter is this variant's failure, reported on the driver
        print(f"error: {one_line(failure)}", flush=True)
        return 2
    Path(result_file).write_text(json.dumps(result.to_dict()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:4]))
