"""WARC / WET reader: records -> candidate documents.

``warcio``'s ArchiveIterator reads ``.warc`` and ``.warc.gz`` (one gzip member per
record, or one member for the whole file) and undoes HTTP chunked transfer-encoding
and gzip/deflate content-encoding in ``content_stream()``.

What becomes a document:
- ``response`` records with HTTP status in ``keep_http_status`` and a kept media type:
  HTML through ``html_to_text`` (charset from the header, ``<meta>`` or detection),
  ``text/*`` decoded as-is;
- ``resource`` records the same way (target must be http(s) unless
  ``web_resources_only`` is off: wget stores its log as a ``metadata://`` resource);
- ``conversion`` records (Common Crawl WET: text already extracted) taken as-is.
``request``, ``warcinfo`` and ``revisit`` records are skipped and counted
(``skipped_<type>``). A ``metadata`` record (``application/warc-fields``) about a capture
(``WARC-Concurrent-To``/``WARC-Refers-To`` naming the response record; Common Crawl
writes one after every response, with ``languages-cld2``, ``charset-detected``, ...)
is attached to that capture's document (``Doc.metadata``) when it follows it, and
counted as ``skipped_metadata`` like the others; one about no document read is counted
``metadata_unmatched``.

Document keys (the ingest stage hashes them with the source name into the id) are the
capture's target URL plus a digest of its payload, so the same page captured with the
same content gets the same id in every crawl, whatever WARC-Record-ID (a random UUID)
the writer gave it; a record without a target URL falls back to file name + index. A
WARC written by forgeflow's crawl of the generated local web names the site's base URL
(a random 127.0.0.1 port) in its ``warcinfo`` record (``forgeflow-local-site``); URLs
under it are rewritten to ``LOCAL_SITE_URL``, in the ``url`` column and in the key, so
two fresh crawls of the local web give byte-identical documents.

Truncation and corruption: warcio stops silently when a ``.warc.gz`` is cut inside a
record, so the reader checks two things itself: after each record it drains the body
and sees whether Content-Length bytes really arrived, and at the end it checks that the
iterator consumed the whole file. Where reading breaks (a cut, a corrupt gzip member, a
garbled header) it looks for the next readable record start (a gzip member that
decompresses to ``WARC/``, or a ``WARC/1.x`` line) and goes on from there: the broken
stretch is one ``warc_unreadable`` reject naming file, offsets and record; a break with
nothing readable after it (a truncated download) is one ``warc_truncated`` reject.
Records before (and after) the break are kept.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import xxhash

from pipeline.ingest.config import HTML_TYPES, ExtractConfig
from pipeline.ingest.extract import charset_from_content_type, decode_html, html_to_text
from pipeline.ingest.readers import Doc, Record, Reject, open_binary

_SKIPPED = {"request", "metadata", "warcinfo", "revisit"}
# the local web's URLs, whatever port it was served on (".invalid": never resolvable, RFC 2606)
LOCAL_SITE_URL = "http://local-site.invalid"
LOCAL_SITE_FIELD = "forgeflow-local-site"
_KNOWN = _SKIPPED | {"response", "resource", "conversion", "continuation"}


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _looks_like_html(payload: bytes) -> bool:
    head = payload[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


@dataclass
class _Meta:
    """A metadata record's fields and the record it describes (internal to this module)."""

    refers_to: str | None
    fields: dict


def read_warc(path: Path, label: str, cfg: ExtractConfig, stats: Counter) -> Iterator[Record]:
    """Yield a ``Doc`` or ``Reject`` per content record of one WARC/WET file."""
    yield from _join_metadata(_read_records(path, label, cfg, stats), stats)


def _join_metadata(records: Iterator[Record | _Meta], stats: Counter) -> Iterator[Record]:
    """Attach each metadata record to the document of the capture it describes.

    A document is held back until the next record arrives (a metadata record follows
    its response directly in Common Crawl and wget WARCs), so memory stays one record."""
    pending: Doc | None = None
    for rec in records:
        if isinstance(rec, _Meta):
            if pending is not None and rec.refers_to and rec.refers_to == pending.record_id:
                pending.metadata = {**(pending.metadata or {}), **rec.fields}
            elif rec.refers_to:
                stats["metadata_unmatched"] += 1
            continue
        if pending is not None:
            yield pending
            pending = None
        if isinstance(rec, Doc):
            pending = rec
        else:
            yield rec
    if pending is not None:
        yield pending


def parse_warc_fields(payload: bytes) -> dict[str, str]:
    """``application/warc-fields``: ``name: value`` lines (WARC 1.1 section 6.8)."""
    fields: dict[str, str] = {}
    for line in payload.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            fields[name.strip()] = value.strip()
    return fields


def _read_records(path: Path, label: str, cfg: ExtractConfig,
                  stats: Counter) -> Iterator[Record | _Meta]:
    from warcio.archiveiterator import ArchiveIterator

    try:
        with open_binary(path) as peek:
            head = peek.read(64).lstrip()
    except Exception as e:
        head = f"<unreadable: {type(e).__name__}: {e}>".encode()
    if not head.startswith((b"WARC/", b"filedesc://")):
        # warcio is lenient enough to parse JSON lines as "records"; refuse up front
        yield Reject("warc_unreadable", f"{label}: not a WARC/ARC file (starts with "
                     f"{head[:40]!r})")
        return
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        index, done, start = -1, 0, 0     # record index, records read whole, offset
        local_base = None                 # the local web's served URL, from warcinfo
        while True:                      # one pass per readable stretch of the file
            fh.seek(start)
            it = ArchiveIterator(fh, arc2warc=True)
            broken = None                # (offset, what, record) where reading broke
            try:
                for rec in it:
                    index += 1
                    protocol = rec.rec_headers.protocol or ""
                    if not protocol.startswith("WARC/") or rec.rec_type not in _KNOWN:
                        broken = (start + it.offset, f"not a WARC record (version "
                                  f"{protocol[:20]!r}, type {str(rec.rec_type)[:20]!r})", None)
                        break
                    if rec.rec_type == "warcinfo":
                        local_base = _local_site_base(rec) or local_base
                    out = _record(rec, index, label, cfg, stats, local_base)
                    missing = _drain(rec)        # read the rest: did it all arrive?
                    if missing:
                        length = rec.rec_headers.get_header("Content-Length")
                        broken = (start + it.get_record_offset(),
                                  f"record {index} ({rec.rec_type}) body cut short, "
                                  f"{missing} of {length} bytes missing", rec)
                        break
                    done += 1
                    if out is not None:
                        yield out
                else:
                    # warcio ends quietly when a gzip member or a record header is cut:
                    # check that the whole file was consumed (only whitespace may remain)
                    end = start + it.offset
                    if end < size:
                        fh.seek(end)
                        if fh.read(4096).strip():
                            broken = (end, "unreadable data after the last good record", None)
            except Exception as e:       # corrupt gzip member, bad headers, ...
                broken = (start + it.offset, _msg(e), None)
            if broken is None:
                return
            at, what, rec = broken
            resume = _resync(fh, at + 1, gz)
            where = (f"{label}: cannot read at offset {at} of {size} bytes (after "
                     f"{done} good records): {what}")
            if resume is None:
                detail = f"{where}; nothing readable follows (file truncated)"
            else:
                detail = f"{where}; skipped to the next record at offset {resume}"
                stats["warc_resyncs"] += 1
            reason = "warc_truncated" if resume is None else "warc_unreadable"
            if rec is not None:          # a half-read record: quarantine it by name
                url = _target_url(rec, local_base)
                yield Reject(reason, detail, key=_key(rec, url, label, index), url=url,
                             warc_date=rec.rec_headers.get_header("WARC-Date"))
            else:
                yield Reject(reason, detail)
            if resume is None:
                return
            start = resume


def _msg(e: Exception) -> str:
    """An exception as one printable line (warcio errors can quote raw bytes)."""
    return f"{type(e).__name__}: " + ascii(str(e)[:120])[1:-1]


def _resync(fh, pos: int, gz: bool) -> int | None:
    """Offset of the next readable record start at or after ``pos``: a gzip member
    that decompresses to ``WARC/`` (for .warc.gz), or a ``WARC/1.x`` line (plain)."""
    marker = b"\x1f\x8b\x08" if gz else b"\nWARC/1."
    chunk = 1 << 20
    while True:
        fh.seek(pos)
        buf = fh.read(chunk + len(marker))
        if len(buf) < len(marker):
            return None
        i = buf.find(marker)
        while i >= 0:
            cand = pos + i + (0 if gz else 1)
            if not gz or _gzip_member_is_warc(fh, cand):
                return cand
            i = buf.find(marker, i + 1)
        pos += chunk


def _gzip_member_is_warc(fh, offset: int) -> bool:
    fh.seek(offset)
    try:
        head = zlib.decompressobj(31).decompress(fh.read(4096), 16)
    except zlib.error:
        return False
    return head.startswith(b"WARC/")


def _metadata(rec) -> _Meta | None:
    """The fields of a ``metadata`` record about a capture (others: None)."""
    h = rec.rec_headers
    refers = h.get_header("WARC-Concurrent-To") or h.get_header("WARC-Refers-To")
    if not refers or _mime(h.get_header("Content-Type")) != "application/warc-fields":
        return None
    try:
        payload = rec.content_stream().read(1 << 20)
    except Exception:
        return None
    return _Meta(refers, parse_warc_fields(payload))


def _drain(rec) -> int:
    """Read the rest of a record's raw body; return how many bytes never arrived."""
    raw = rec.raw_stream
    while raw.read(1 << 16):
        pass
    return int(getattr(raw, "limit", 0) or 0)


def _local_site_base(rec) -> str | None:
    """The ``forgeflow-local-site`` field of a warcinfo record (``key: value`` lines)."""
    try:
        body = rec.content_stream().read(1 << 16).decode("utf-8", "replace")
    except Exception:
        return None
    for line in body.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == LOCAL_SITE_FIELD and value.strip():
            return value.strip().rstrip("/")
    return None


def _target_url(rec, local_base: str | None) -> str | None:
    url = rec.rec_headers.get_header("WARC-Target-URI")
    if url and local_base and (url == local_base or url.startswith(local_base + "/")):
        url = LOCAL_SITE_URL + url[len(local_base):]
    return url


def _key(rec, url: str | None, label: str, index: int, payload: bytes | None = None) -> str:
    """Target URL + payload digest (the WARC-Payload-Digest header before the payload is
    read), stable across crawls; file name + record index for a record without a URL."""
    if not url:
        return f"{label}#{index}"
    if payload is not None:
        return f"url:{url}#xxh3:{xxhash.xxh3_64_hexdigest(payload)}"
    digest = rec.rec_headers.get_header("WARC-Payload-Digest")
    return f"url:{url}#{digest}" if digest else f"url:{url}"


def _record(rec, index: int, label: str, cfg: ExtractConfig, stats: Counter,
            local_base: str | None = None) -> Record | _Meta | None:
    rtype = rec.rec_type
    if rtype in _SKIPPED or rtype == "continuation":
        stats[f"skipped_{rtype}"] += 1
        if rtype == "metadata":
            return _metadata(rec)
        return None
    h = rec.rec_headers
    url = _target_url(rec, local_base)
    date = h.get_header("WARC-Date")
    rid = h.get_header("WARC-Record-ID")
    key = _key(rec, url, label, index)
    where = f"{label} record {index} ({rtype} {url})"
    if rtype == "resource" and cfg.web_resources_only and \
            not (url or "").lower().startswith(("http://", "https://")):
        stats["skipped_resource_not_web"] += 1
        return None
    if h.get_header("WARC-Truncated"):
        stats["payload_truncated"] += 1
        if not cfg.keep_truncated_payloads:
            return Reject("payload_truncated", f"{where}: WARC-Truncated: "
                          f"{h.get_header('WARC-Truncated')}", key=key, url=url,
                          warc_date=date)

    if rtype == "conversion":                       # WET: text already extracted
        content_type = h.get_header("Content-Type") or "text/plain"
    elif rec.http_headers is not None and rtype == "response":
        status = rec.http_headers.get_statuscode()
        content_type = rec.http_headers.get_header("Content-Type")
        if not status or not status.isdigit() or int(status) not in cfg.keep_http_status:
            return Reject("http_status", f"{where}: HTTP status {status}", key=key,
                          url=url, warc_date=date, content_type=content_type)
    else:
        content_type = h.get_header("Content-Type")

    try:
        payload = rec.content_stream().read(cfg.max_record_bytes + 1)
    except Exception as e:       # broken chunked / gzip content-encoding
        return Reject("decode_error", f"{where}: cannot decode the HTTP body: "
                      f"{type(e).__name__}: {str(e)[:200]}", key=key, url=url,
                      warc_date=date, content_type=content_type)
    if len(payload) > cfg.max_record_bytes:
        return Reject("too_large", f"{where}: payload over max_record_bytes "
                      f"{cfg.max_record_bytes}", key=key, url=url, warc_date=date,
                      content_type=content_type)

    if payload[:2] == b"\x1f\x8b" and rec.http_headers is not None and \
            rec.http_headers.get_header("Content-Encoding"):
        # warcio hands back the raw bytes when it cannot undo the content-encoding
        return Reject("decode_error", f"{where}: HTTP body is still gzip data (Content-"
                      f"Encoding {rec.http_headers.get_header('Content-Encoding')!r} could "
                      f"not be undone: corrupt or truncated)", key=key, url=url,
                      warc_date=date, content_type=content_type)
    key = _key(rec, url, label, index, payload)
    mime = _mime(content_type)
    if rtype == "conversion":
        text, how = decode_html(payload, charset_from_content_type(content_type) or "utf-8")
        return Doc(key=key, text=text.strip(), url=url, warc_date=date,
                   content_type=content_type, where=where, record_id=rid)
    is_html = mime in HTML_TYPES or (not mime and _looks_like_html(payload))
    if not (is_html or (mime and cfg.keeps(mime))):
        return Reject("not_html", f"{where}: content type {content_type!r} is not kept "
                      f"(keep_content_types={cfg.keep_content_types})", key=key, url=url,
                      warc_date=date, content_type=content_type)

    text, how = decode_html(payload, charset_from_content_type(content_type))
    stats[f"charset_{how}"] += 1
    if not is_html:
        return Doc(key=key, text=text.strip(), url=url, warc_date=date,
                   content_type=content_type, where=where, record_id=rid)
    try:
        extracted = html_to_text(text, url, cfg)
    except Exception as e:        # an extractor bug on one page must not end the run
        return Reject("extract_error", f"{where}: {cfg.extractor} failed: "
                      f"{type(e).__name__}: {str(e)[:200]}", key=key, url=url,
                      text=text[:300], warc_date=date, content_type=content_type)
    if not extracted:
        return Reject("extract_empty", f"{where}: {cfg.extractor} found no main text in "
                      f"{len(payload)} bytes of HTML", key=key, url=url, text=text[:300],
                      warc_date=date, content_type=content_type)
    return Doc(key=key, text=extracted, url=url, warc_date=date, content_type=content_type,
               where=where, record_id=rid)
