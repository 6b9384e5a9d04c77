"""Deduplication: exact (normalised text, optional URL) and MinHash LSH near-duplicates.

Entry point: ``pipeline.dedup.stage.run_dedup(cfg, docs_dir, ctx)``; config:
``pipeline.dedup.config.DedupConfig``; signatures: ``pipeline.dedup.minhash.signatures``.
"""

from pipeline.dedup.config import DedupConfig

__all__ = ["DedupConfig"]
