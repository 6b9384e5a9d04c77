"""Bad-words rules: the list loader and matcher shared with C4, and a fraction filter.

Lists are plain files, one word or phrase per line (the LDNOOBW format C4 used). C4
(Raffel et al. 2020) drops any page containing a listed word, matched on the lowercased
text with non-word characters (or the text's ends) on both sides:
``(?:\\W|^)(w1|w2|...)(?:\\W|$)``. For lists of languages written without spaces
(``ja``, ``zh``) set ``word_boundaries: false`` so entries match as substrings.

The ``badwords`` filter is the softer toxicity rule: remove a document when listed words
make up more than ``max_fraction`` of its words (no published default; 0.01 = one in a
hundred words), or, with ``max_fraction: 0``, when it contains any (C4's rule).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.text import TextBatch, safe_ratio


def load_badwords(paths: list[str | Path]) -> list[str]:
    """Lowercased, de-duplicated entries of the list files (blank lines and ``#`` comments skipped)."""
    words: dict[str, None] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"bad-words list not found: {path}")
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            w = line.strip().lower()
            if w and not w.startswith("#"):
                words[w] = None
    return list(words)


def badwords_pattern(words: list[str], word_boundaries: bool = True) -> str:
    """RE2 pattern matching any entry (longest entries first so phrases win)."""
    alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    if word_boundaries:
        return rf"(?:\W|^)(?:{alt})(?:\W|$)"
    return f"(?:{alt})"


class BadWordsConfig(FilterConfig):
    type: Literal["badwords"] = "badwords"
    paths: list[str] = Field(min_length=1, description="bad-word list files, one entry a line")
    word_boundaries: bool = True
    max_fraction: float = 0.01


class BadWordsFilter(Filter):
    config_cls = BadWordsConfig
    columns = {"count": pa.float64(), "fraction": pa.float64()}

    def __init__(self, cfg: BadWordsConfig, model_dir=None):
        super().__init__(cfg, model_dir)
        self.pattern = badwords_pattern(load_badwords(cfg.paths), cfg.word_boundaries)

    def score(self, batch: TextBatch) -> dict[str, np.ndarray]:
        count = np.asarray(pc.count_substring_regex(batch.lower, self.pattern), dtype=np.float64)
        return {"count": count, "fraction": safe_ratio(count, batch.words.count)}

    def keep(self, s):
        thr = self.cfg.max_fraction
        if thr == 0:
            rule = Rule("count", s["count"], s["count"] > 0, "==", 0)
        else:
            rule = Rule("fraction", s["fraction"], s["fraction"] > thr, "<=", thr)
        return decide([rule], len(s["count"]))
