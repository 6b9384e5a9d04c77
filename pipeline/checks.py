"""Stop a pipeline at the stage whose output leaves nothing to work on.

A filter chain that removes every document (langid told to keep the wrong language, a
threshold on the wrong scale, a crawl that fetched only errors) would otherwise run on
through dedup and tokenize until training fails with an error that names none of this.
The runner calls a node's check right after the stage commits, and again on every cache
hit, so the run fails at that stage, every time, with a message that says how many
documents each step removed. The empty artifact stays committed (it is the correct,
deterministic output of that config), so ``forgeflow inspect`` shows what was removed
and why.
"""

from __future__ import annotations

import json
import logging

from pipeline.store import Artifact

log = logging.getLogger("forgeflow")


class EmptyOutputError(RuntimeError):
    """A stage ended with zero documents (or a needed source with none)."""


def _counts(items: dict[str, float]) -> str:
    return ", ".join(f"{k} {int(v):,}" for k, v in items.items()) or "nothing"


def _inspect_hint(artifact: Artifact) -> str:
    return f"see the removed documents: forgeflow inspect {artifact.path}"


def check_ingest(artifact: Artifact, source: str) -> None:
    m = artifact.metrics
    if m.get("docs_out", 0) > 0:
        return
    rejected = {k[len("rejected_"):]: v for k, v in m.items() if k.startswith("rejected_") and v}
    skipped = {k[len("skipped_"):]: v for k, v in m.items() if k.startswith("skipped_") and v}
    raise EmptyOutputError(
        f"ingest.{source}: 0 documents from {int(m.get('files', 0))} file(s) and "
        f"{int(m.get('records_read', 0)):,} record(s); rejected: {_counts(rejected)}"
        + (f"; skipped (not documents): {_counts(skipped)}" if skipped else "")
        + (f"; {int(m['file_errors'])} file(s) failed to read" if m.get("file_errors") else "")
        + f". Nothing downstream can run; {_inspect_hint(artifact)}")


def check_filter(artifact: Artifact, trained_sources: set[str]) -> None:
    """Zero documents kept at all, or zero kept of a source that training draws from."""
    m = artifact.metrics
    stats_file = artifact.dir / "filter_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    steps = {row["filter"]: row["removed"] for row in stats.get("filters", []) if row["removed"]}
    if m.get("docs_in", 0) > 0 and m.get("docs_out", 0) == 0:
        raise EmptyOutputError(
            f"filter: every one of the {int(m['docs_in']):,} documents was removed; removed by "
            f"step: {_counts(steps)}. Nothing downstream can run; relax the step that removed "
            f"them (or scope it with `sources:`); {_inspect_hint(artifact)}")
    for row in stats.get("sources", []):
        src = row["source"]
        if row["docs_in"] == 0 or row["docs_out"] > 0:
            continue
        by_step = {k[len("removed_"):]: v for k, v in row.items() if k.startswith("removed_") and v}
        what = (f"filter: source {src!r} lost all {row['docs_in']:,} of its documents; removed by "
                f"step: {_counts(by_step)}")
        if src in trained_sources:
            raise EmptyOutputError(
                f"{what}. Training draws from {src!r} (its mixture weight is > 0), so it cannot run; "
                f"relax or scope those steps, or drop {src!r} from the mixture; {_inspect_hint(artifact)}")
        log.warning("%s", what)

