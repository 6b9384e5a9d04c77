"""The ``forgeflow`` command.

    forgeflow run CONFIG [key=value ...] [--workdir DIR] [--until STAGE] [--verbose]
                                                            run the pipeline (Prefect flow)
    forgeflow validate CONFIG [key=value ...] [--until STAGE]  check the spec, print the plan
    forgeflow schema                                        JSON Schema of the spec
    forgeflow inspect ARTIFACT|STAGE [--reason R] [-n N]    removed documents by reason
    forgeflow artifacts [--workdir DIR]                     committed artifacts
    forgeflow ui [--workdir DIR]                            Prefect + MLflow UIs on 127.0.0.1

Prefect is imported only by ``run`` (after PREFECT_HOME is set to the workdir's store),
so validate/schema/inspect are fast.
"""

from __future__ import annotations

import argparse
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
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The embedded (ephemeral) Prefect API is a uvicorn subprocess that must answer
    # /api/health within this many seconds; Prefect's 20 s default fails on a loaded machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def start_prefect_api(attempts: int = 3) -> None:
    """Start the embedded Prefect API now (not lazily inside the flow call), retrying a
    start-up that timed out: a loaded machine can miss even a generous timeout once.
    No-op when PREFECT_API_URL names a running server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer
    log = logging.getLogger("forgeflow")
    for attempt in range(1, attempts + 1):
        server = SubprocessASGIServer()
        try:
            server.start()
            log.debug("embedded Prefect API on %s", server.api_url)
            return
        except RuntimeError as exc:
            server.stop()               # kills the process and forgets the instance
            if attempt == attempts:
                raise
            log.warning("embedded Prefect API did not start (attempt %d/%d): %s; retrying",
                        attempt, attempts, str(exc)[:300])
            time.sleep(2 * attempt)


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
    from pipeline.checks import EmptyOutputError
    from pipeline.logs import quiet_library_handlers

    t0 = time.time()
    try:
        start_prefect_api()
        from flows.end_to_end import end_to_end
        quiet_library_handlers()       # Prefect's own console handlers, now that it is imported
        results = end_to_end(config=str(args.config), overrides=args.overrides,
                             workdir=str(workdir), until=args.until)
    except (SpecError, EmptyOutputError) as exc:
        log.debug("run failed", exc_info=True)
        print(f"\nerror: {exc}\n(full log: {log_path})", file=sys.stderr)
        return 2 if isinstance(exc, SpecError) else 1
    except Exception:
        log.exception("run failed (full log: %s)", log_path)
        return 1
    ran = sum(not r["cached"] for r in results.values())
    print(f"\nforgeflow: {len(results)} stages ({ran} ran, {len(results) - ran} cached) "
          f"in {time.time() - t0:.0f}s; workdir {workdir}")
    hidden = hidden_warnings()
    print(f"log: {log_path}" + (f" ({hidden} library warning(s) there)" if hidden else "")
          + ("" if args.verbose else "; --verbose shows it all on the terminal"))
    ev = results.get("evaluate")
    if ev:
        manifest = json.loads((Path(ev["path"]) / "manifest.json").read_text())
        bpb = {k: v for k, v in manifest.get("metrics", {}).items() if k.startswith(("bpb.", "forgetting", "acc"))}
        for k, v in sorted(bpb.items()):
            print(f"  {k:<40} {v:.4f}")
    print(f"\nLook around:  forgeflow ui --workdir {workdir}"
          f"\n              forgeflow inspect filter --workdir {workdir}")
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
    from pipeline.store import ArtifactStore
    for a in ArtifactStore(_workdir(args)).artifacts():
        m = a.manifest
        print(f"{m.get('key', a.stage):<28} {a.short}  {m.get('seconds', 0):8.1f}s  {a.path}")
    return 0


def cmd_ui(args) -> int:
    workdir = _workdir(args)
    prefect_env(workdir)
    from pipeline.tracking import redact, resolve_tracking_uri
    uri = resolve_tracking_uri(None, workdir)
    procs = []
    bin_dir = Path(sys.executable).parent
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(args.prefect_port)]
    mlflow = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri,
              "--host", "127.0.0.1", "--port", str(args.mlflow_port)]
    for cmd in (prefect, mlflow):
        procs.append(subprocess.Popen(cmd, env=os.environ.copy()))
    print(f"Prefect UI: http://127.0.0.1:{args.prefect_port}   (PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')})")
    print(f"MLflow UI:  http://127.0.0.1:{args.mlflow_port}   (store {redact(uri)})")
    print("Ctrl-C stops both.")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
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
    p = sub.add_parser("schema", help="print the JSON Schema of the spec")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("inspect", help="show removed documents by reason")
    p.add_argument("target", help="artifact directory or stage name (filter, dedup, ingest...)")
    p.add_argument("--reason")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--workdir")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("artifacts", help="list committed artifacts")
    p.add_argument("--workdir")
    p.set_defaults(func=cmd_artifacts)
    p = sub.add_parser("ui", help="start the Prefect and MLflow UIs on 127.0.0.1")
    p.add_argument("--workdir")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
