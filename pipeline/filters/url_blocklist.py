"""URL blocklists: banned domains and banned keywords, from files.

As in RefinedWeb / FineWeb (datatrove ``URLFilter``, which ships the UT1 blocklist): a
document is removed when its URL's host is a listed domain or a subdomain of one
(``ads.example.com`` is blocked by ``example.com``), or when the lowercased URL contains
a listed keyword. Files hold one entry a line; ``#`` starts a comment. Documents without a
URL pass (there is nothing to judge).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.badwords import badwords_pattern
from pipeline.filters.text import TextBatch

HOST_RE = r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://)?(?:[^@/?#]*@)?(?P<host>[^/:?#]*)"


def _read_list(paths: list[str]) -> list[str]:
    out: dict[str, None] = {}
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if line:
                out[line] = None
    return list(out)


class URLBlocklistConfig(FilterConfig):
    type: Literal["url_blocklist"] = "url_blocklist"
    domain_paths: list[str] = []
    keyword_paths: list[str] = []
    domains: list[str] = []          # inline entries, added to the files'
    keywords: list[str] = []


class URLBlocklistFilter(Filter):
    config_cls = URLBlocklistConfig
    columns = {"blocked": pa.string()}

    def __init__(self, cfg: URLBlocklistConfig, model_dir=None):
        super().__init__(cfg, model_dir)
        self.domains = set(_read_list(cfg.domain_paths)) | {d.lower().strip(".") for d in cfg.domains}
        kws = _read_list(cfg.keyword_paths) + [k.lower() for k in cfg.keywords]
        self.keywords = badwords_pattern(kws, word_boundaries=False) if kws else None

    def _blocked_domain(self, host: str) -> str | None:
        labels = host.strip(".").split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self.domains:
                return "domain:" + suffix
        return None

    def score(self, batch: TextBatch) -> dict[str, list]:
        url = batch.column("url")
        if url is None:
            return {"blocked": [None] * batch.n}
        url = pc.utf8_lower(url.cast(pa.string()).fill_null(""))
        blocked = np.full(batch.n, None, dtype=object)
        if self.domains:
            hosts = pc.struct_field(pc.extract_regex(url, HOST_RE), "host")
            enc = pc.dictionary_encode(hosts)
            verdict = [self._blocked_domain(h) if h else None for h in enc.dictionary.to_pylist()]
            idx = np.asarray(enc.indices.fill_null(-1))
            for i in np.flatnonzero(idx >= 0):
                blocked[i] = verdict[idx[i]]
        if self.keywords:
            found = pc.extract_regex(url, f"(?P<kw>{self.keywords})")
            kw = pc.struct_field(found, "kw").to_pylist()
            for i, k in enumerate(kw):
                if k and blocked[i] is None:
                    blocked[i] = "keyword:" + k
        return {"blocked": list(blocked)}

    def keep(self, s):
        b = np.array([x is not None for x in s["blocked"]], dtype=bool)
        return decide([Rule("url", np.array(s["blocked"], dtype=object), b)], len(b))
