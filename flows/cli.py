"""The ``forgeflow`` command.

    forgeflow run CONFIG [key=value ...] [--workdir DIR] [--until STAGE] [--verbose]
                                                            run the pipeline (Prefect flow)
    forgeflow validate CONFIG [key=value ...] [--until STAGE]  check the spec, print the plan
    forgeflow sweep CONFIG [key=value ...] [--workdir DIR]  run the spec's sweep: trials as subflows
    forgeflow compare SWEEP|EXPERIMENT|RUN... [--csv F]     varied params vs metrics, best marked
    forgeflow schema                                        JSON Schema of the spec
    forgeflow inspect ARTIFACT|STAGE [--reason R] [-n N]    removed documents by reason
    forgeflow artifacts [--workdir DIR]                     committed artifacts and their lineage
    forgeflow verify [--workdir DIR] [--deep] [--quarantine]  check artifacts against their manifests
    forgeflow gc [--workdir DIR] [--keep-runs N] [--dry-run]  remove what no recent run uses
    forgeflow ui [--workdir DIR]                            Prefect + MLflow UIs on 127.0.0.1
    forgeflow deploy [CONFIG [key=value ...] --cron/--interval]  register deployments (PREFECT_API_URL)
    forgeflow serve CONFIG [key=value ...] --cron/--interval     serve a scheduled deployment here

Prefect is imported only by ``run`` (after PREFECT_HOME is set to the workdir's store),
so validate/schema/inspect are fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _workdir(args, spec=None) -> Path:
    wd = args.workdir or (spec.run.workdir if spec is not None else "work")
    return Path(wd).resolve()


def prefect_env(workdir: Path) -> None:
    """Embedded default: Prefect's local API on SQLite inside the workdir.

    A PREFECT_API_URL (a running server) or an explicit PREFECT_HOME wins."""
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        seed_prefect_db(Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's 20 s default for its ephemeral API server to come up fails whole runs on
    # a loaded machine (seen: 2 cores, load 40); a healthy start takes a few seconds.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


PREFECT_UI_FALLBACK = "http://127.0.0.1:4200"     # where `forgeflow ui` serves the Prefect UI


class EmbeddedPrefectAPI:
    """Prefect's temporary API server for a run without PREFECT_API_URL, started by
    forgeflow itself before Prefect is imported.

    It is the server Prefect would start (uvicorn serving ``create_app`` in a subprocess,
    as ``SubprocessASGIServer`` runs it, UI off). Prefect starts it lazily, on the flow's
    first API call, after this process has imported the flow; and reaching that code
    imports ``prefect.server`` here too (6.5 s on an idle 2-core machine, though a client
    needs none of it). Spawned here, the server imports itself while this process imports
    the flow, and Prefect finds it through ``PREFECT_API_URL``: an all-cached run pays
    the server's start-up once instead of the two imports one after the other. The flow-run
    links still point at ``forgeflow ui`` (``PREFECT_UI_URL``), not at this port."""

    def __init__(self, log_path: Path | None = None):
        self.log_path = log_path
        self.env = dict(os.environ, PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1",
                        PREFECT__SERVER_FINAL="1")
        self.proc: subprocess.Popen | None = None
        os.environ.setdefault("PREFECT_UI_URL", PREFECT_UI_FALLBACK)
        self._spawn()
        # stopped at exit, after Ray's shutdown (registered later, so run first), as
        # Prefect orders its own server: stopped before it, a run that had started Ray
        # hung 60 s at exit until Ray gave up on its GCS
        import atexit
        atexit.register(self.stop)

    @classmethod
    def start(cls, log_path: Path | None = None) -> "EmbeddedPrefectAPI | None":
        """Spawn the server (returns at once), or None where PREFECT_API_URL names one."""
        return None if os.environ.get("PREFECT_API_URL") else cls(log_path)

    def _spawn(self) -> None:
        """Start the server on a free port of 127.0.0.1 and point Prefect at it."""
        import importlib.util
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        os.environ["PREFECT_API_URL"] = self.api_url
        _refresh_prefect_settings()
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        out = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if out is not subprocess.DEVNULL:
            out.close()

    def wait_ready(self, attempts: int = 3) -> None:
        """Block until the server answers /health; a start that times out or dies (a loaded
        machine can miss even a generous timeout once) is retried, then an error."""
        import httpx
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 300))
        log = logging.getLogger("forgeflow")
        for attempt in range(1, attempts + 1):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(f"{self.api_url}/health", timeout=10).status_code == 200:
                        log.debug("embedded Prefect API on %s", self.api_url)
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                   else f"did not answer in {timeout:.0f} s")
            self.stop()
            if attempt == attempts:
                raise RuntimeError(f"the embedded Prefect API on {self.api_url} {why} "
                                   f"({attempts} attempts; its output is in {self.log_path})")
            log.warning("embedded Prefect API %s (attempt %d/%d); retrying", why, attempt, attempts)
            time.sleep(2 * attempt)
            self._spawn()                 # on another free port (this one may have been taken)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _refresh_prefect_settings() -> None:
    """Prefect snapshots its settings from the environment when it is imported; where it
    already is (a second command in one process), make it read the environment again."""
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


def _open_tracking_store(spec, workdir: Path) -> None:
    """Open the run's local (SQLite) MLflow store in a thread, beside the Prefect API's
    start-up (``pipeline.tracking.open_store``); errors are left to the run's own first
    MLflow call, which reports them."""
    import threading

    def work():
        try:
            from pipeline.tracking import open_store, resolve_tracking_uri
            uri = resolve_tracking_uri(spec.run.tracking_uri, workdir)
            if uri.startswith("sqlite:///"):
                open_store(uri)
        except Exception:
            logging.getLogger("forgeflow").debug("opening the MLflow store ahead failed",
                                                 exc_info=True)
    threading.Thread(target=work, name="forgeflow-mlflow-store", daemon=True).start()


def _orchestrate(what: str, log_path: Path, target: str, *args, tracking_of=None, **kwargs):
    """Spawn the embedded Prefect API, import ``target`` ("module:function", a flow or what
    runs one: importing it imports Prefect) and open the MLflow store of ``tracking_of``
    (spec, workdir) while the API starts, quiet the console handlers Prefect installed on
    import, wait for the API and call ``target`` with ``args``/``kwargs``. Returns
    (result, 0) or (None, exit code): a spec error 2 and an empty stage output 1, each as
    one line naming the log file; anything else 1, its traceback in the log."""
    from pipeline.checks import EmptyOutputError
    from pipeline.logs import quiet_library_handlers
    from pipeline.spec import SpecError
    log = logging.getLogger("forgeflow")
    api = None
    try:
        api = EmbeddedPrefectAPI.start(log_path)
        if tracking_of is not None:
            _open_tracking_store(*tracking_of)
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        quiet_library_handlers()       # Prefect's own console handlers, now that it is imported
        if api is not None:
            api.wait_ready()
        return fn(*args, **kwargs), 0
    except (SpecError, EmptyOutputError) as exc:
        log.debug("%s failed", what, exc_info=True)
        print(f"\nerror: {exc}\n(full log: {log_path})", file=sys.stderr)
        return None, 2 if isinstance(exc, SpecError) else 1
    except Exception:
        log.exception("%s failed (full log: %s)", what, log_path)
        return None, 1


# Builds a migrated Prefect database with its block types registered (what the ephemeral
# server does to an empty database on its first start) and writes a clean copy to argv[1].
_PREFECT_TEMPLATE = r"""
import asyncio, sqlite3, sys
import prefect.plugins
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def main():
    db = provide_database_interface()
    await db.create_db()
    prefect.plugins.load_prefect_collections()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)
        await session.commit()

asyncio.run(main())
from prefect.settings import PREFECT_HOME
sqlite3.connect(str(PREFECT_HOME.value() / "prefect.db")).execute("VACUUM INTO ?", (sys.argv[1],))
"""


def seed_prefect_db(home: Path) -> None:
    """Start a new workdir's Prefect store from a template database.

    On an empty database the ephemeral API server runs every Alembic migration and
    registers Prefect's block types before the flow can start (~10 CPU-seconds, on every
    fresh workdir: each cold run, each test). The result depends only on the Prefect
    installation, so it is built once into the user cache and copied; a template that
    cannot be built is skipped (Prefect then migrates as before)."""
    import hashlib
    import shutil
    import tempfile
    from importlib.metadata import distributions

    db = home / "prefect.db"
    if db.exists():
        return
    from pipeline.store import user_cache_dir
    versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()
                      if (d.metadata["Name"] or "").lower().startswith("prefect"))
    key = hashlib.sha256("\n".join([sys.prefix, *versions]).encode()).hexdigest()[:16]
    template = user_cache_dir() / "prefect" / key / "prefect.db"
    try:
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
                env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
                env.update(PREFECT_HOME=tmp, PREFECT_SERVER_ANALYTICS_ENABLED="false")
                subprocess.run([sys.executable, "-c", _PREFECT_TEMPLATE, f"{tmp}/template.db"],
                               env=env, check=True, capture_output=True, timeout=600)
                os.replace(f"{tmp}/template.db", template)
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, f"{db}.tmp")
        os.replace(f"{db}.tmp", db)
    except (OSError, subprocess.SubprocessError) as exc:
        logging.getLogger("forgeflow").warning("no Prefect template database (%s); the "
                                               "Prefect server migrates a new one", exc)


def _load(args):
    from pipeline.spec import SpecError, load_spec
    try:
        return load_spec(args.config, args.overrides)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_validate(args) -> int:
    from pipeline.plan import build_plan, prefix_until
    from pipeline.spec import SpecError
    spec = _load(args)
    try:
        plan = prefix_until(build_plan(spec), args.until)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from pipeline.runner import plan_identities
    ids = plan_identities(plan)
    if args.json:
        print(json.dumps({"stages": [{"key": n.key, "stage": n.stage, "identity": ids[n.key],
                                      "inputs": n.inputs} for n in plan]}, indent=1))
        return 0
    print(f"spec OK: {args.config} ({len(spec.sources)} source(s), {len(plan)} stage(s))")
    for node in plan:
        deps = ", ".join(node.inputs.values()) or "-"
        print(f"  {node.key:<24} {ids[node.key][:12]}  <- {deps}")
    return 0


def cmd_schema(args) -> int:
    from pipeline.spec import json_schema
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_run(args) -> int:
    spec = _load(args)
    from pipeline.plan import build_plan, prefix_until
    from pipeline.spec import SpecError
    try:
        plan = prefix_until(build_plan(spec), args.until)   # a bad --until fails before any start-up
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workdir = _workdir(args, spec)
    workdir.mkdir(parents=True, exist_ok=True)
    prefect_env(workdir)
    from pipeline.logs import hidden_warnings, setup_run_logging
    log_path = setup_run_logging(workdir, verbose=args.verbose)   # before Prefect is imported
    log = logging.getLogger("forgeflow")
    log.info("forgeflow run %s: %d stage(s)%s; log file %s", args.config, len(plan),
             f" (--until {args.until})" if args.until else "", log_path)
    t0 = time.time()
    results, rc = _orchestrate("run", log_path, "flows.end_to_end:end_to_end", config=str(args.config),
                               overrides=args.overrides, workdir=str(workdir), until=args.until,
                               tracking_of=(spec, workdir))
    if rc:
        return rc
    ran = sum(not r["cached"] for r in results.values())
    print(f"\nforgeflow: {len(results)} stages ({ran} ran, {len(results) - ran} cached) "
          f"in {time.time() - t0:.0f}s; workdir {workdir}")
    hidden = hidden_warnings()
    notes = ([f"{hidden} library warning(s) there"] if hidden else []) + \
        ([] if args.verbose else ["--verbose shows it all on the terminal"])
    # the path stands alone (space-separated), so it can be copied or matched as a word
    print(f"log: {log_path}" + (f" ({'; '.join(notes)})" if notes else ""))
    ev = results.get("evaluate")
    if ev:
        manifest = json.loads((Path(ev["path"]) / "manifest.json").read_text())
        bpb = {k: v for k, v in manifest.get("metrics", {}).items() if k.startswith(("bpb.", "forgetting", "acc"))}
        for k, v in sorted(bpb.items()):
            print(f"  {k:<40} {v:.4f}")
    print(f"\nLook around:  forgeflow ui --workdir {workdir}"
          f"\n              forgeflow inspect filter --workdir {workdir}")
    return 0


def cmd_sweep(args) -> int:
    from pipeline.experiments.compare import format_table, load_sweep
    from pipeline.experiments.sweep import plan_sweep
    from pipeline.spec import SpecError
    try:
        plan = plan_sweep(args.config, args.overrides)     # every trial spec validated here
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workdir = _workdir(args, plan.spec)
    workdir.mkdir(parents=True, exist_ok=True)
    prefect_env(workdir)
    from pipeline.logs import hidden_warnings, setup_run_logging
    log_path = setup_run_logging(workdir, verbose=args.verbose, name="sweep")   # before Prefect
    print(f"sweep {plan.name}: {len(plan.trials)} trial(s){' + 1 proposed' if plan.sweep.propose else ''}, "
          f"{plan.max_parallel} at a time, varying {', '.join(plan.varied)}; log file {log_path}")
    t0 = time.time()
    out, rc = _orchestrate("sweep", log_path, "flows.sweep:run_sweep", str(args.config),
                           args.overrides, str(workdir), tracking_of=(plan.spec, workdir))
    if rc:
        return rc
    from mlflow.tracking import MlflowClient
    from pipeline.tracking import resolve_tracking_uri
    client = MlflowClient(resolve_tracking_uri(plan.spec.run.tracking_uri, workdir))
    print()
    print(format_table(load_sweep(client, out["sweep_id"])))
    hidden = hidden_warnings()
    print(f"\nforgeflow: sweep {plan.name} ({len(out['trials'])} trials) in {time.time() - t0:.0f}s; "
          f"best {out['best']}; sweep id {out['sweep_id']}"
          f"\n  forgeflow compare {out['sweep_id']} --workdir {workdir} [--csv F] [--markdown F]"
          f"\nlog: {log_path}" + (f" ({hidden} library warning(s) there)" if hidden else ""))
    return 0


def cmd_compare(args) -> int:
    from mlflow.tracking import MlflowClient

    from pipeline.experiments.compare import format_table, make_plots, resolve
    from pipeline.tracking import resolve_tracking_uri
    workdir = _workdir(args)
    client = MlflowClient(resolve_tracking_uri(None, workdir))
    try:
        comp = resolve(client, args.targets, metric=args.metric, direction=args.direction)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(comp))
    for fmt, dest in (("csv", args.csv), ("markdown", args.markdown)):
        if dest:
            text = format_table(comp, fmt)
            if dest == "-":
                print(text)
            else:
                Path(dest).write_text(text + ("" if text.endswith("\n") else "\n"))
                print(f"wrote {fmt} to {dest}")
    if args.plots:
        for p in make_plots(comp, Path(args.plots)):
            print(f"plot {p}")
    return 0


def _find_artifact(target: str, workdir: Path) -> Path:
    p = Path(target)
    if (p / "manifest.json").exists():
        return p
    from pipeline.store import ArtifactStore
    arts = [a for a in ArtifactStore(workdir).artifacts() if a.stage == target or a.manifest.get("key") == target]
    if not arts:
        print(f"error: no artifact {target!r} under {workdir} (give a path or a stage name)", file=sys.stderr)
        sys.exit(2)
    return max(arts, key=lambda a: a.manifest.get("finished_at", 0)).dir


def cmd_inspect(args) -> int:
    from pipeline.filters.inspect import format_rejected
    path = _find_artifact(args.target, _workdir(args))
    print(format_rejected(path, reason=args.reason, n=args.n))
    return 0


def cmd_artifacts(args) -> int:
    """Each artifact, then its lineage: the MLflow run that produced it and its inputs."""
    from pipeline.store import ArtifactStore, lineage
    arts = ArtifactStore(_workdir(args)).artifacts()
    inputs = lineage(arts)
    for a in arts:
        m = a.manifest
        print(f"{m.get('key', a.stage):<28} {a.short}  {m.get('seconds', 0):8.1f}s  {a.path}")
        if args.no_lineage:
            continue
        print(f"    produced by MLflow run {m.get('mlflow_run_id') or '?'}"
              f"{' (resumed)' if m.get('resumed') else ''}, code {m.get('code_version', '?')}")
        for name, src, ident in inputs[a.identity]:
            where = (f"{src.manifest.get('key', src.stage)} {src.short} (run {src.manifest.get('mlflow_run_id', '?')})"
                     if src else f"{ident[:12]} (no longer in the store)")
            print(f"    <- {name}: {where}")
    return 0


def cmd_gc(args) -> int:
    from pipeline.store import ArtifactStore, human_bytes
    workdir = _workdir(args)
    if not workdir.is_dir():
        print(f"error: no workdir {workdir}", file=sys.stderr)
        return 2
    report = ArtifactStore(workdir).gc(keep_runs=args.keep_runs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for kind, path, size in report.removed:
        print(f"{verb:<12} {kind:<15} {human_bytes(size):>10}  {path}")
    for path, why, size in report.kept:
        print(f"{'kept':<12} {'':<15} {human_bytes(size):>10}  {path}  ({why})")
    print(f"gc: {verb} {len(report.removed)} item(s), {human_bytes(report.freed)}; "
          f"kept everything the last {args.keep_runs} run(s) of each spec use")
    return 0


def cmd_verify(args) -> int:
    """Exit 1 naming each bad artifact and file; --quarantine moves the bad ones aside."""
    from pipeline.store import ArtifactStore
    workdir = _workdir(args)
    if not workdir.is_dir():
        print(f"error: no workdir {workdir}", file=sys.stderr)
        return 2
    store = ArtifactStore(workdir)
    results = store.verify(deep=args.deep)
    bad = [(d, p) for d, p in results if p]
    for art_dir, problems in bad:
        print(f"BAD  {art_dir}")
        for problem in problems:
            print(f"       {problem}")
        if args.quarantine:
            print(f"       moved to {store.quarantine(art_dir, problems)}")
    kind = "re-hashed" if args.deep else "checked (sizes and manifest seals; --deep re-hashes)"
    print(f"{len(results)} artifact(s) {kind}: {len(results) - len(bad)} ok, {len(bad)} bad")
    return 1 if bad else 0


def cmd_ui(args) -> int:
    workdir = _workdir(args)
    prefect_env(workdir)
    from pipeline.tracking import redact, resolve_tracking_uri
    uri = resolve_tracking_uri(None, workdir)
    procs = []
    bin_dir = Path(sys.executable).parent
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(args.prefect_port)]
    # one worker is plenty for a local UI (each is a full Python process, and four start
    # slowly on a small machine); MLflow's job execution (GenAI scorers, trace roll-ups:
    # seven more processes) stays off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says so
    mlflow = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri,
              "--host", "127.0.0.1", "--port", str(args.mlflow_port), "--workers", "1"]
    mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    from flows.procs import spawn, stop_all

    def _terminate(signum, _frame):      # SIGTERM (kill, systemd, a container stop)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    exp = _mlflow_experiment_link(uri, f"http://127.0.0.1:{args.mlflow_port}")
    try:
        # the UI's pages call the API at PREFECT_UI_API_URL, which Prefect derives from its
        # default port (4200), not from --port: on any other port the UI found no API
        prefect_env_vars = dict(os.environ)
        prefect_env_vars.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{args.prefect_port}/api")
        procs.append(spawn(prefect, env=prefect_env_vars))
        procs.append(spawn(mlflow, env=mlflow_env))
        print(f"Prefect UI: http://127.0.0.1:{args.prefect_port}   (PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')})")
        print(f"MLflow UI:  http://127.0.0.1:{args.mlflow_port}   (store {redact(uri)})")
        if exp:
            print(f"            runs table: {exp}")
        print("Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C must not skip cleanup
        stop_all(procs)
    return 0


def _mlflow_experiment_link(uri: str, ui_url: str) -> str | None:
    """The runs table of the workdir's newest forgeflow experiment, opened on its view
    (looked up before the servers start: never creates a store that does not exist)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    try:
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import VIEW_TAG, experiment_url
        exps = [e for e in MlflowClient(uri).search_experiments() if VIEW_TAG in e.tags]
    except Exception:
        return None
    if not exps:
        return None
    exp = max(exps, key=lambda e: e.last_update_time or 0)
    return experiment_url(ui_url, exp.experiment_id)
def _deploy_errors(fn):
    """deploy/serve: a bad spec or a missing server is one line on stderr, exit 2."""
    def wrapper(args) -> int:
        from flows.deploy import DeployError
        from pipeline.spec import SpecError
        try:
            return fn(args) or 0
        except (DeployError, SpecError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapper


@_deploy_errors
def cmd_deploy(args) -> int:
    from flows import deploy
    if args.config is None:
        if args.cron or args.interval or args.overrides:
            raise deploy.DeployError("--cron/--interval/overrides need a CONFIG "
                                     "(without one, the deployments of --prefect-file are registered)")
        return deploy.deploy_file(args.prefect_file or deploy.DEFAULT_PREFECT_FILE,
                                  [args.name] if args.name else None)
    dep_id = deploy.deploy_spec(args.config, args.overrides, args.workdir, args.name,
                                args.cron, args.interval, args.timezone, args.pool)
    print(f"deployment {dep_id} registered on work pool {args.pool!r}; "
          f"start a worker: prefect worker start --pool {args.pool}")
    return 0


@_deploy_errors
def cmd_serve(args) -> int:
    from flows import deploy
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    deploy.serve_spec(args.config, args.overrides, args.workdir, args.name,
                      args.cron, args.interval, args.timezone, args.limit)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forgeflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def with_config(p):
        p.add_argument("config", help="YAML spec")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200")
        p.add_argument("--workdir", help="where artifacts and the local stores live (default run.workdir)")

    def with_until(p):
        p.add_argument("--until", metavar="STAGE",
                       help="only the prefix of the DAG that ends with STAGE (a stage key such as "
                            "ingest.docs, or a family: crawl, ingest, filter, dedup, tokenize, "
                            "pretrain, continual, evaluate) and what it depends on")

    p = sub.add_parser("run", help="run the pipeline as a Prefect flow")
    with_config(p)
    with_until(p)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show library logs (Prefect, Ray, MLflow) on the terminal too "
                        "(they always go to <workdir>/logs/)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="validate the spec and print the stage plan")
    with_config(p)
    with_until(p)
    p.add_argument("--json", action="store_true", help="print the plan with identities as JSON")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("sweep", help="run the spec's sweep: every trial a subflow, shared upstream")
    with_config(p)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show library logs on the terminal too (they always go to <workdir>/logs/)")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("compare", help="compare a sweep's trials, an experiment's runs or given runs")
    p.add_argument("targets", nargs="+", help="a sweep id (its MLflow run id), a sweep name, "
                                              "an MLflow experiment name, or run ids")
    p.add_argument("--workdir", help="whose MLflow store to read (MLFLOW_TRACKING_URI wins)")
    p.add_argument("--metric", help="metric for runs that are not a sweep (default: first bpb.*)")
    p.add_argument("--direction", choices=["minimize", "maximize"], default="minimize")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV ('-' = stdout)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown ('-' = stdout)")
    p.add_argument("--plots", metavar="DIR", help="write the comparison plots here")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("schema", help="print the JSON Schema of the spec")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("inspect", help="show removed documents by reason")
    p.add_argument("target", help="artifact directory or stage name (filter, dedup, ingest...)")
    p.add_argument("--reason")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--workdir")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("artifacts", help="list committed artifacts with their lineage")
    p.add_argument("--workdir")
    p.add_argument("--no-lineage", action="store_true", help="one line per artifact")
    p.set_defaults(func=cmd_artifacts)
    p = sub.add_parser("gc", help="remove stale partials, orphaned locks, Prefect records of deleted "
                                  "artifacts and artifacts no recent run uses")
    p.add_argument("--workdir")
    p.add_argument("--keep-runs", type=int, default=3, metavar="N",
                   help="keep every artifact the last N runs of each spec use (default 3)")
    p.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("verify", help="check every artifact against its manifest (exit 1 if any is bad)")
    p.add_argument("--workdir")
    p.add_argument("--deep", action="store_true", help="re-hash every file (default: sizes and seals)")
    p.add_argument("--quarantine", action="store_true",
                   help="move bad artifacts to <workdir>/.quarantine/ (they are recomputed on the next run)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("ui", help="start the Prefect and MLflow UIs on 127.0.0.1")
    p.add_argument("--workdir")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    def with_schedule(p):
        p.add_argument("--cron", help="cron expression, e.g. '0 3 * * *'")
        p.add_argument("--interval", help="seconds or a duration: 90s, 15m, 6h, 7d")
        p.add_argument("--timezone", default="UTC", help="time zone of --cron (default UTC)")
        p.add_argument("--name", help="deployment name (default run.name)")

    p = sub.add_parser("deploy", help="register deployments with the Prefect server at PREFECT_API_URL")
    p.add_argument("config", nargs="?", help="YAML spec (default: every deployment of --prefect-file)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200")
    p.add_argument("--workdir", help="the runs' workdir (default run.workdir, made absolute)")
    p.add_argument("--prefect-file", default=None, help="prefect.yaml (default deploy/prefect.yaml)")
    p.add_argument("--pool", default="forgeflow-process", help="process work pool (created if missing)")
    with_schedule(p)
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("serve", help="serve a deployment of one spec from this process (Prefect serve)")
    with_config(p)
    with_schedule(p)
    p.add_argument("--limit", type=int, default=1, help="concurrent runs (default 1)")
    p.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    from pipeline.secrets import install_log_redaction
    install_log_redaction()        # every log record of every command, whatever its handler
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
