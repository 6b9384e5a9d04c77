"""Ingest: WARC / WET / JSONL / Parquet / plain text -> a document dataset (Parquet).

Entry point ``run_ingest`` (stage.py); settings ``ExtractConfig`` (config.py); the HTML
extractor ``html_to_text`` (extract.py) is shared with the crawl stage.
"""

from pipeline.ingest.config import ExtractConfig
from pipeline.ingest.extract import decode_html, html_to_text
from pipeline.ingest.stage import INGEST_SCHEMA, REJECTED_SCHEMA, doc_id, run_ingest

__all__ = ["ExtractConfig", "INGEST_SCHEMA", "REJECTED_SCHEMA", "decode_html", "doc_id",
           "html_to_text", "run_ingest"]
