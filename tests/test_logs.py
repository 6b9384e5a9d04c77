"""The run's logging: what reaches the terminal, what only the log file gets."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline import logs, progress


@pytest.fixture
def run_logging(tmp_path):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, dict(logs._STATE), progress.DEFAULT_INTERVAL)
    noisy = logging.getLogger("ray.data.fake")
    own = logging.StreamHandler(sys.stderr)       # a library's own console handler
    noisy.addHandler(own)
    noisy.propagate = False
    path = logs.setup_run_logging(tmp_path)
    terminal = io.StringIO()
    [console] = [h for h in root.handlers if getattr(h, "_forgeflow", False)
                 and type(h) is logging.StreamHandler]
    console.setStream(terminal)
    yield path, terminal
    for h in list(root.handlers):
        if getattr(h, "_forgeflow", False):
            root.removeHandler(h)
            h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logs._STATE.clear()
    logs._STATE.update(saved[2])
    progress.DEFAULT_INTERVAL = saved[3]
    noisy.removeHandler(own)
    logging.captureWarnings(False)


def test_terminal_shows_forgeflow_lines_file_gets_everything(run_logging):
    log_path, terminal = run_logging
    logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:1/api/logs/ "HTTP/1.1 201 Created"')
    logging.getLogger("prefect.task_runs").info("Finished in state Completed()")
    logging.getLogger("prefect.task_runs").error("Task run failed with a traceback")
    logging.getLogger("ray.data.fake").warning("placement group warning")   # own handler removed
    logging.getLogger("mlflow.store").error("cannot log")
    logging.getLogger("forgeflow").info("[filter] started")
    p = progress.Progress("tokenize", total=10, unit="docs")
    p.update(10)
    p.close()
    logs._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": [
        "[pretrain] 25/150 (17%)  1.0 steps/s", "Setting up process group for: env://"]})
    logs._worker_lines({"pid": "raylet", "lines": [
        "WARNING: 8 PYTHON worker processes have been started on node",
        "1 Workers (tasks / actors) killed due to memory pressure (OOM)"]})
    err = terminal.getvalue()
    shown = [line.split(" ", 1)[1] for line in err.splitlines()]
    assert len(shown) == 5 and "[filter] started" in shown and "cannot log" in shown
    assert "(raylet) 1 Workers (tasks / actors) killed due to memory pressure (OOM)" in shown
    assert any(s.startswith("[tokenize] 10/10 (100%)") for s in shown)
    assert "[pretrain] 25/150 (17%)  1.0 steps/s" in shown
    assert not any("HTTP Request" in s or "Finished in state" in s or "placement group" in s
                   or "process group" in s or "Task run failed" in s for s in shown)
    logged = log_path.read_text()
    for text in ("HTTP Request: POST", "Finished in state", "Task run failed", "placement group warning",
                 "[filter] started", "(RayTrainWorker pid=7) Setting up process group", "[tokenize] 10/10",
                 "(worker pid=raylet) WARNING: 8 PYTHON worker processes"):
        assert text in logged, text
    assert logs.hidden_warnings() == 2          # the placement-group warning, Prefect's error
    assert progress.DEFAULT_INTERVAL == logs.PROGRESS_INTERVAL
