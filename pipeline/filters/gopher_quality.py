"""Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

Defaults as published (RESEARCH.md): 50-100,000 words not counting symbol-only tokens;
mean word length 3-10; ``#`` per word <= 0.1; ellipses per word <= 0.1; <= 90% of lines
starting with a bullet; <= 30% of lines ending with an ellipsis; >= 80% of words with an
alphabetic character; >= 2 stop words. Reference implementation: datatrove
``GopherQualityFilter``.

Definitions: a *word* is a whitespace token (per character in scripts without spaces,
see ``text.py``); a *symbol-only* token consists only of punctuation/symbols (Unicode
P*/S*); word length is measured after stripping punctuation from both ends; stop words
are matched case-insensitively and counted per occurrence (as datatrove does). The stop
word rule is English-specific: set ``min_stop_words: 0`` for other languages.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.text import PUNCT_CHARS, TextBatch, safe_ratio

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


class GopherQualityConfig(FilterConfig):
    type: Literal["gopher_quality"] = "gopher_quality"
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1       # '#' and ellipses, each, per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = STOP_WORDS


class GopherQualityFilter(Filter):
    config_cls = GopherQualityConfig
    columns = {c: pa.float64() for c in (
        "n_words", "avg_word_length", "hash_ratio", "ellipsis_ratio", "bullet_lines_ratio",
        "ellipsis_lines_ratio", "alpha_words_ratio", "stop_words")}

    def score(self, batch: TextBatch) -> dict[str, np.ndarray]:
        words = batch.words
        non_symbol = np.asarray(pc.match_substring_regex(words.values, r"[^\p{P}\p{S}]"), dtype=bool)
        stripped = pc.utf8_trim(words.values, characters=PUNCT_CHARS)
        n_words = words.mask_per_doc(non_symbol).astype(np.float64)
        stripped_len = np.asarray(pc.utf8_length(stripped), dtype=np.float64)
        total_len = words.per_doc(np.where(non_symbol, stripped_len, 0))
        alpha = words.mask_per_doc(pc.match_substring_regex(words.values, r"\p{L}"))
        stop = words.mask_per_doc(pc.is_in(pc.utf8_lower(stripped),
                                           value_set=pa.array(self.cfg.stop_words)))
        lines = batch.lines
        lstripped = pc.utf8_ltrim_whitespace(lines.values)
        rstripped = pc.utf8_rtrim_whitespace(lines.values)
        bullet = lines.mask_per_doc(pc.or_(*[pc.starts_with(lstripped, b) for b in BULLETS]))
        ell_end = lines.mask_per_doc(pc.or_(*[pc.ends_with(rstripped, e) for e in ELLIPSES]))
        ellipses = sum(batch.count(e) for e in ELLIPSES)
        return {
            "n_words": n_words,
            "avg_word_length": safe_ratio(total_len, n_words),
            "hash_ratio": safe_ratio(batch.count("#"), n_words),
            "ellipsis_ratio": safe_ratio(ellipses, n_words),
            "bullet_lines_ratio": safe_ratio(bullet, lines.count),
            "ellipsis_lines_ratio": safe_ratio(ell_end, lines.count),
            "alpha_words_ratio": safe_ratio(alpha, words.count),
            "stop_words": stop.astype(np.float64),
        }

    def keep(self, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        rules = []

        def add(name, op, thr):
            if thr is None:
                return
            v = s[name]
            rules.append(Rule(name, v, v < thr if op == ">=" else v > thr, op, thr))

        add("n_words", ">=", c.min_words)
        add("n_words", "<=", c.max_words)
        add("avg_word_length", ">=", c.min_avg_word_length)
        add("avg_word_length", "<=", c.max_avg_word_length)
        add("hash_ratio", "<=", c.max_symbol_word_ratio)
        add("ellipsis_ratio", "<=", c.max_symbol_word_ratio)
        add("bullet_lines_ratio", "<=", c.max_bullet_lines_ratio)
        add("ellipsis_lines_ratio", "<=", c.max_ellipsis_lines_ratio)
        add("alpha_words_ratio", ">=", c.min_alpha_words_ratio)
        if c.min_stop_words:
            add("stop_words", ">=", c.min_stop_words)
        return decide(rules, len(s["n_words"]))
