"""The ingest stage: raw files (WARC/WET, JSONL, Parquet, plain text) -> documents.

``run_ingest`` checks every input path first (a missing file is an error naming it,
before any work), then runs one Ray task per input file (``ingest_file``). A task
streams its file's records through the reader for its kind (``readers.py``,
``warc.py``), applies the common checks (empty, ``too_short``), and writes

    <out_dir>/data/part-<file:05d>-<batch:04d>.parquet       kept documents
    <out_dir>/rejected/part-<file:05d>-<batch:04d>.parquet   removed records + reason, detail

in batches of ``ExtractConfig.batch_rows`` rows, so a worker holds one batch at a time.
Part names depend only on the file's position in the input list and the batch number,
and ids only on (source, record key), so two runs over the same inputs write identical
Parquet. The driver gathers per-file counters in input order.

Document id = xxh3-128 of ``source`` + the record's key: the WARC-Record-ID, the JSONL /
Parquet id field, or file name + line / row / paragraph where there is none.

``order="id"`` (what the plan asks for a crawl's WARC files) rewrites the output in a
canonical order after the files are read: rows are hash-partitioned by id into
``ceil(rows / batch_rows)`` parts and sorted by id within each part. A crawl fetches its
pages concurrently, so which page lands in which WARC file, and where, differs between two
crawls of the same site; in id order the documents, and every stage after them, do not.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.ingest.config import ExtractConfig
from pipeline.ingest.readers import (Doc, Reject, check_parquet_columns, read_jsonl,
                                     read_parquet, read_text)
from pipeline.ingest.warc import read_warc
from pipeline.stage import StageContext

KINDS = ("warc", "jsonl", "parquet", "text")

# documents: DOC_SCHEMA (pipeline.engine) + what WARC knows about the capture, including
# its metadata record when there is one (Common Crawl's CLD2 language identification as
# columns, to compare with forgeflow's own `lang`; every field as JSON in warc_metadata)
INGEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
    ("url", pa.string()), ("warc_date", pa.string()), ("content_type", pa.string()),
    ("warc_metadata", pa.string()), ("cld2_lang", pa.string()),
    ("cld2_lang_covered", pa.float64()), ("cld2_reliable", pa.bool_()),
])
REJECTED_SCHEMA = pa.schema(list(INGEST_SCHEMA)[:6]).append(pa.field("reason", pa.string())) \
                                                   .append(pa.field("detail", pa.string()))
SAMPLES_PER_REASON = 5
MAX_FILE_ROWS = 100     # rows of the per-file table
# reasons that mean "this file could not be read to the end"
FILE_REASONS = ("warc_truncated", "warc_unreadable", "file_truncated", "unreadable_file",
                "internal_error")


def metadata_columns(metadata: dict | None) -> dict:
    """Columns from a capture's WARC metadata fields (all null when there are none).

    ``languages-cld2`` is Common Crawl's JSON: ``{"reliable": bool, "languages":
    [{"code": "en", "text-covered": 0.99, ...}, ...]}``; the first language is the top one."""
    if not metadata:
        return {}
    cols = {"warc_metadata": json.dumps(metadata, sort_keys=True, ensure_ascii=False)}
    try:
        cld2 = json.loads(metadata.get("languages-cld2") or "null")
    except ValueError:
        cld2 = None
    if isinstance(cld2, dict):
        langs = [x for x in cld2.get("languages") or [] if isinstance(x, dict)]
        if langs:
            cols["cld2_lang"] = str(langs[0].get("code")) if langs[0].get("code") else None
            covered = langs[0].get("text-covered")
            cols["cld2_lang_covered"] = float(covered) if isinstance(covered, (int, float)) else None
        if isinstance(cld2.get("reliable"), bool):
            cols["cld2_reliable"] = cld2["reliable"]
    return cols


def doc_id(source: str, key: str) -> str:
    """Stable document id: same source and record key -> same id on every run."""
    return xxhash.xxh3_128_hexdigest(f"{source}\x00{key}".encode("utf-8", "replace"))


class _PartWriter:
    """Buffers rows column-wise and writes ``part-<file>-<batch>.parquet`` files."""

    def __init__(self, out_dir: Path, sub: str, file_idx: int, schema: pa.Schema,
                 batch_rows: int, batch_chars: int):
        self.dir = Path(out_dir) / sub
        self.file_idx, self.schema = file_idx, schema
        self.batch_rows, self.batch_chars = batch_rows, batch_chars
        self.cols: dict[str, list] = {n: [] for n in schema.names}
        self.parts: list[str] = []
        self.chars = 0

    def add(self, row: dict) -> None:
        for name, col in self.cols.items():
            col.append(row.get(name))
        self.chars += len(row.get("text") or "")
        if len(self.cols["id"]) >= self.batch_rows or self.chars >= self.batch_chars:
            self.flush()

    def flush(self) -> None:
        if not self.cols["id"]:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"part-{self.file_idx:05d}-{len(self.parts):04d}.parquet"
        pq.write_table(pa.table(self.cols, schema=self.schema), path, compression="zstd")
        self.parts.append(path.name)
        self.cols = {n: [] for n in self.schema.names}
        self.chars = 0


def ingest_file(file_idx: int, path: str, label: str, kind: str, source: str,
                cfg_dict: dict, out_dir: str, options: dict, report=None) -> dict:
    """Ingest one file (runs as a Ray task). Returns counters and reject samples.

    ``report(n)``, when given (in-process runs), is called every 1,000 records so the
    progress line moves within one big file.
    """
    cfg = ExtractConfig.model_validate(cfg_dict)
    t0 = time.perf_counter()
    stats: Counter = Counter()
    samples: dict[str, list[dict]] = {}
    docs = _PartWriter(Path(out_dir), "data", file_idx, INGEST_SCHEMA, cfg.batch_rows,
                       cfg.batch_chars)
    rejected = _PartWriter(Path(out_dir), "rejected", file_idx, REJECTED_SCHEMA,
                           cfg.batch_rows, cfg.batch_chars)
    path_ = Path(path)
    if kind == "warc":
        records = read_warc(path_, label, cfg, stats)
    elif kind == "jsonl":
        records = read_jsonl(path_, label, cfg, stats, text_field=options["text_field"],
                             id_field=options["id_field"], url_field=options["url_field"])
    elif kind == "parquet":
        records = read_parquet(path_, label, cfg, stats, text_field=options["text_field"],
                               id_field=options["id_field"], url_field=options["url_field"],
                               batch_rows=cfg.batch_rows)
    else:
        records = read_text(path_, label, cfg, stats, unit=options["text_unit"])

    for n, rec in enumerate(_guarded(records, label), 1):
        if report is not None and n % 1000 == 0:
            report(1000)
        if isinstance(rec, Doc):
            stats["records_read"] += 1
            stats["candidates"] += 1
            text = rec.text
            if not text.strip():
                rec = Reject("empty_text", f"{rec.where or label}: text is empty",
                             key=rec.key, url=rec.url, warc_date=rec.warc_date,
                             content_type=rec.content_type)
            elif len(text) < cfg.min_text_chars:
                rec = Reject("too_short", f"{rec.where or label}: {len(text)} chars < "
                             f"min_text_chars {cfg.min_text_chars}", key=rec.key,
                             url=rec.url, text=text, warc_date=rec.warc_date,
                             content_type=rec.content_type)
            else:
                docs.add({"id": doc_id(source, rec.key), "text": text, "source": source,
                          "url": rec.url, "warc_date": rec.warc_date,
                          "content_type": rec.content_type,
                          **metadata_columns(rec.metadata)})
                if rec.metadata:
                    stats["docs_with_metadata"] += 1
                stats["docs_out"] += 1
                stats["chars_out"] += len(text)
                continue
        elif rec.key is not None:
            stats["records_read"] += 1
            stats["candidates"] += 1
        if rec.reason in FILE_REASONS:
            stats["file_errors"] += 1
        key = rec.key if rec.key is not None else f"{label}#error{stats['file_errors']}"
        row = {"id": doc_id(source, key),
               "text": (rec.text or "")[:cfg.rejected_text_chars] or None,
               "source": source, "url": rec.url, "warc_date": rec.warc_date,
               "content_type": rec.content_type, "reason": rec.reason,
               "detail": rec.detail}
        rejected.add(row)
        stats[f"rejected_{rec.reason}"] += 1
        stats["rejected"] += 1
        bucket = samples.setdefault(rec.reason, [])
        if len(bucket) < SAMPLES_PER_REASON:
            bucket.append({"reason": rec.reason, "detail": rec.detail, "url": rec.url,
                           "text": (rec.text or "")[:200]})
    docs.flush()
    rejected.flush()
    stats["records_read"] += sum(v for k, v in stats.items() if k.startswith("skipped_"))
    stats["bytes_in"] = Path(path).stat().st_size
    return {"file": label, "stats": dict(stats), "samples": samples,
            "seconds": time.perf_counter() - t0}


def _bucket_of(ids: pa.Array, buckets: int) -> "np.ndarray":
    import numpy as np
    h = np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids.to_pylist()), dtype=np.uint64,
                    count=len(ids))
    return (h % np.uint64(buckets)).astype(np.int64)


def canonical_order(part_dir: Path, schema: pa.Schema, batch_rows: int) -> int:
    """Rewrite ``part_dir``'s ``part-*.parquet`` files in an order that depends only on the
    set of rows: hash partitions of the ids, each sorted by (id, text). Two passes over the
    data, one partition in memory at a time (about ``batch_rows`` rows). Returns the number
    of parts written."""
    import numpy as np
    parts = sorted(part_dir.glob("part-*.parquet"))
    if not parts:
        return 0
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    buckets = max(1, -(-rows // batch_rows))
    tmp = part_dir / ".order"
    tmp.mkdir(exist_ok=True)
    for j, p in enumerate(parts):          # pass 1: each part's rows to their partitions
        table = pq.read_table(p, schema=schema)
        if table.num_rows == 0:
            continue
        b = _bucket_of(table.column("id").combine_chunks(), buckets)
        order = np.argsort(b, kind="stable")
        sorted_b = b[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.r_[True, sorted_b[1:] != sorted_b[:-1]])
        ends = np.r_[starts[1:], len(sorted_b)]
        for s, e in zip(starts, ends):
            pq.write_table(table.slice(s, e - s), tmp / f"b{sorted_b[s]:05d}-{j:05d}.parquet")
    for p in parts:
        p.unlink()
    written = 0
    for k in range(buckets):               # pass 2: each partition sorted by id
        pieces = sorted(tmp.glob(f"b{k:05d}-*.parquet"))
        if not pieces:
            continue
        table = pa.concat_tables([pq.read_table(x, schema=schema) for x in pieces])
        table = table.sort_by([("id", "ascending"), ("text", "ascending")])
        pq.write_table(table, part_dir / f"part-{k:05d}-0000.parquet", compression="zstd")
        written += 1
        for x in pieces:
            x.unlink()
    tmp.rmdir()
    return written


def _failed_file(label: str, e: Exception) -> dict:
    """The result of a file whose Ray task failed outright: counted, named, the run
    goes on (parts the task wrote before failing stay)."""
    detail = f"{label}: ingest task failed: {type(e).__name__}: {str(e)[:300]}"
    return {"file": label, "seconds": 0.0,
            "stats": {"file_errors": 1, "rejected": 1, "rejected_internal_error": 1},
            "samples": {"internal_error": [{"reason": "internal_error", "detail": detail,
                                            "url": None, "text": ""}]}}


def _guarded(records, label: str):
    """Turn an unexpected exception inside a reader into a file-level reject, so one
    file can never end the run (records already yielded are kept)."""
    try:
        yield from records
    except Exception as e:
        import traceback
        tb = traceback.extract_tb(e.__traceback__)[-1]
        yield Reject("internal_error", f"{label}: reader failed: {type(e).__name__}: "
                     f"{str(e)[:300]} ({Path(tb.filename).name}:{tb.lineno})")


def _labels(files: list[Path]) -> list[str]:
    """File names as record labels; the full path where two inputs share a name."""
    counts = Counter(p.name for p in files)
    return [str(p) if counts[p.name] > 1 else p.name for p in files]


def run_ingest(source: str, kind: Literal["warc", "jsonl", "parquet", "text"],
               files: list[Path], extract: ExtractConfig, ctx: StageContext, *,
               text_field: str = "text", id_field: str = "id", url_field: str = "url",
               text_unit: Literal["file", "paragraph", "line"] = "file",
               order: Literal["input", "id"] = "input",
               use_ray: bool | None = None) -> dict:
    """Read ``files`` of one ``kind`` into a document dataset under ``ctx.out_dir``.

    ``use_ray=None`` runs one Ray task per file when there is more than one file, and
    in-process otherwise (same code, same output). ``order="id"`` rewrites the documents
    (and rejected records) in id order at the end (``canonical_order``); the default keeps
    input order. Returns flat numeric metrics.
    """
    if kind not in KINDS:
        raise ValueError(f"ingest source {source!r}: unknown kind {kind!r}; "
                         f"expected one of {list(KINDS)}")
    if text_unit not in ("file", "paragraph", "line"):
        raise ValueError(f"ingest source {source!r}: unknown text_unit {text_unit!r}; "
                         f"expected 'file', 'paragraph' or 'line'")
    files = [Path(f) for f in files]
    if not files:
        raise ValueError(f"ingest source {source!r}: no input files")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(
                f"ingest source {source!r}: input file not found: {f}"
                + (" (it is a directory)" if f.is_dir() else ""))
    if kind == "parquet":
        for f in files:
            check_parquet_columns(f, text_field)

    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"text_field": text_field, "id_field": id_field, "url_field": url_field,
               "text_unit": text_unit}
    cfg_dict = extract.model_dump(mode="json")
    labels = _labels(files)
    args = [(i, str(f.resolve()), labels[i], kind, source, cfg_dict, str(out_dir), options)
            for i, f in enumerate(files)]

    t0 = time.perf_counter()
    progress = ctx.progress(None, "records", desc=f"{ctx.name} ({source})")
    results: list[dict | None] = [None] * len(files)
    if use_ray is None:
        use_ray = len(files) > 1
    totals: Counter = Counter()

    reported = [0]     # records already shown by in-process reports of the current file

    def report(n: int) -> None:
        reported[0] += n
        progress.update(n)

    def done(i: int, res: dict) -> None:
        results[i] = res
        s = res["stats"]
        totals.update(s)
        progress.update(max(s.get("records_read", 0) - reported[0], 0),
                        files=f"{sum(r is not None for r in results)}/{len(files)}",
                        docs=totals["docs_out"], rejected=totals["rejected"])
        reported[0] = 0

    if use_ray:
        from pipeline.engine import ensure_ray
        ray = ensure_ray(ctx.num_cpus)
        task = ray.remote(num_cpus=1, max_retries=1)(ingest_file)
        pending = {task.remote(*a): a[0] for a in args}
        while pending:
            refs = list(pending)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:     # the worker died (OOM, node lost) twice
                    res = _failed_file(labels[i], e)
                done(i, res)
    else:
        for a in args:
            done(a[0], ingest_file(*a, report=report))
    progress.close()
    if order == "id":
        canonical_order(out_dir / "data", INGEST_SCHEMA, extract.batch_rows)
        canonical_order(out_dir / "rejected", REJECTED_SCHEMA, extract.batch_rows)
    elif order != "input":
        raise ValueError(f"ingest source {source!r}: unknown order {order!r}; expected 'input' or 'id'")
    seconds = time.perf_counter() - t0

    if not any((out_dir / "data").glob("*.parquet")):    # keep the dataset readable
        (out_dir / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_batches([], schema=INGEST_SCHEMA),
                       out_dir / "data" / "part-00000-0000.parquet")

    metrics: dict[str, float] = {
        "files": len(files), "records_read": totals["records_read"],
        "docs_out": totals["docs_out"], "rejected": totals["rejected"],
        "file_errors": totals["file_errors"], "bytes_in": totals["bytes_in"],
        "chars_out": totals["chars_out"], "seconds": round(seconds, 3),
        "records_per_s": round(totals["records_read"] / max(seconds, 1e-9), 1),
        "mb_in_per_s": round(totals["bytes_in"] / 1e6 / max(seconds, 1e-9), 3),
    }
    for k, v in sorted(totals.items()):
        if k.startswith(("rejected_", "skipped_", "charset_")) or k in (
                "blank_lines", "decode_replacements", "units_with_bad_utf8",
                "surrogates_replaced", "payload_truncated", "warc_resyncs",
                "docs_with_metadata", "metadata_unmatched"):
            metrics[k] = v
    # kept / records that were meant to be documents (not skipped WARC records)
    metrics["keep_rate"] = round(metrics["docs_out"] / max(totals["candidates"], 1), 4)

    ctx.metrics(metrics)
    ctx.removals(totals["candidates"], {k[len("rejected_"):]: v for k, v in totals.items()
                                        if k.startswith("rejected_")})
    samples = [row | {"file": r["file"]} for r in results for rows in r["samples"].values()
               for row in rows]
    by_reason: dict[str, list[dict]] = {}
    for row in samples:
        by_reason.setdefault(row["reason"], []).append(row)
    sample_rows = [row for rows in by_reason.values() for row in rows[:SAMPLES_PER_REASON]]
    if sample_rows:
        ctx.table(sample_rows, "rejected_samples.json")
    per_file = [{"file": r["file"], **{k: r["stats"].get(k, 0) for k in
                 ("records_read", "docs_out", "rejected", "file_errors", "bytes_in")},
                 "seconds": round(r["seconds"], 3)} for r in results]
    # keep the table small: the first files, plus every file that had a read failure
    ctx.table(per_file[:MAX_FILE_ROWS] + [r for r in per_file[MAX_FILE_ROWS:]
                                          if r["file_errors"]], "files.json")

    reasons = ", ".join(f"{k[len('rejected_'):]}={v}" for k, v in metrics.items()
                        if k.startswith("rejected_"))
    ctx.note(f"**ingest `{source}`** ({kind}, {len(files)} file(s), "
             f"{metrics['bytes_in'] / 1e6:.1f} MB): {metrics['records_read']} records -> "
             f"**{metrics['docs_out']} documents** ({metrics['chars_out'] / 1e6:.2f} M chars), "
             f"{metrics['rejected']} rejected" + (f" ({reasons})" if reasons else "")
             + f"; {metrics['records_per_s']:.0f} records/s")
    skipped = ", ".join(f"{k[len('skipped_'):]}={v}" for k, v in metrics.items()
                        if k.startswith("skipped_"))
    if skipped:
        ctx.note(f"skipped WARC records (not documents): {skipped}")
    if metrics["file_errors"]:
        bad = [row["detail"] for row in samples if row["reason"] in FILE_REASONS]
        ctx.note(f"⚠ {metrics['file_errors']} file(s) could not be read to the end; "
                 f"records before the failure were kept: " + "; ".join(bad[:5]))
    return metrics
