"""Crawl output: rolled WARC files, the crawl log, and the resume checkpoint.

Layout under the stage's ``out_dir``::

    warc/crawl-00000.warc.gz      closed (committed) WARC files
    warc/crawl-00001.warc.gz.open the file being written (deleted on resume)
    log/part-00000.parquet        crawl-log rows committed with WARC file 0
    state.json                    frontier + seen set, rewritten after every roll
    crawl_log.parquet             all parts concatenated, written when the crawl ends

Each roll is a checkpoint, written ahead: close (fsync) the WARC, write the log rows of
the pages whose records it holds, atomically replace ``state.json`` (which names the file
being published), then rename the WARC into place. A visible ``.warc.gz`` therefore
always belongs to a written state. On resume a file the state names but that is still
``.open`` is renamed (roll forward); any other ``.open`` file or later part is deleted
(roll back) and its pages are fetched again.

Records follow Common Crawl's convention: the payload is stored *decoded* (no
Content-Encoding, no chunking) and the original headers are kept renamed as
``X-Crawler-Content-Encoding`` / ``X-Crawler-Transfer-Encoding`` /
``X-Crawler-Content-Length``, so any WARC reader gets the real bytes back; warcio adds
``WARC-Payload-Digest`` (sha1, base32) and ``WARC-Block-Digest``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.warcwriter import WARCWriter

LOG_SCHEMA = pa.schema([
    ("url", pa.string()),
    ("host", pa.string()),
    ("depth", pa.int32()),
    ("status", pa.int32()),          # null when no HTTP response was received
    ("reason", pa.string()),          # "ok" for kept pages, else why skipped
    ("bytes", pa.int64()),            # bytes on the wire (body, content-encoded)
    ("decoded_bytes", pa.int64()),    # body bytes after content decoding
    ("content_type", pa.string()),
    ("started", pa.float64()),        # unix time the (first) request started
    ("elapsed_s", pa.float64()),
    ("attempts", pa.int32()),
    ("parent", pa.string()),          # page the link was found on (or redirected from)
    ("redirect_to", pa.string()),
    ("warc_file", pa.string()),
])

_RENAMED = {"content-encoding", "transfer-encoding", "content-length"}


class WarcRoller:
    """Append request/response pairs to ``warc/crawl-NNNNN.warc.gz.open``; once ``full()``
    (``max_bytes`` reached) the crawler checkpoints: ``close()`` then ``publish()``."""

    def __init__(self, warc_dir: Path, max_bytes: int, index: int, info: dict):
        self.dir = Path(warc_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.index, self.info = max_bytes, index, info
        self._fh = None
        self._writer: WARCWriter | None = None
        self.records_in_file = 0

    @property
    def name(self) -> str:
        return f"crawl-{self.index:05d}.warc.gz"

    def _open(self) -> None:
        self._fh = open(self.dir / (self.name + ".open"), "wb")
        self._writer = WARCWriter(self._fh, gzip=True, warc_version="WARC/1.1")
        self._writer.write_record(self._writer.create_warcinfo_record(self.name, self.info))

    def write_pair(self, url: str, req_headers: list[tuple[str, str]], status: int, reason: str,
                   http_version: str, resp_headers: list[tuple[str, str]], body: bytes,
                   ip: str | None, fetched_at: float | None = None) -> str:
        """Write one request+response pair; returns the WARC file name it went to."""
        if self._fh is None:
            self._open()
        w = self._writer
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        req = w.create_warc_record(
            url, "request", payload=BytesIO(b""),
            http_headers=StatusAndHeaders(f"GET {target} HTTP/1.1", req_headers,
                                          is_http_request=True))
        headers = []
        for k, v in resp_headers:
            headers.append((f"X-Crawler-{k}", v) if k.lower() in _RENAMED else (k, v))
        headers.append(("Content-Length", str(len(body))))
        proto = "HTTP/1.0" if http_version == "HTTP/1.0" else "HTTP/1.1"
        warc_headers = {"WARC-IP-Address": ip} if ip else {}
        if fetched_at is not None:        # WARC-Date = when the fetch started, not when written
            warc_headers["WARC-Date"] = datetime_to_iso_date(
                datetime.fromtimestamp(fetched_at, timezone.utc).replace(tzinfo=None), use_micros=True)
        resp = w.create_warc_record(
            url, "response", payload=BytesIO(body),
            http_headers=StatusAndHeaders(f"{status} {reason}".strip(), headers, protocol=proto),
            warc_headers_dict=warc_headers or None)
        w.write_request_response_pair(req, resp)
        self.records_in_file += 1
        return self.name

    def full(self) -> bool:
        return self._fh is not None and self._fh.tell() >= self.max_bytes

    def close(self) -> str | None:
        """Finish the current file (flushed and fsynced, still named ``.open``); returns
        its final name, or ``None`` if no file was open. ``publish`` renames it."""
        if self._fh is None:
            return None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = self.name
        self._fh, self._writer, self.records_in_file = None, None, 0
        self.index += 1
        return name

    def publish(self, name: str) -> None:
        """Rename a closed file into place: from here on it counts as committed."""
        os.replace(self.dir / (name + ".open"), self.dir / name)

    def abort(self) -> None:
        """Drop the unfinished file (its pages were never checkpointed)."""
        if self._fh is not None:
            self._fh.close()
            (self.dir / (self.name + ".open")).unlink(missing_ok=True)
            self._fh = None


def write_log_part(log_dir: Path, index: int, rows: list[dict]) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    tmp = log_dir / f"part-{index:05d}.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, log_dir / f"part-{index:05d}.parquet")


def merge_log(log_dir: Path, out_path: Path) -> pa.Table:
    parts = sorted(log_dir.glob("part-*.parquet")) if log_dir.exists() else []
    tables = [pq.read_table(p, schema=LOG_SCHEMA) for p in parts]
    table = pa.concat_tables(tables) if tables else LOG_SCHEMA.empty_table()
    pq.write_table(table, out_path)
    return table


def write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
