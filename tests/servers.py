"""Real servers for the slow tests: a Prefect server, PostgreSQL, an MLflow tracking server,
Each runs as its own process group on 127.0.0.1 on a free port,
with its state in a tmp directory, and is stopped by its process group id when the
context exits (never by name: other people's servers on this machine stay up)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e_util import REPO, cli_env, run_cli

BIN = Path(sys.executable).parent
CACHE = REPO / ".cache"            # git-ignored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server process in its own session; its output goes to ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None, cwd: Path = REPO):
        self.cmd, self.log = cmd, log
        self._fh = open(log, "w")
        self.popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._fh.close()


def wait_http(url: str, proc: Proc, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.cmd[0]} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} not healthy after {timeout:.0f}s:\n{proc.tail()}")


def _sqlalchemy_overlay() -> str | None:
    """Prefect 3.8.8's scheduler cannot insert scheduled flow runs under SQLAlchemy 2.1
    (the bulk insert carries the ``state`` hybrid: "Can't evaluate bulk DML statement").
    constraints.txt pins 2.0; a venv that still has 2.1 gets 2.0 for the Prefect server
    process only, from a git-ignored overlay directory."""
    import sqlalchemy
    if tuple(int(x) for x in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
        return None
    overlay = CACHE / "sqlalchemy-2.0"
    if not (overlay / "sqlalchemy").is_dir():
        proc = subprocess.run([str(BIN / "pip"), "install", "-q", "--no-deps", "--target",
                               str(overlay), "SQLAlchemy==2.0.58"], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip("SQLAlchemy 2.1 is installed (Prefect 3.8.8's scheduler fails on it) and "
                        f"SQLAlchemy 2.0 could not be installed beside it: {proc.stderr[-500:]}")
    print(f"[servers] Prefect server runs with SQLAlchemy 2.0 from {overlay} "
          f"(this venv has {sqlalchemy.__version__}; reinstall with constraints.txt)")
    return str(overlay)


def prefect_env(home: Path, api_url: str | None = None) -> dict:
    env = cli_env(home)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextlib.contextmanager
def prefect_server(tmp: Path):
    """``prefect server start`` with its own PREFECT_HOME (SQLite); yields the API URL.
    The scheduler loop runs every 2 s so an interval schedule fires within the test."""
    home = tmp / "prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = prefect_env(home)
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"
    overlay = _sqlalchemy_overlay()
    if overlay:
        env["PYTHONPATH"] = os.pathsep.join([overlay, env["PYTHONPATH"]])
    proc = Proc([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                 "--port", str(port)], home / "server.log", env)
    try:
        url = f"http://127.0.0.1:{port}/api"
        wait_http(f"{url}/health", proc)
        yield url, proc
    finally:
        proc.stop()


def tiny_spec(tmp: Path, name: str = "tiny", extra: str = "") -> Path:
    """The smallest whole pipeline: the repo's own stage READMEs as paragraphs (real
    prose, no download), no filters, a 300-token BPE, a 2-step 1-layer model."""
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"""\
run: {{name: {name}, num_cpus: 1}}
sources:
  - {{name: docs, type: text, paths: ["{REPO}/pipeline/*/README.md"], text_unit: paragraph}}
filters: {{steps: []}}
tokenize: {{tokenizer: {{vocab_size: 300, sample_docs: 200}}, val_fraction: 0.2}}
train:
  model: {{d_model: 16, n_layers: 1, n_heads: 2, seq_len: 32}}
  steps: 2
  batch_size: 2
  num_workers: 0
  eval_every: 0
  checkpoint_every: 0
evaluate: {{max_tokens_per_source: 500}}
{extra}""")
    return spec


def flow_runs(api_url: str, deployment_id: str | None = None) -> list[dict]:
    body: dict = {"limit": 50, "sort": "EXPECTED_START_TIME_ASC"}
    if deployment_id:
        body["deployments"] = {"id": {"any_": [deployment_id]}}
    r = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def cli(*args: str, env: dict, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`forgeflow ARGS` in a subprocess with exactly ``env``."""
    proc = run_cli([sys.executable, "-m", "flows.cli", *args], env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"forgeflow {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


PG_BIN = Path("/usr/lib/postgresql")
PG_PASSWORD = "p@ss:w/rd%1"          # needs URL-encoding in the backend URI, as in deploy/.env


def _pg_bin() -> Path | None:
    for d in sorted(PG_BIN.glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (Debian's `postgresql` binaries), with a
    password-protected `forgeflow` user and an `mlflow` database; yields the SQLAlchemy URI,
    or None (with the reason printed) where PostgreSQL is not installed.
    As root, the cluster runs as the `postgres` system user (initdb refuses root)."""
    import tempfile
    from urllib.parse import quote
    bindir = _pg_bin()
    if bindir is None:
        print("[servers] PostgreSQL binaries not found (apt-get install postgresql): SQLite fallback")
        yield None
        return
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="forgeflow-pg-"))
    if os.geteuid() == 0:
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            print("[servers] running as root without a `postgres` user: SQLite fallback")
            shutil.rmtree(root, ignore_errors=True)
            yield None
            return
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=300)  # noqa: E731
    try:
        r = run(str(bindir / "initdb"), "-D", str(data), "-U", "forgeflow", "--pwfile", str(pwfile),
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        assert r.returncode == 0, f"initdb failed:\n{r.stdout}\n{r.stderr}"
        r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "-t", "300",
                "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert r.returncode == 0, f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n" + \
            (root / "pg.log").read_text(errors="replace")[-3000:]
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        r = subprocess.run([*as_user, "env", f"PGPASSWORD={PG_PASSWORD}", str(bindir / "createdb"),
                            "-h", "127.0.0.1", "-p", str(port), "-U", "forgeflow", "mlflow"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, f"createdb failed:\n{r.stderr}"
        print(f"[servers] PostgreSQL {bindir.parent.name} on 127.0.0.1:{port}")
        yield f"postgresql+psycopg2://forgeflow:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():      # stops this cluster's postmaster only
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(tmp: Path):
    """``mlflow server --serve-artifacts`` on PostgreSQL (SQLite where PostgreSQL cannot be
    had, said in the output); yields (url, artifacts_destination, backend)."""
    tmp.mkdir(parents=True, exist_ok=True)
    with postgres() as pg_uri:
        backend = pg_uri or f"sqlite:///{tmp / 'mlflow-server.db'}"
        kind = "postgresql" if pg_uri else "sqlite"
        print(f"[servers] MLflow server backend store: {kind}")
        artifacts = tmp / "server-artifacts"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        proc = Proc([str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
                     "--serve-artifacts", "--artifacts-destination", str(artifacts),
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    tmp / "mlflow-server.log", env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", proc)
            yield url, artifacts, kind
        finally:
            proc.stop()
