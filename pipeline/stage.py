"""The contract between the runner and a stage implementation.

A stage entry point looks like ``run_x(cfg, <input paths>, ctx: StageContext) -> dict``:
it writes everything it produces under ``ctx.out_dir`` and returns a flat dict of
summary metrics (numbers). The store commits ``ctx.out_dir`` atomically afterwards
and writes ``manifest.json``; a stage never writes outside ``ctx.out_dir``.

``ctx`` also carries tracking (an MLflow child run, written with explicit run ids so
it works from any thread or Ray worker), progress, and run-wide settings.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.progress import Progress

log = logging.getLogger("forgeflow")


@dataclass
class StageContext:
    name: str                      # stage instance name, e.g. "filter" or "ingest.prose"
    out_dir: Path                  # write outputs here; becomes the artifact on success
    workdir: Path                  # the pipeline's workdir (read-only for stages)
    seed: int = 0
    num_cpus: int = 2
    tracker: Any = None            # pipeline.tracking.StageRun or None (unit tests)
    show_progress: bool = True
    summary: list[str] = field(default_factory=list)   # markdown lines for Prefect
    tables: dict[str, list[dict]] = field(default_factory=dict)
    removed: dict | None = None    # {"docs_in": n, "reasons": {reason: count}} (see removals)

    # ---- convenience -------------------------------------------------------------
    @classmethod
    def for_testing(cls, out_dir: Path, name: str = "test", **kw) -> "StageContext":
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return cls(name=name, out_dir=out_dir, workdir=out_dir.parent, **kw)

    def rng(self, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{salt}")

    def log(self, msg: str) -> None:
        log.info("[%s] %s", self.name, msg)

    def progress(self, total: int | None = None, unit: str = "items",
                 desc: str | None = None) -> Progress:
        return Progress(desc or self.name, total=total, unit=unit, enabled=self.show_progress)

    # ---- tracking (no-ops without a tracker) ------------------------------------
    @property
    def mlflow_run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker else None

    @property
    def tracking_uri(self) -> str | None:
        return self.tracker.tracking_uri if self.tracker else None

    def metric(self, key: str, value: float, step: int | None = None) -> None:
        if self.tracker:
            self.tracker.log_metric(key, float(value), step=step)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        if self.tracker:
            self.tracker.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def param(self, key: str, value: Any) -> None:
        if self.tracker:
            self.tracker.log_params({key: value})

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        """Log a file or directory (already under out_dir, or elsewhere) to MLflow."""
        if self.tracker:
            self.tracker.log_artifact(Path(path), subdir)

    def figure(self, fig, filename: str, tight: bool = True) -> Path:
        """Save a matplotlib figure to ``out_dir/plots/filename`` and log it to MLflow
        (``tight=False`` skips the tight-bbox pass, a second draw, for figures that set
        their own margins)."""
        plots = self.out_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        path = plots / filename
        fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if tight else {}))
        try:
            import matplotlib.pyplot as plt
            plt.close(fig)
        except Exception:  # pragma: no cover
            pass
        self.artifact(path, "plots")
        return path

    def table(self, rows: list[dict], filename: str) -> None:
        """A small table (list of flat dicts): saved as JSON, logged to MLflow, and
        published as a Prefect table artifact by the flow layer."""
        self.tables[filename] = rows
        path = self.out_dir / "tables" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1, default=str))
        self.artifact(path, "tables")

    def note(self, markdown_line: str) -> None:
        """A line for the stage's Prefect markdown artifact."""
        self.summary.append(markdown_line)

    def removals(self, docs_in: int, reasons: dict[str, int]) -> None:
        """Declare how many documents came in and how many each reason removed. The
        runner prints them as a table when the stage ends, warns when more than half of
        the input went, and keeps them in the manifest (``removals``)."""
        self.removed = {"docs_in": int(docs_in),
                        "reasons": {str(k): int(v) for k, v in reasons.items() if v}}


def removal_report(key: str, removed: dict | None, warn_share: float = 0.5) -> tuple[list[str], str | None]:
    """Lines of the removal table of one stage, and a warning when more than
    ``warn_share`` of its input was removed (``None`` otherwise)."""
    if not removed:
        return [], None
    docs_in, reasons = removed["docs_in"], removed["reasons"]
    total = sum(reasons.values())
    if not total:
        return [f"[{key}] removed 0 of {docs_in:,} documents"], None
    lines = [f"[{key}] removed {total:,} of {docs_in:,} documents "
             f"({100 * total / max(docs_in, 1):.1f}%), by reason:"]
    width = max(len(r) for r in reasons)
    for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {reason:<{width}}  {n:>8,}  {100 * n / max(docs_in, 1):5.1f}%")
    warning = None
    if docs_in and total > warn_share * docs_in:
        top, n = max(reasons.items(), key=lambda kv: kv[1])
        warning = (f"[{key}] removed more than half of its input: {total:,} of {docs_in:,} "
                   f"documents ({100 * total / docs_in:.0f}%); most by `{top}` ({n:,}). "
                   f"Check that step's settings in the spec if this is not what you meant.")
    return lines, warning
