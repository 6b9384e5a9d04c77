"""URL normalisation, link extraction and scope rules.

Normalisation is deliberately conservative (RFC 3986 section 6.2.2 syntax-based
normalisation only): lower-case scheme and host, IDNA host, drop the default port, the
fragment and dot segments, add ``/`` as an empty path. The query string is left alone;
reordering it can change what a server returns.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class BadURL(ValueError):
    """A link that cannot be fetched; ``reason`` goes to the crawl log."""

    def __init__(self, reason: str, url: str):
        super().__init__(f"{reason}: {url!r}")
        self.reason = reason


def normalize(url: str, base: str | None = None) -> str:
    """Absolute, normalised http(s) URL, or ``BadURL`` with a reason."""
    raw = url.strip()
    if base is not None:
        try:
            raw = urljoin(base, raw)
        except ValueError as e:
            raise BadURL("invalid_url", url) from e
    try:
        parts = urlsplit(raw)
        port = parts.port          # raises ValueError on a bad port
    except ValueError as e:
        raise BadURL("invalid_url", url) from e
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadURL("bad_scheme", url)
    host = (parts.hostname or "").rstrip(".")
    if not host or any(c in host for c in " \t\r\n<>\"'{}|\\^`%"):
        raise BadURL("invalid_url", url)
    try:
        host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError as e:
        raise BadURL("invalid_url", url) from e
    if ":" in host:                      # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path or "/"
    if "/." in path:
        trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
        path = posixpath.normpath(path)
        path = ("/" + path.lstrip("/")) + ("/" if trailing and path != "/" else "")
    # percent-encode what must be encoded, keep what already is
    path = quote(path, safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return urlunsplit((scheme, netloc, path, query, ""))


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def origin_of(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


class Scope:
    """Which normalised URLs the crawl may visit: allowed domains (and subdomains),
    regex allow list (any must match if given) and deny list (none may match)."""

    def __init__(self, allowed_domains: list[str], allow_patterns: list[str],
                 deny_patterns: list[str]):
        self.domains = [d.lower().lstrip(".") for d in allowed_domains]
        self.allow = [re.compile(p) for p in allow_patterns]
        self.deny = [re.compile(p) for p in deny_patterns]

    def reason(self, url: str) -> str | None:
        """``None`` if in scope, else the skip reason for the crawl log."""
        host = host_of(url)
        if self.domains and not any(host == d or host.endswith("." + d) for d in self.domains):
            return "out_of_domain"
        if self.allow and not any(p.search(url) for p in self.allow):
            return "not_allowed_pattern"
        if any(p.search(url) for p in self.deny):
            return "denied_pattern"
        return None


def extract_links(body: bytes, page_url: str, charset: str | None = None
                  ) -> tuple[list[tuple[str, bool]], bool]:
    """``([(href, rel_nofollow), ...], meta_nofollow)`` from an HTML body.

    hrefs are returned raw (joined against ``<base href>`` when there is one, else
    unresolved) in document order, so an invalid one can still be logged with a reason.
    lxml recovers from malformed markup; a body it cannot parse at all yields no links
    (the page itself is still kept)."""
    import lxml.html

    if not body.strip():
        return [], False
    doc = None
    for attempt in (body, body.decode(charset or "utf-8", "replace")):
        try:
            doc = lxml.html.document_fromstring(attempt)
            break
        except Exception:   # lxml raises ParserError/ValueError on empty or odd input
            continue
    if doc is None:
        return [], False
    base = doc.xpath("string(//base/@href)").strip()
    meta_nofollow = any(
        "nofollow" in c.lower() or c.strip().lower() == "none"
        for c in doc.xpath("//meta[translate(@name,'ROBTS','robts')='robots']/@content"))
    out = []
    for a in doc.xpath("//a[@href] | //area[@href]"):
        href = a.get("href")
        if base:
            try:
                href = urljoin(urljoin(page_url, base), href)
            except ValueError:
                pass
        out.append((href, "nofollow" in (a.get("rel") or "").lower()))
    return out, meta_nofollow
