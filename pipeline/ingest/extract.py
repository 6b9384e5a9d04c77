"""HTML bytes -> main-content text.

``decode_html`` turns raw payload bytes into ``str`` following the order browsers use
(WHATWG encoding sniffing, simplified): byte-order mark, the HTTP ``Content-Type``
charset, a ``<meta charset>`` / ``http-equiv`` declaration in the first 4 KiB, then
UTF-8, then statistical detection (charset-normalizer, a trafilatura dependency), and
finally cp1252 with replacement characters, so no input byte sequence can raise.
Labels ``iso-8859-1`` / ``latin-1`` / ``ascii`` mean cp1252 on the web (WHATWG).

``html_to_text`` runs trafilatura with the settings of ``ExtractConfig`` and returns
``None`` when nothing is left.
"""

from __future__ import annotations

import codecs
import logging
import re

from pipeline.ingest.config import ExtractConfig

_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_:.+-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
# WHATWG Encoding Standard: these labels are decoded as windows-1252.
_WEB_ALIASES = {"iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252",
                "latin-1": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252",
                "l1": "cp1252", "x-sjis": "shift_jis", "gb2312": "gb18030", "gbk": "gb18030"}

logging.getLogger("trafilatura").setLevel(logging.ERROR)
logging.getLogger("htmldate").setLevel(logging.ERROR)


def charset_from_content_type(content_type: str | None) -> str | None:
    """``text/html; charset=ISO-8859-1`` -> ``iso-8859-1``."""
    if not content_type:
        return None
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'").lower()
    return None


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    label = _WEB_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(data: bytes, header_charset: str | None = None) -> tuple[str, str]:
    """Decode HTML bytes; returns ``(text, how)`` where ``how`` names the winning rule
    (``bom``, ``header``, ``meta``, ``utf-8``, ``detected``, ``fallback``)."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(enc, errors="replace"), "bom"
    meta = _META_CHARSET.search(data[:4096])
    for how, label in (("header", header_charset),
                       ("meta", meta.group(1).decode("ascii", "ignore") if meta else None),
                       ("utf-8", "utf-8")):
        enc = _codec(label)
        if enc is None or enc.startswith("utf-16"):   # utf-16 without a BOM is a lie
            continue
        try:
            return data.decode(enc), how
        except (UnicodeDecodeError, LookupError):
            continue
    try:
        from charset_normalizer import from_bytes
        best = from_bytes(data[:200_000]).best()
        if best is not None and best.encoding:
            return data.decode(best.encoding, errors="replace"), "detected"
    except Exception:   # detection is best effort; the fallback below always works
        pass
    return data.decode("cp1252", errors="replace"), "fallback"


def html_to_text(html: bytes | str, url: str | None, cfg: ExtractConfig,
                 header_charset: str | None = None) -> str | None:
    """Main text of an HTML page (trafilatura, plain-text output), or ``None``.

    ``html`` may be bytes (decoded with ``decode_html``) or an already-decoded string.
    Raises only on extractor bugs; callers quarantine those as ``extract_error``.
    """
    import trafilatura

    if isinstance(html, bytes):
        html, _ = decode_html(html, header_charset)
    if not html or not html.strip():
        return None
    text = trafilatura.extract(
        html, url=url, output_format="txt", fast=cfg.fast,
        favor_precision=cfg.favor_precision, favor_recall=cfg.favor_recall,
        include_tables=cfg.include_tables, include_comments=cfg.include_comments,
        include_images=False, include_links=False, deduplicate=cfg.deduplicate,
        with_metadata=False)
    if text is None:
        return None
    text = text.strip()
    return text or None
