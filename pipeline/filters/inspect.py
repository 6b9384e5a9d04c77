"""``forgeflow inspect`` backend: what was removed from a document dataset, and why.

Works on any document dataset with a ``rejected/`` folder (filter and dedup outputs
alike): counts per reason (most frequent first) and, per reason, the first ``n`` removed
documents with their ``detail``, id, source/url and the start of their text.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.engine import parquet_files


def _one_line(text: str | None, width: int) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= width else t[: max(width - 1, 0)] + "…"


def format_rejected(artifact_dir: Path, reason: str | None = None, n: int = 5, width: int = 300) -> str:
    artifact_dir = Path(artifact_dir)
    files = parquet_files(artifact_dir, "rejected")
    if not files:
        return f"{artifact_dir}: no rejected/ documents"
    counts: Counter = Counter()
    samples: dict[str, list[dict]] = {}
    for f in files:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        cols = [c for c in ("reason", "detail", "id", "source", "url", "text") if c in names]
        if "reason" not in cols:
            continue
        for batch in pf.iter_batches(columns=cols, batch_size=4096):
            rs = batch.column("reason").to_pylist()
            counts.update(r or "(none)" for r in rs)
            need = [i for i, r in enumerate(rs) if (reason is None or r == reason)
                    and len(samples.setdefault(r or "(none)", [])) < n]
            for i in need:
                r = rs[i] or "(none)"
                if len(samples[r]) < n:
                    samples[r].append({c: batch.column(c)[i].as_py() for c in cols})
    total = sum(counts.values())
    lines = [f"{artifact_dir}: {total:,} removed documents", "", "reason counts:"]
    for r, c in counts.most_common():
        lines.append(f"  {r:<28} {c:>10,}  ({100 * c / total:.1f}%)")
    if reason is not None and reason not in counts:
        lines += ["", f"no documents removed with reason {reason!r}; reasons: {', '.join(counts)}"]
        return "\n".join(lines)
    shown = [reason] if reason is not None else [r for r, _ in counts.most_common()]
    for r in shown:
        rows = samples.get(r, [])
        lines += ["", f"== {r} ({counts[r]:,}; showing {len(rows)}) =="]
        for row in rows:
            head = f"- id={row.get('id')}"
            if row.get("source"):
                head += f" source={row['source']}"
            if row.get("url"):
                head += f" url={row['url']}"
            lines.append(head)
            if row.get("detail"):
                lines.append(f"  detail: {row['detail']}")
            lines.append(f"  text: {_one_line(row.get('text'), width)}")
    return "\n".join(lines)
