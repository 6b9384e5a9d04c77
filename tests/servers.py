"""Real servers for the slow tests: a Prefect server, PostgreSQL, an MLflow tracking server,
a two-node Ray cluster. Each runs as its own process group on 127.0.0.1 on a free port,
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

from tests.e2e_util import REPO, cli_env

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
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
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


def _own_ray_pids(marker: str) -> list[int]:
    """PIDs of processes whose command line names this cluster's temp dir (ours only)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
    return [p for p in pids if p != os.getpid()]


@contextlib.contextmanager
def ray_cluster(tmp: Path, cpus_per_node: int = 1):
    """A Ray head and a second Ray node, separate `ray start --block` processes on 127.0.0.1,
    each with its own temp dir; yields (address, [head_dir, worker_dir]). Stopped by killing
    these process groups and any process naming our temp dirs (never `ray stop`, which would
    take down every Ray on the machine)."""
    import tempfile
    port = free_port()
    # Ray's socket paths must stay short: temp dirs directly under /tmp
    dirs = [Path(tempfile.mkdtemp(prefix=f"ffray{i}-")) for i in range(2)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    common = ["--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats", "--block"]
    head = Proc([str(BIN / "ray"), "start", "--head", "--port", str(port), "--temp-dir", str(dirs[0]),
                 "--include-dashboard", "false",
                 "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                 "--min-worker-port", "0", "--max-worker-port", "0", *common],
                tmp / "ray-head.log", env)
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        for _ in range(2):       # `ray start` gives its raylet a fixed 30 s: retry once when loaded
            try:
                _wait_nodes(address, 1, head)
                break
            except AssertionError:
                if head.alive():
                    raise
                head = Proc(head.cmd, tmp / "ray-head-2.log", env)
                procs.append(head)
        worker_cmd = [str(BIN / "ray"), "start", "--address", address, "--temp-dir", str(dirs[1]),
                      "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                      "--min-worker-port", "0", "--max-worker-port", "0", *common]
        for i in range(2):
            procs.append(Proc(worker_cmd, tmp / f"ray-worker-{i}.log", env))
            try:
                _wait_nodes(address, 2, procs[-1])
                break
            except AssertionError:
                if procs[-1].alive() or i == 1:
                    raise
        print(f"[servers] Ray cluster {address}: 2 nodes x {cpus_per_node} CPU")
        yield address, dirs
    finally:
        for p in reversed(procs):
            p.stop(signal.SIGTERM, timeout=30)
        for d in dirs:
            for pid in _own_ray_pids(str(d)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def _wait_nodes(address: str, n: int, proc: Proc, timeout: float = 420) -> None:
    """Wait until the cluster has ``n`` alive nodes (asked from a short-lived subprocess,
    so this test process never joins the cluster)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False);"
            "print(sum(x['Alive'] for x in ray.nodes()))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.alive(), proc.tail()
        try:
            r = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                               timeout=120, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        except subprocess.TimeoutExpired:
            continue
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(3)
    raise AssertionError(f"Ray cluster at {address} never had {n} nodes:\n{proc.tail()}")


def ray_node_work(temp_dir: Path) -> set[str]:
    """Names of the tasks and actors whose output Ray's workers on this node wrote to their
    logs (each task/actor start writes a ``:task_name:``/``:actor_name:`` line)."""
    names = set()
    for f in temp_dir.glob("session_*/logs/worker-*.out"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith((":task_name:", ":actor_name:")):
                names.add(line.split(":", 2)[2].strip())
    return names
