"""Settings of the ingest stage: how HTML becomes text, and which records are kept.

Defaults follow FineWeb / datatrove's ``Trafilatura`` extractor (Penedo et al. 2024:
``favour_precision=True``, comments and images dropped) except ``deduplicate``, which
is off here: trafilatura's deduplication keeps a process-wide cache of segments it has
seen, so the text of a page would depend on which pages the same Ray worker extracted
before it, and outputs would differ between runs. Near-duplicate removal is the dedup
stage's job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.specbase import Model

# Media types treated as HTML (run through the extractor); other kept types are text.
HTML_TYPES = ("text/html", "application/xhtml+xml")


class ExtractConfig(Model):
    """HTML-to-text extraction and record acceptance for ``run_ingest``."""

    _resource_fields = frozenset({"batch_rows", "batch_chars"})

    extractor: Literal["trafilatura"] = "trafilatura"
    # FineWeb extracted Common Crawl with trafilatura favour_precision=True (datatrove).
    favor_precision: bool = True
    favor_recall: bool = False
    include_tables: bool = True        # trafilatura's default; tables carry real text
    include_comments: bool = False     # datatrove: user comments are mostly noise
    # trafilatura's own cross-document dedup is process-global state -> non-deterministic
    deduplicate: bool = False
    fast: bool = False                 # trafilatura fast=True skips the fallback extractors

    # Documents with fewer characters after extraction are rejected "too_short".
    min_text_chars: int = Field(50, ge=0)
    # Raw records (HTTP payload, JSONL line, text unit) above this are rejected "too_large".
    # Common Crawl truncates fetched payloads at 1 MiB, so 5 MB is far beyond any normal page.
    max_record_bytes: int = Field(5_000_000, gt=0)
    # WARC payload media types that are kept (HTML is extracted, text/* taken as-is);
    # anything else is rejected "not_html" with its type in the detail.
    keep_content_types: list[str] = ["text/html", "application/xhtml+xml", "text/plain"]
    # WARC response records with another HTTP status are rejected "http_status".
    keep_http_status: list[int] = [200]
    # Records a crawler cut short (WARC-Truncated header) still extract fine; set False
    # to reject them "payload_truncated".
    keep_truncated_payloads: bool = True
    # WARC `resource` records whose target is not http(s) (wget's own log and manifest,
    # `metadata://...`) are skipped, not documents.
    web_resources_only: bool = True
    # Rejected rows keep at most this many characters of text for inspection.
    rejected_text_chars: int = Field(2000, ge=0)

    # resources (not part of the artifact identity)
    # A worker buffers one part file's rows: at most batch_rows rows or batch_chars
    # characters of text, whichever comes first (bounded memory per worker).
    batch_rows: int = Field(4096, gt=0)
    batch_chars: int = Field(64_000_000, gt=0)

    @model_validator(mode="after")
    def _one_bias(self):
        if self.favor_precision and self.favor_recall:
            raise ValueError("favor_precision and favor_recall are mutually exclusive; "
                             "set at most one to true")
        return self

    def keeps(self, mime: str) -> bool:
        return mime in {t.lower() for t in self.keep_content_types}


TextUnit = Literal["file", "paragraph", "line"]
SourceKind = Literal["warc", "jsonl", "parquet", "text"]
