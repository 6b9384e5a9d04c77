"""Deployments of the ``end_to_end`` flow: scheduled runs on a Prefect server.

Three ways, all against the server at ``PREFECT_API_URL`` (a deployment on the embedded,
ephemeral API would vanish with the process, so one is required):

- ``forgeflow deploy``: register every deployment of ``deploy/prefect.yaml`` (Prefect's own
  ``prefect deploy --all``, after checking each deployment's spec and creating its work
  pool when missing). A ``prefect worker start --pool forgeflow-process`` runs them.
- ``forgeflow deploy SPEC --cron/--interval``: register one deployment of one spec on a
  process work pool; parameters = absolute spec path + overrides + workdir.
- ``forgeflow serve SPEC --cron/--interval``: create the deployment and run its scheduled
  runs from this process (Prefect's ``flow.serve``; no work pool, no worker). Each run is
  a subprocess of the server process, as with a worker.

The flow is referenced by module path (``flows.end_to_end.end_to_end``), so the process
that runs it imports this checkout (installed with ``pip install -e .``, or PYTHONPATH).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
ENTRYPOINT = "flows.end_to_end.end_to_end"


class DeployError(RuntimeError):
    """A deployment that cannot be registered: the message says what to fix."""


def require_server() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise DeployError("PREFECT_API_URL is not set: deployments live on a Prefect server "
                          "(start one with `prefect server start`, or `docker compose -f "
                          "deploy/docker-compose.yml up -d`, then "
                          "export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    return url


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``6h``, ``7d`` -> a timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise DeployError(f"--interval {text!r}: expected a positive number of seconds or "
                          "a duration such as 90s, 15m, 6h, 7d")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])


def schedules(cron: str | None = None, interval: str | None = None,
              timezone: str = "UTC") -> list:
    """Prefect schedule objects for ``--cron`` / ``--interval`` (both may be given)."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    out = []
    if cron:
        try:
            out.append(CronSchedule(cron=cron, timezone=timezone))
        except ValueError as exc:
            raise DeployError(f"--cron {cron!r}: {exc}") from None
    if interval:
        out.append(IntervalSchedule(interval=parse_interval(interval)))
    return out


def spec_parameters(config: str, overrides: list[str], workdir: str | None):
    """Flow parameters for one spec: validated now, so a bad spec fails at deploy time
    rather than at 3 a.m. Paths are absolute: the run's process may start elsewhere."""
    from pipeline.plan import build_plan
    from pipeline.spec import load_spec
    spec = load_spec(config, overrides)
    build_plan(spec)
    wd = Path(workdir or spec.run.workdir).resolve()     # as `forgeflow run` resolves it
    return {"config": str(Path(config).resolve()), "overrides": list(overrides),
            "workdir": str(wd)}, spec


def serve_spec(config: str, overrides: list[str], workdir: str | None = None,
               name: str | None = None, cron: str | None = None, interval: str | None = None,
               timezone: str = "UTC", limit: int | None = 1) -> None:
    """Create the deployment of one spec and run its scheduled runs from this process
    until interrupted (Ctrl-C pauses the schedule)."""
    require_server()
    params, spec = spec_parameters(config, overrides, workdir)
    from prefect import serve
    from prefect.deployments.runner import EntrypointType
    from flows.end_to_end import end_to_end
    # to_deployment + serve (not flow.serve): each run is `python -m prefect.engine` importing
    # the module entrypoint, as under a worker (flow.serve would cloudpickle the flow by value)
    deployment = end_to_end.to_deployment(
        name=name or spec.run.name, parameters=params,
        schedules=schedules(cron, interval, timezone) or None,
        description=f"forgeflow run {params['config']} {' '.join(overrides)}".strip(),
        tags=["forgeflow", spec.run.name], entrypoint_type=EntrypointType.MODULE_PATH)
    serve(deployment, limit=limit)


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create the work pool when missing; True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
        except ObjectAlreadyExists:
            return False
    return True


def deploy_spec(config: str, overrides: list[str], workdir: str | None = None,
                name: str | None = None, cron: str | None = None, interval: str | None = None,
                timezone: str = "UTC", pool: str = "forgeflow-process") -> str:
    """Register one spec's deployment on a process work pool; returns its id."""
    require_server()
    params, spec = spec_parameters(config, overrides, workdir)
    ensure_work_pool(pool)
    from prefect.deployments.runner import EntrypointType
    from flows.end_to_end import end_to_end
    dep_id = end_to_end.deploy(
        name=name or spec.run.name, work_pool_name=pool, build=False, push=False,
        parameters=params, schedules=schedules(cron, interval, timezone) or None,
        description=f"forgeflow run {params['config']} {' '.join(overrides)}".strip(),
        tags=["forgeflow", spec.run.name], entrypoint_type=EntrypointType.MODULE_PATH,
        print_next_steps=False)
    return str(dep_id)


def check_prefect_file(path: Path) -> list[dict]:
    """The deployments of a prefect.yaml, each spec loaded with its overrides; a bad one
    is an error naming the file, the deployment and the problem."""
    from pipeline.plan import build_plan
    from pipeline.spec import SpecError, load_spec
    if not path.exists():
        raise DeployError(f"{path}: no such file")
    doc = yaml.safe_load(path.read_text()) or {}
    deployments = doc.get("deployments") or []
    if not deployments:
        raise DeployError(f"{path}: no `deployments:` list")
    home = Path(os.environ.get("FORGEFLOW_HOME") or REPO)
    for d in deployments:
        params = d.get("parameters") or {}
        if "config" not in params:
            raise DeployError(f"{path}: deployment {d.get('name')!r} has no parameters.config")
        cfg = Path(params["config"])
        cfg = cfg if cfg.is_absolute() else home / cfg
        try:
            build_plan(load_spec(cfg, params.get("overrides") or []))
        except (SpecError, OSError) as exc:
            raise DeployError(f"{path}: deployment {d.get('name')!r}: {exc}") from None
    return deployments


def deploy_file(prefect_file: Path | str = DEFAULT_PREFECT_FILE,
                names: list[str] | None = None) -> int:
    """Register the deployments of a prefect.yaml with Prefect's ``prefect deploy``."""
    require_server()
    path = Path(prefect_file).resolve()
    deployments = check_prefect_file(path)
    wanted = [d for d in deployments if not names or d["name"] in names]
    missing = sorted(set(names or []) - {d["name"] for d in deployments})
    if missing:
        raise DeployError(f"{path}: no deployment named {missing}; "
                          f"it has {[d['name'] for d in deployments]}")
    for pool in sorted({(d.get("work_pool") or {}).get("name") for d in wanted} - {None}):
        if ensure_work_pool(pool):
            print(f"created work pool {pool!r} (type process)")
    home = os.environ.get("FORGEFLOW_HOME") or str(REPO)     # the pull step's working directory
    env = {**os.environ, "FORGEFLOW_HOME": home}
    cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy",
           "--prefect-file", str(path)]
    cmd += ["--all"] if not names else [a for n in names for a in ("--name", n)]
    # entrypoints in prefect.yaml are relative to the project root
    return subprocess.run(cmd, cwd=home, env=env).returncode
