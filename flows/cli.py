"""The ``forgeflow`` command.

    forgeflow run CONFIG [key=value ...] [--workdir DIR]   run the pipeline (Prefect flow)
    forgeflow validate CONFIG [key=value ...]               check the spec, print the plan
    forgeflow schema                                        JSON Schema of the spec
    forgeflow inspect ARTIFACT|STAGE [--reason R] [-n N]    removed documents by reason
    forgeflow artifacts [--workdir DIR]                     committed artifacts
    forgeflow ui [--workdir DIR]                            Prefect + MLflow UIs on 127.0.0.1
    forgeflow deploy [CONFIG [key=value ...] --cron/--interval]  register deployments (PREFECT_API_URL)
    forgeflow serve CONFIG [key=value ...] --cron/--interval     serve a scheduled deployment here

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


def _load(args):
    from pipeline.spec import SpecError, load_spec
    try:
        return load_spec(args.config, args.overrides)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_validate(args) -> int:
    from pipeline.plan import build_plan
    from pipeline.spec import SpecError
    spec = _load(args)
    try:
        plan = build_plan(spec)
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
    workdir = _workdir(args, spec)
    workdir.mkdir(parents=True, exist_ok=True)
    prefect_env(workdir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from flows.end_to_end import end_to_end
    from pipeline.spec import SpecError

    t0 = time.time()
    try:
        results = end_to_end(config=str(args.config), overrides=args.overrides, workdir=str(workdir))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ran = sum(not r["cached"] for r in results.values())
    print(f"\nforgeflow: {len(results)} stages ({ran} ran, {len(results) - ran} cached) "
          f"in {time.time() - t0:.0f}s; workdir {workdir}")
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

    p = sub.add_parser("run", help="run the pipeline as a Prefect flow")
    with_config(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="validate the spec and print the stage plan")
    with_config(p)
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
