"""The team tracking server: `mlflow server` over a PostgreSQL database, both run from a project folder.

`start` initialises a PostgreSQL cluster under `services/postgres` (Debian's `postgresql` binaries; no
system service), starts it on its own port, creates the `mlflow` and `optuna` databases and starts
`mlflow server` with that backend and a folder (or an S3-compatible bucket) as artifact root. What it
started is written to `services/server.json`, which `stop` reads to stop exactly those processes and
the sweeps read to find the Optuna database. PostgreSQL refuses to run as root, so as root its commands
run as the `postgres` user the package creates.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from fer_lab import project
from fer_lab._shared import write_atomic
from fer_lab.errors import ConfigError

SERVICES_DIR = project.ROOT / "services"
STATE_FILE = "server.json"
DB_USER = "fer_lab"
DATABASES = ("mlflow", "optuna")
_START_TIMEOUT_S = 300  # its first start creates the tables: minutes on a busy machine


@dataclass(frozen=True)
class ServerState:
    """What `start` started: the URIs clients use and the processes `stop` ends."""

    tracking_uri: str
    optuna_storage: str
    backend_store_uri: str
    artifacts: str
    mlflow_pid: int
    pg_data: str
    pg_port: int


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin(tool: str) -> Path:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin.

    Raises:
        ConfigError: PostgreSQL is not installed.
    """
    found = shutil.which(tool)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda path: int(path.parts[-3]))
    if not versions:
        raise ConfigError(f"PostgreSQL's {tool} not found: install Debian's postgresql (apt-get install -y postgresql)")
    return versions[-1]


def read_state(services_dir: Path = SERVICES_DIR) -> ServerState | None:
    """The running server's state from `services_dir`, None when none was started there."""
    path = services_dir / STATE_FILE
    return ServerState(**json.loads(path.read_text())) if path.is_file() else None


def start(services_dir: Path = SERVICES_DIR, port: int = 5000, pg_port: int | None = None, host: str = "127.0.0.1",
          artifacts: str = "", log=print) -> ServerState:
    """Start PostgreSQL and an MLflow server on it (initialising the cluster the first time).

    Args:
        services_dir: The git-ignored folder holding the cluster, logs, artifacts and state.
        port: The MLflow server's port.
        pg_port: PostgreSQL's port (default: a free one).
        host: The address both listen on; anything but loopback lets other machines connect
            (PostgreSQL then asks for the password kept in the state file).
        artifacts: Artifact root: a folder (default services/artifacts) or an `s3://bucket/path` URI
            (with MLFLOW_S3_ENDPOINT_URL and AWS_* credentials set for an S3-compatible store).
        log: Called with one line per step.

    Returns:
        The state written to services/server.json.

    Raises:
        ConfigError: PostgreSQL is missing, a server is already running there, or it does not start.
    """
    services_dir = project.resolve(services_dir)
    running = read_state(services_dir)
    if running is not None and _alive(running.mlflow_pid):
        raise ConfigError(f"a server is already running from {services_dir} ({running.tracking_uri}): "
                          "`make server-stop` first")
    pg_data = services_dir / "postgres"
    pg_port = pg_port or free_port()
    password_file = services_dir / "db-password"
    if not (pg_data / "PG_VERSION").is_file():
        _init_cluster(services_dir, pg_data, password_file, host, log)
    password = password_file.read_text().strip()
    _as_postgres([postgres_bin("pg_ctl"), "-D", pg_data, "-l", pg_data / "server.log", "-w", "-t", "60", "-o",
                  f"-p {pg_port} -k {pg_data} -c listen_addresses={_pg_listen(host)}", "start"])
    log(f"postgresql: {pg_data} on port {pg_port}")
    for database in DATABASES:
        exists = _as_postgres([postgres_bin("psql"), "-h", pg_data, "-p", str(pg_port), "-U", DB_USER, "-d", "postgres",
                               "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"], capture=True)
        if exists.strip() != "1":
            _as_postgres([postgres_bin("createdb"), "-h", pg_data, "-p", str(pg_port), "-U", DB_USER, database])
    db_host = "127.0.0.1" if _is_loopback(host) else socket.getfqdn()
    backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/mlflow"
    artifacts = artifacts or str(services_dir / "artifacts")
    log_file = services_dir / "mlflow.log"
    with open(log_file, "ab") as output:
        # A session of its own: `stop` ends the server and its workers as one process group.
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend, "--artifacts-destination", artifacts],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PGPASSWORD": password})  # libpq reads it: no password on the command line
    uri = f"http://{'127.0.0.1' if _is_loopback(host) or host == '0.0.0.0' else host}:{port}"
    state = ServerState(uri, f"postgresql+psycopg2://{DB_USER}:{password}@{db_host}:{pg_port}/optuna", backend,
                        artifacts, server.pid, str(pg_data), pg_port)
    write_atomic(services_dir / STATE_FILE, json.dumps(asdict(state), indent=1))
    os.chmod(services_dir / STATE_FILE, 0o600)
    deadline = time.time() + _START_TIMEOUT_S
    while time.time() < deadline:
        if server.poll() is not None:
            stop(services_dir, log=lambda *_: None)
            raise ConfigError(f"mlflow server exited during start-up (code {server.returncode}): see {log_file}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        stop(services_dir, log=lambda *_: None)
        raise ConfigError(f"mlflow server did not answer within {_START_TIMEOUT_S} s: see {log_file}")
    log(f"mlflow server: {uri} (PostgreSQL backend, artifacts in {artifacts})")
    return state


def stop(services_dir: Path = SERVICES_DIR, log=print) -> bool:
    """Stop the MLflow server and PostgreSQL started from `services_dir`; False when nothing was running."""
    services_dir = project.resolve(services_dir)
    state = read_state(services_dir)
    if state is None:
        log(f"no server was started from {services_dir}")
        return False
    if _alive(state.mlflow_pid):
        os.killpg(state.mlflow_pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(state.mlflow_pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(state.mlflow_pid, signal.SIGKILL)
    log("mlflow server stopped")
    if (Path(state.pg_data) / "postmaster.pid").is_file():
        _as_postgres([postgres_bin("pg_ctl"), "-D", state.pg_data, "-m", "fast", "-w", "stop"])
        log("postgresql stopped")
    (services_dir / STATE_FILE).unlink()
    return True


def _init_cluster(services_dir: Path, pg_data: Path, password_file: Path, host: str, log) -> None:
    """A new PostgreSQL cluster owned by the user it will run as, password-protected over TCP."""
    pg_data.mkdir(parents=True, exist_ok=True)
    password_file.write_text(secrets.token_urlsafe(18))
    owner = _postgres_user()
    if owner:
        shutil.chown(pg_data, owner, owner)
        shutil.chown(password_file, owner, owner)
    os.chmod(password_file, 0o600)
    if owner and subprocess.run(["runuser", "-u", owner, "--", "test", "-w", str(pg_data)]).returncode != 0:
        raise ConfigError(f"PostgreSQL runs as {owner}, who cannot write {pg_data}: make the folders above it "
                          "searchable (chmod o+x) or pass --dir somewhere they are")
    _as_postgres([postgres_bin("initdb"), "-D", pg_data, "-U", DB_USER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8"], capture=True)
    if not _is_loopback(host):
        with open(pg_data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    log(f"postgresql: initialised a cluster in {pg_data}")


def _postgres_user() -> str:
    """The user PostgreSQL runs as: `postgres` when we are root (initdb refuses root), else nobody else."""
    return "postgres" if os.geteuid() == 0 else ""


def _as_postgres(command: list, capture: bool = False) -> str:
    user = _postgres_user()
    prefix = ["runuser", "-u", user, "--"] if user else []
    done = subprocess.run([*prefix, *map(str, command)], capture_output=True, text=True)
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())[-300:]
        raise ConfigError(f"{Path(str(command[0])).name} failed: {message}")
    return done.stdout


def _pg_listen(host: str) -> str:
    return "127.0.0.1" if _is_loopback(host) else ("*" if host == "0.0.0.0" else host)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def _alive(pid: int) -> bool:
    try:  # reap it first when it is our own child (a server started in this process), else it stays a zombie
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
