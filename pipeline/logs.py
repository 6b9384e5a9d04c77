"""The terminal a person reads, and the log file that keeps everything else.

``setup_run_logging(workdir)`` (called by ``forgeflow run``) sends every log record of the
process, forgeflow's and the libraries', to ``<workdir>/logs/run-<time>.log`` and shows on
the terminal only what a person running a pipeline needs:

- forgeflow's own lines (logger ``forgeflow.*``): one line per stage start and finish,
  live progress of long stages, warnings that matter, the final summary;
- errors from anyone except Prefect's engine (its task-failure tracebacks repeat the
  error the CLI reports itself; they are in the file).

Library chatter (Prefect's httpx request lines and task/flow state logs, Ray and Ray
Data internals, MLflow's database migrations, matplotlib, Python warnings) goes to the
file only; the number of library warnings is reported at the end. Libraries that install
their own console handlers (Ray, Ray Data, Prefect's server loggers, MLflow) are routed
back through the root logger by :func:`quiet_library_handlers`, which the Ray start-up
calls again. Ray workers' stdout/stderr (``log_to_driver``) is routed the same way:
forgeflow lines from workers (training progress, ``[stage] ...``) reach the terminal,
everything else the file. ``verbose=True`` shows everything on the terminal as well.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

CONSOLE_FORMAT = "%(asctime)s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"

# Loggers whose own stream handlers bypass the root logger (and so the log file).
LIBRARY_LOGGERS = ("ray", "prefect", "uvicorn", "fastapi", "mlflow", "alembic", "httpx",
                   "urllib3", "matplotlib", "asyncio", "py.warnings")
# A forgeflow line printed by a Ray worker: "[pretrain] 10/150 ..." (stage-key prefix).
WORKER_FORGEFLOW_LINE = re.compile(r"^\[[A-Za-z0-9_.:()\- ]+\] ")

PROGRESS_INTERVAL = 10.0     # seconds between progress lines of one stage on the terminal

_STATE: dict = {"verbose": True, "file": None, "counter": None}


def is_forgeflow(name: str) -> bool:
    return name == "forgeflow" or name.startswith("forgeflow.")


class ConsoleFilter(logging.Filter):
    """What the terminal shows when not verbose (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_forgeflow(record.name):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.ERROR and not record.name.startswith("prefect")


class HiddenWarnings(logging.Handler):
    """Counts library warnings that were kept off the terminal (reported at the end)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not ConsoleFilter().filter(record):
            self.count += 1


def setup_run_logging(workdir: Path, verbose: bool = False, name: str = "run") -> Path:
    """Root logging for one CLI command: everything to the log file, a filtered terminal.

    Returns the log file's path. Call before Prefect is imported: Prefect then keeps the
    root handlers (it only installs its own console handler on a bare root logger)."""
    log_dir = Path(workdir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_forgeflow", False):
            root.removeHandler(h)
            h.close()
    file_h = logging.FileHandler(path, encoding="utf-8")
    file_h.setFormatter(logging.Formatter(FILE_FORMAT, DATEFMT))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, DATEFMT))
    if not verbose:
        console.addFilter(ConsoleFilter())
    counter = None if verbose else HiddenWarnings()
    for h in (file_h, console, counter):
        if h is not None:
            h._forgeflow = True
            root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.getLogger("forgeflow").setLevel(logging.INFO)
    logging.captureWarnings(True)
    _STATE.update(verbose=verbose, file=path, counter=counter)
    if not verbose:
        from pipeline import progress
        progress.DEFAULT_INTERVAL = PROGRESS_INTERVAL
        # Hugging Face tqdm bars (transformers' "Loading weights", hub downloads) write to
        # stderr directly; local Ray workers inherit this environment
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # MLflow's own console handler (its database migrations at first use): through root
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    quiet_library_handlers()
    return path


def log_file() -> Path | None:
    return _STATE["file"]


def hidden_warnings() -> int:
    counter = _STATE["counter"]
    return counter.count if counter is not None else 0


def quiet_library_handlers() -> None:
    """Route libraries that log to the terminal by themselves through the root logger
    (file + filtered terminal). No-op unless ``setup_run_logging`` ran (not verbose)."""
    if _STATE["file"] is None or _STATE["verbose"]:
        return
    for name in list(logging.Logger.manager.loggerDict):
        if not name.startswith(LIBRARY_LOGGERS):
            continue
        logger = logging.getLogger(name)
        # a library's own console handler: any stream handler that is not a file (its
        # stream may be whatever sys.stderr was when the library was imported)
        streams = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                   and not isinstance(h, logging.FileHandler)]
        for h in streams:
            logger.removeHandler(h)
        # no console handler of its own left (removed now, or by an earlier call before the
        # library turned propagation off again, as Ray's logger setup does): through root
        if streams or (not logger.handlers and not logger.propagate):
            logger.propagate = True
            if logger.level < logging.INFO:   # Ray Data logs DEBUG to its own file already
                logger.setLevel(logging.INFO)


def route_ray_worker_output() -> None:
    """Ray workers' stdout/stderr (``log_to_driver``): forgeflow lines to the terminal,
    the rest (Ray Train's controller, NCCL/Gloo set-up, library prints) to the log file.
    No-op unless ``setup_run_logging`` ran (not verbose), or on a Ray without the hook."""
    if _STATE["file"] is None or _STATE["verbose"]:
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:     # pragma: no cover - another Ray layout: keep Ray's printing
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("forgeflow_worker_logs")
    dispatcher.add_handler("forgeflow_worker_logs", _worker_lines)
    # the raylet's messages (worker start-up pressure, OOM kills) are printed by the driver's
    # error listener through this module function, not through the dispatcher
    import ray._private.worker as ray_worker
    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: _worker_lines(data)
    quiet_library_handlers()


_worker_log = logging.getLogger("forgeflow.worker")
_ray_worker_log = logging.getLogger("ray.worker_output")
# its own level: ray.init(logging_level="WARNING") sets the "ray" parent to WARNING, and
# the worker lines are INFO (they go to the log file; the filter decides what the terminal shows)
_ray_worker_log.setLevel(logging.INFO)


# raylet messages worth a terminal line: a worker killed (out of memory) or lost
RAYLET_MATTERS = re.compile(r"kill|out of memory|OOM|died", re.I)


def _worker_lines(data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or "worker"
    for line in data.get("lines", []):
        if WORKER_FORGEFLOW_LINE.match(line):
            _worker_log.info("%s", line)
        elif data.get("pid") == "raylet" and RAYLET_MATTERS.search(line):
            _worker_log.warning("(raylet) %s", line)
        else:
            _ray_worker_log.info("(%s pid=%s) %s", who, data.get("pid"), line)
