"""Record readers for JSONL, Parquet and plain text (WARC lives in ``warc.py``).

Every reader is a generator over one file that yields ``Doc`` (a candidate document)
or ``Reject`` (a record that cannot become one, with a reason and a detail naming the
file, the record and the field), and increments counters in ``stats`` for things that
are neither (blank lines, skipped WARC records, decode repairs). Readers stream: memory
is bounded by one record (a line, a Parquet batch, a WARC payload).

A file that breaks part-way (truncated gzip, corrupt Parquet) yields one ``Reject`` for
the failure and stops; everything read before it has already been yielded.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.ingest.config import ExtractConfig


@dataclass
class Doc:
    key: str                        # stable per-source key -> document id
    text: str
    url: str | None = None
    warc_date: str | None = None
    content_type: str | None = None
    where: str = ""                 # human location: "<file> line 12", "<file> record 7"
    record_id: str | None = None    # WARC-Record-ID of the record the text came from
    metadata: dict | None = None    # fields of the WARC metadata record about this capture


@dataclass
class Reject:
    reason: str
    detail: str
    key: str | None = None          # None for file-level failures
    url: str | None = None
    text: str | None = None         # what there is to inspect (truncated by the stage)
    warc_date: str | None = None
    content_type: str | None = None


Record = Doc | Reject

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# errors that mean "the compressed stream or file ends or breaks here"
READ_ERRORS = (EOFError, OSError, zlib.error, ValueError)


class _RawArrow(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (for io.BufferedReader)."""

    def __init__(self, stream):
        self._s = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._s.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._s.close()
        super().close()


def open_binary(path: Path):
    """Open a file for binary reading, decompressing gzip or zstd by magic bytes
    (not by name: a ``.jsonl`` that is really gzip still reads)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rb")
    if head.startswith(_ZSTD_MAGIC):
        import pyarrow as pa
        return io.BufferedReader(_RawArrow(pa.input_stream(str(path), compression="zstd")),
                                 1 << 20)
    return open(path, "rb")


def clean_str(s: str, stats: Counter) -> str:
    """Strings from JSON may hold lone surrogates (``"\\ud800"``) that UTF-8 (and so
    Parquet) cannot store; replace them and count the repair."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        stats["surrogates_replaced"] += 1
        return s.encode("utf-8", "replace").decode("utf-8")


def _opt_str(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _preview(raw: bytes, n: int = 300) -> str:
    return raw[:n].decode("utf-8", "replace")


# ---- JSONL ---------------------------------------------------------------------------

def read_jsonl(path: Path, label: str, cfg: ExtractConfig, stats: Counter, *,
               text_field: str = "text", id_field: str = "id",
               url_field: str = "url") -> Iterator[Record]:
    """One JSON object per line (``.jsonl``, ``.json``, gzip or zstd compressed).

    Key: the ``id_field`` value when present, else ``<file name>:<line>``.
    """
    limit = cfg.max_record_bytes
    line_no = 0
    try:
        with open_binary(path) as fh:
            while True:
                raw = fh.readline(limit + 1)
                if not raw:
                    break
                line_no += 1
                where = f"{label} line {line_no}"
                if len(raw) > limit and not raw.endswith(b"\n"):
                    size = len(raw)
                    while raw and not raw.endswith(b"\n"):      # skip the rest of it
                        raw = fh.readline(1 << 20)
                        size += len(raw)
                    yield Reject("too_large", f"{where}: {size} bytes > max_record_bytes "
                                 f"{limit}", key=f"{label}:{line_no}")
                    continue
                if not raw.strip():
                    stats["blank_lines"] += 1
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Reject("decode_error", f"{where}: invalid UTF-8 byte "
                                 f"0x{raw[e.start]:02x} at byte {e.start}",
                                 key=f"{label}:{line_no}", text=_preview(raw))
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Reject("bad_json", f"{where}: invalid JSON: {e.msg} at column "
                                 f"{e.colno}", key=f"{label}:{line_no}", text=line[:300])
                    continue
                if not isinstance(obj, dict):
                    yield Reject("bad_json", f"{where}: expected a JSON object, got "
                                 f"{type(obj).__name__}", key=f"{label}:{line_no}",
                                 text=line[:300])
                    continue
                yield _from_mapping(obj, where, f"{label}:{line_no}", stats,
                                    text_field, id_field, url_field)
    except READ_ERRORS as e:
        yield Reject("file_truncated" if isinstance(e, (EOFError, zlib.error)) else
                     "unreadable_file",
                     f"{label}: cannot read past line {line_no}: {type(e).__name__}: {e}")


_MISSING = object()


def get_field(obj: dict, name: str):
    """``obj[name]``, or a nested value for a dotted name (``metadata.url``)."""
    if name in obj:
        return obj[name]
    if "." in name:
        cur = obj
        for part in name.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return _MISSING
            cur = cur[part]
        return cur
    return _MISSING


def _from_mapping(obj: dict, where: str, fallback_key: str, stats: Counter,
                  text_field: str, id_field: str, url_field: str) -> Record:
    url = get_field(obj, url_field)
    url = clean_str(_opt_str(url), stats) if url is not _MISSING and url is not None else None
    ident = get_field(obj, id_field)
    key = f"id:{ident}" if ident not in (_MISSING, None, "") else fallback_key
    text = get_field(obj, text_field)
    if text is _MISSING or text is None:
        state = "missing" if text is _MISSING else "null"
        return Reject("missing_field", f"{where}: field {text_field!r} is {state}",
                      key=key, url=url)
    if not isinstance(text, str):
        return Reject("bad_field", f"{where}: field {text_field!r} is "
                      f"{type(text).__name__}, expected a string", key=key, url=url,
                      text=str(text)[:300])
    return Doc(key=clean_str(key, stats), text=clean_str(text, stats), url=url, where=where)


# ---- Parquet -------------------------------------------------------------------------

def read_parquet(path: Path, label: str, cfg: ExtractConfig, stats: Counter, *,
                 text_field: str = "text", id_field: str = "id", url_field: str = "url",
                 batch_rows: int = 4096) -> Iterator[Record]:
    """Rows of a Parquet file; ``text_field`` must be a column (checked up front by
    ``check_parquet_columns``), ``id_field`` / ``url_field`` are used when present.

    Key: the ``id_field`` value when present and not null, else ``<file name>:<row>``.
    """
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if text_field not in names:
            yield Reject("missing_field", f"{label}: no column {text_field!r} "
                         f"(columns: {sorted(names)})")
            return
        cols = [c for c in (text_field, id_field, url_field) if c in names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            data = batch.to_pydict()
            texts = data[text_field]
            ids = data.get(id_field, [None] * len(texts))
            urls = data.get(url_field, [None] * len(texts))
            for text, ident, url in zip(texts, ids, urls):
                obj = {text_field: text, id_field: ident, url_field: url}
                rec = _from_mapping(obj, f"{label} row {row}", f"{label}:{row}", stats,
                                    text_field, id_field, url_field)
                if isinstance(rec, Doc) and len(rec.text) * 4 > cfg.max_record_bytes:
                    size = len(rec.text.encode("utf-8"))
                    if size > cfg.max_record_bytes:
                        rec = Reject("too_large", f"{label} row {row}: {size} bytes > "
                                     f"max_record_bytes {cfg.max_record_bytes}",
                                     key=rec.key, url=rec.url, text=rec.text[:300])
                row += 1
                yield rec
    except READ_ERRORS as e:
        yield Reject("unreadable_file", f"{label}: cannot read past row {row}: "
                     f"{type(e).__name__}: {e}")


def check_parquet_columns(path: Path, text_field: str) -> None:
    """Raise a clear error when a Parquet input lacks the text column (a mapping
    mistake in the spec, not a bad record), before any work starts."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception:       # unreadable: quarantined by read_parquet, not a spec error
        return
    if text_field not in names:
        raise ValueError(f"{path}: Parquet input has no column {text_field!r} "
                         f"(text_field); its columns are {names}")


# ---- plain text ----------------------------------------------------------------------



def read_text(path: Path, label: str, cfg: ExtractConfig, stats: Counter, *,
              unit: str = "file") -> Iterator[Record]:
    """Plain text (optionally compressed): one document per file, paragraph (blocks
    separated by blank lines) or line. Invalid UTF-8 is decoded with U+FFFD and counted
    (``decode_replacements``); a unit is rejected only if nothing is left.

    Key: ``<file name>``, ``<file name>:p<paragraph index>`` or ``<file name>:<line>``.
    """
    limit = cfg.max_record_bytes

    def decode(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            stats["decode_replacements"] += text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
            stats["units_with_bad_utf8"] += 1
            return text

    def as_record(key: str, raw: bytes, where: str) -> Record:
        # UTF-8 text never holds NUL bytes: this is binary data or UTF-16 text
        nul = raw.find(b"\x00")
        if nul >= 0:
            return Reject("binary", f"{where}: NUL bytes at offset {nul}: binary "
                          "data or UTF-16/32 text (convert it to UTF-8)", key=key,
                          text=_preview(raw.replace(b"\x00", b"")))
        return Doc(key=key, text=decode(raw).strip(), where=where)

    line_no = 0
    try:
        with open_binary(path) as fh:
            if unit == "file":
                raw = fh.read(limit + 1)
                if len(raw) > limit:
                    yield Reject("too_large", f"{label}: more than max_record_bytes "
                                 f"{limit} bytes (unit='file'; use unit='paragraph' or "
                                 f"'line' for big files)", key=label)
                    return
                yield as_record(label, raw, label)
                return
            para: list[bytes] = []
            para_size, para_idx, para_line = 0, 0, 1
            for raw in fh:
                line_no += 1
                if unit == "line":
                    if not raw.strip():
                        stats["blank_lines"] += 1
                        continue
                    key = f"{label}:{line_no}"
                    if len(raw) > limit:
                        yield Reject("too_large", f"{label} line {line_no}: {len(raw)} "
                                     f"bytes > max_record_bytes {limit}", key=key)
                        continue
                    yield as_record(key, raw, f"{label} line {line_no}")
                    continue
                # paragraph: accumulate until a blank line
                if raw.strip():
                    if not para:
                        para_line = line_no
                    if para_size <= limit:          # an oversized paragraph is not kept
                        para.append(raw)
                    para_size += len(raw)
                    continue
                if para:
                    yield _paragraph(para, para_size, para_idx, para_line, label, limit, as_record)
                    para, para_size = [], 0
                    para_idx += 1
            if para:
                yield _paragraph(para, para_size, para_idx, para_line, label, limit, as_record)
    except READ_ERRORS as e:
        yield Reject("file_truncated" if isinstance(e, (EOFError, zlib.error)) else
                     "unreadable_file",
                     f"{label}: cannot read past line {line_no}: {type(e).__name__}: {e}")


def _paragraph(lines, size, idx, first_line, label, limit, as_record) -> Record:
    key = f"{label}:p{idx}"
    if size > limit:
        return Reject("too_large", f"{label} paragraph {idx} (line {first_line}): {size} "
                      f"bytes > max_record_bytes {limit}", key=key)
    return as_record(key, b"".join(lines), f"{label} paragraph {idx} (line {first_line})")
