"""Ray helpers shared by the document stages.

``ensure_ray`` starts a local Ray on demand (CPU count from the spec) or connects to a
cluster address from ``RAY_ADDRESS`` or the spec (the environment wins). Document datasets are directories
of Parquet files (``<artifact>/data/*.parquet``, rejected rows in
``<artifact>/rejected/*.parquet``) read and written through Ray Data in batches; a
stage over at most ``run.in_process_max_docs`` documents runs in this process instead
(``in_process``), with the same outputs.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The document schema every stage reads and writes (stages may add columns).
DOC_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
])

# Up to this many input documents a document stage runs in the driver process: starting a
# local Ray and its first workers costs 20-60 s on a small machine, the work itself well
# under a second (``run.in_process_max_docs``; 0 = always on Ray).
IN_PROCESS_MAX_DOCS = 2000
_RAY_SETTINGS: dict = {"num_cpus": None, "address": None, "in_process_max_docs": IN_PROCESS_MAX_DOCS}
_RAY_INIT = threading.Lock()


def configure_ray(num_cpus: int | None = None, address: str | None = None,
                  in_process_max_docs: int = IN_PROCESS_MAX_DOCS) -> None:
    """Record how Ray should be started (called by the runner from the spec)."""
    _RAY_SETTINGS.update(num_cpus=num_cpus, address=address,
                         in_process_max_docs=in_process_max_docs)


def in_process(n_docs: int) -> bool:
    """Whether a document stage over ``n_docs`` input documents runs in this process
    instead of on Ray (the outputs are the same either way)."""
    return n_docs <= _RAY_SETTINGS["in_process_max_docs"]


def ray_address(address: str | None = None) -> str | None:
    """The cluster to connect to: ``RAY_ADDRESS`` wins over the spec's ``run.ray_address``
    (as MLFLOW_TRACKING_URI wins over ``run.tracking_uri``: the environment is where a
    deployment says where it runs); neither means a local Ray started on demand."""
    return (os.environ.get("RAY_ADDRESS") or address or _RAY_SETTINGS["address"]) or None


# Passed to every Ray worker: workers import `pipeline` from this checkout even without an
# install, and log to the same MLflow server with the same credentials as the driver.
WORKER_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                   "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
                   "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def worker_env(remote: bool = True) -> dict[str, str]:
    """The runtime_env variables of Ray workers. The tracking credentials are passed only to
    a remote cluster (``remote``): a local Ray's workers inherit this process's environment,
    and Ray's runtime-env agent writes every variable it is given into its log file in
    plain text, where a secret must not end up."""
    repo_root = str(Path(__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != repo_root]
    pythonpath = os.pathsep.join([repo_root, *rest])
    env = {"PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "false"}
    if remote:
        env.update({k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)})
    return env


def ensure_ray(num_cpus: int | None = None, address: str | None = None):
    """Start (or connect to) Ray once per process and return the ``ray`` module."""
    import ray

    if ray.is_initialized():
        return ray
    with _RAY_INIT:            # sweep trials in threads reach their first stage together
        if not ray.is_initialized():
            _init_ray(ray, num_cpus, address)
    return ray


def _init_ray(ray, num_cpus: int | None, address: str | None) -> None:
    from pipeline.logs import quiet_library_handlers, route_ray_worker_output
    quiet_library_handlers()        # Ray's own console handler: its start-up lines to the log file
    address = ray_address(address)
    num_cpus = num_cpus or _RAY_SETTINGS["num_cpus"]
    kwargs = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True,
                  logging_level="WARNING")
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env(remote=True)}, **kwargs)
        res = ray.cluster_resources()
        logging.getLogger("forgeflow").info(
            "Ray: connected to the cluster at %s (%d node(s), %g CPU, %g GPU)", address,
            sum(n["Alive"] for n in ray.nodes()), res.get("CPU", 0), res.get("GPU", 0))
    else:
        # A local Ray's workers inherit the environment its raylet was started with; a
        # runtime_env would make Ray start a second set of workers for it (the ones it
        # prestarts have none), which costs 10-20 s before the first task on 2 cores.
        os.environ.update(worker_env(remote=False))
        # Ray waits a fixed 30 s for its raylet to register; a loaded machine can miss
        # that once. The failed node's processes are reaped when this process exits.
        for attempt in (1, 2):
            try:
                ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
                break
            except Exception as exc:
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
                logging.getLogger("forgeflow").warning("local Ray did not start in time (%s); "
                                                       "retrying once", exc)
                ray.shutdown()
    import ray.data
    dctx = ray.data.DataContext.get_current()
    dctx.execution_options.preserve_order = True   # deterministic outputs
    dctx.enable_progress_bars = False
    route_ray_worker_output()       # worker prints and Ray's own logging: to the log file


def parquet_files(dataset_dir: Path, sub: str = "data") -> list[str]:
    """Sorted Parquet files of ``<dataset_dir>/<sub>/`` (empty list if none)."""
    d = Path(dataset_dir) / sub
    return sorted(str(p) for p in d.glob("*.parquet")) if d.is_dir() else []


def read_docs(dataset_dir: Path, sub: str = "data", columns: list[str] | None = None):
    """A Ray Dataset over a document dataset directory."""
    ray = ensure_ray()
    files = parquet_files(dataset_dir, sub)
    if not files:
        return ray.data.from_arrow(empty_table(DOC_SCHEMA))
    return ray.data.read_parquet(files, columns=columns)


def empty_table(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([], schema=schema)


ROW_GROUP_ROWS = 10_000            # row groups are the unit a reader must hold in memory:
ROW_GROUP_BYTES = 64 << 20         # forgeflow's own files keep them at most this large


def row_group_rows(table: pa.Table, max_rows: int = ROW_GROUP_ROWS,
                   max_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per Parquet row group for ``table``: at most ``max_rows`` and about
    ``max_bytes`` of Arrow data (by the table's mean row size)."""
    if table.num_rows == 0:
        return max_rows
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(max_rows, max_bytes // per_row))


def write_table(table: pa.Table, out_dir: Path, sub: str = "data", part: int = 0) -> Path:
    """Write one Arrow table as ``<out_dir>/<sub>/part-NNNNN.parquet`` in row groups of
    bounded size (``row_group_rows``)."""
    d = Path(out_dir) / sub
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"part-{part:05d}.parquet"
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows(table))
    return path


def count_rows(dataset_dir: Path, sub: str = "data") -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(dataset_dir, sub))


def iter_batches(dataset_dir: Path, sub: str = "data", batch_size: int = 1024,
                 columns: list[str] | None = None):
    """Stream Arrow record batches from a document dataset without Ray (bounded memory)."""
    for f in parquet_files(dataset_dir, sub):
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)
