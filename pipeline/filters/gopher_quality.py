"""Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

Defaults as published (RESEARCH.md): 50-100,000 words not counting symbol-only tokens;
mean word length 3-10; ``#`` per word <= 0.1; ellipses per word <= 0.1; <= 90% of lines
starting with a bullet; <= 30% of lines ending with an ellipsis; >= 80% of words with an
alphabetic character; >= 2 stop words. Reference implementation: datatrove
``GopherQualityFilter``.

``semantics: datatrove`` (default) decides as datatrove's ``GopherQualityFilter``: words are
its per-language tokenizer's tokens (``wordtok``; punctuation is its own token), the word
count and mean length are over tokens with a character outside datatrove's punctuation set,
``#``/ellipsis and alphabetic-word ratios are over all tokens, lines are
``str.splitlines()``, and the stop-word rule counts *distinct* stop words matched
case-sensitively. ``semantics: paper`` keeps the definitions below.

Paper definitions: a *word* is a whitespace token (per character in scripts without spaces,
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

from pipeline.filters.base import LanguageAwareFilter, Rule, decide
from pipeline.filters.languages import LanguageAwareConfig
from pipeline.filters.text import PUNCT_CHARS, TextBatch, safe_ratio
from pipeline.filters.wordtok import VOCAB

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("•", "-")
ELLIPSES = ("...", "…")


class GopherQualityConfig(LanguageAwareConfig):
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


class GopherQualityFilter(LanguageAwareFilter):
    config_cls = GopherQualityConfig
    scores_depend_on_language = True
    columns = {c: pa.float64() for c in (
        "n_words", "avg_word_length", "hash_ratio", "ellipsis_ratio", "bullet_lines_ratio",
        "ellipsis_lines_ratio", "alpha_words_ratio", "stop_words")}

    def score(self, batch: TextBatch, groups=None) -> dict[str, np.ndarray]:
        if self.cfg.semantics == "datatrove":
            return self._score_datatrove(batch, groups or self.groups(batch))
        return self._score_paper(batch)

    def _score_datatrove(self, batch: TextBatch, groups) -> dict[str, np.ndarray]:
        tok = batch.tokens(self.cfg.language)
        n_all = tok.count.astype(np.float64)
        nonsym = tok.attr("symbol") == 0
        n_words = tok.mask_per_doc(nonsym).astype(np.float64)
        total_len = tok.per_doc(np.where(nonsym, tok.length, 0))
        alpha = tok.mask_per_doc(tok.attr("alpha") == 1)
        lines = batch.py_lines
        lstripped = pc.utf8_ltrim_whitespace(lines.values)
        rstripped = pc.utf8_rtrim_whitespace(lines.values)
        bullet = lines.mask_per_doc(pc.or_(*[pc.starts_with(lstripped, b) for b in BULLETS]))
        ell_end = lines.mask_per_doc(pc.or_(*[pc.ends_with(rstripped, e) for e in ELLIPSES]))
        ellipses = sum(batch.count(e) for e in ELLIPSES)
        stop = np.zeros(batch.n)
        for cfg, idx in groups:                     # distinct stop words, case-sensitive
            ids = VOCAB.lookup(cfg.stop_words)
            in_group = np.zeros(batch.n, dtype=bool)
            in_group[idx] = True
            m = np.isin(tok.ids, ids) & in_group[tok.parent]
            if m.any():
                pairs = np.unique(tok.parent[m] * (len(VOCAB.tokens) + 1) + tok.ids[m])
                stop += np.bincount(pairs // (len(VOCAB.tokens) + 1), minlength=batch.n)
        return {
            "n_words": n_words,
            "avg_word_length": safe_ratio(total_len, n_words, empty=np.nan),
            "hash_ratio": safe_ratio(batch.count("#"), n_all),
            "ellipsis_ratio": safe_ratio(ellipses, n_all),
            "bullet_lines_ratio": safe_ratio(bullet, lines.count),
            "ellipsis_lines_ratio": safe_ratio(ell_end, lines.count),
            "alpha_words_ratio": safe_ratio(alpha, n_all),
            "stop_words": stop,
        }

    def _score_paper(self, batch: TextBatch) -> dict[str, np.ndarray]:
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

    def keep(self, s: dict[str, np.ndarray], cfg=None) -> tuple[np.ndarray, np.ndarray]:
        c = cfg or self.cfg
        rules = []

        def add(name, op, thr):
            if thr is None or (c.semantics == "datatrove" and not thr):   # datatrove: 0 = off
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
