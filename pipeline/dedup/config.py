"""Spec of the dedup stage: exact dedup of normalised text (and optionally URL), then
MinHash LSH near-dedup, then one document kept per duplicate cluster.

Defaults follow the published settings gathered in RESEARCH.md:
  * 5-word shingles after normalisation (FineWeb, Gopher-style dedup);
  * 112 permutations; bands x rows derived from the threshold by default (datasketch
    ``_optimal_param``, equal false-positive/negative weights); FineWeb's 14 x 8 is
    ``bands: 14, rows: 8`` (P(candidate | Jaccard 0.8) ~ 0.92, but ~0.35 at Jaccard 0.55);
  * threshold 0.7 (text-dedup / data-juicer), and exact-Jaccard verification of candidate
    pairs on by default, so pages below the threshold are not merged (a MinHash band
    collision alone is not enough);
  * ``upsampling_weights``: FineWeb-2's rehydration, a ``sampling_weight`` column on kept
    documents from their cluster size (the tokenize stage can repeat them by it).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.specbase import Model


class DedupConfig(Model):
    """``dedup:`` section of the spec."""

    # --- exact dedup -------------------------------------------------------------------
    exact: bool = Field(True, description="drop documents whose normalised text is identical")
    exact_url: bool = Field(False, description="also treat documents with the same non-empty URL as exact duplicates")

    # --- MinHash LSH ---------------------------------------------------------------------
    minhash: bool = Field(True, description="near-duplicate detection with MinHash LSH")
    ngram: int = Field(5, ge=1, le=64, description="shingle size: words (or characters for no-space languages)")
    char_ngrams: bool | None = Field(
        None, description="character n-grams instead of word n-grams; None = auto per document "
                          "(lang column in zh/ja/th/lo/km/my/bo, or text with almost no spaces)")
    num_perm: int = Field(112, ge=2, le=1024, description="MinHash permutations (FineWeb: 112)")
    bands: int | None = Field(None, ge=1, description="LSH bands (FineWeb: 14); None = derive from threshold")
    rows: int | None = Field(None, ge=1, description="rows per band (FineWeb: 8); None = derive from threshold")
    threshold: float = Field(0.7, gt=0.0, lt=1.0,
                             description="Jaccard similarity counted as duplicate (text-dedup/data-juicer: 0.7)")
    scheme: Literal["affine32", "legacy"] = Field(
        "affine32", description="datasketch permutation scheme: affine32 (datasketch>=2.0 default) or "
                                "legacy ((a*h+b) mod 2^61-1, truncated to 32 bits; datasketch<2.0)")
    shingle_hash: Literal["rolling64", "sha1"] = Field(
        "rolling64", description="32-bit shingle hash: rolling64 (vectorised polynomial hash, "
                                 "~30x faster) or sha1 (datasketch's default sha1_hash32)")
    verify_jaccard: bool = Field(True, description="check candidate pairs with exact shingle Jaccard >= threshold")
    upsampling_weights: dict[int, int] | None = Field(
        None, description="FineWeb-2 rehydration: {min cluster size: weight}, e.g. "
                          "{1: 1, 2: 2, 3: 3, 5: 5, 100: 8, 1000: 1}; kept documents get "
                          "`sampling_weight` = the weight of the largest key <= their cluster size")
    seed: int = Field(1, description="permutation seed (datasketch MinHash default seed = 1)")

    # --- which document survives ---------------------------------------------------------
    keep: Literal["first", "longest", "quality"] = Field(
        "first", description="first in input order, longest text, or highest `quality_column`")
    quality_column: str = Field("quality_score", description="column used by keep='quality' (filter stage's DCLM score)")

    # --- resources (not part of the artifact identity) ---------------------------------
    batch_size: int = Field(1024, ge=1, description="documents per vectorised signature batch")
    unit_rows: int = Field(20_000, ge=1, description="rows per Ray work unit (one output part per unit)")
    rows_per_partition: int = Field(500_000, ge=1000, description="key rows per LSH shuffle partition")
    _resource_fields = frozenset({"batch_size", "unit_rows", "rows_per_partition"})

    @model_validator(mode="after")
    def _check_bands(self) -> "DedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither (then they come from `threshold`)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    @model_validator(mode="after")
    def _check_weights(self) -> "DedupConfig":
        w = self.upsampling_weights
        if w is not None and (1 not in w or any(k < 1 or v < 0 for k, v in w.items())):
            raise ValueError("upsampling_weights needs key 1 (singletons), keys >= 1, weights >= 0")
        return self

    def sampling_weight(self, cluster_size: np.ndarray) -> np.ndarray:
        """FineWeb-2's ``Rehydrater``: weight of the largest key <= each cluster size."""
        keys = np.array(sorted(self.upsampling_weights), dtype=np.int64)
        vals = np.array([self.upsampling_weights[k] for k in keys], dtype=np.int64)
        return vals[np.searchsorted(keys, np.asarray(cluster_size, dtype=np.int64), side="right") - 1]

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): as given, or datasketch's ``_optimal_param(threshold, num_perm, 0.5, 0.5)``."""
        if self.bands is not None:
            return self.bands, self.rows
        from pipeline.dedup.minhash import optimal_param
        return optimal_param(self.threshold, self.num_perm)
