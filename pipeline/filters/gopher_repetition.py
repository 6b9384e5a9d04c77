"""Gopher repetition rules (Rae et al. 2021, appendix A.1.1, table A1).

Defaults as published (RESEARCH.md): duplicate lines <= 30% of lines and duplicate
paragraphs <= 30% of paragraphs; characters in duplicate lines <= 20% and in duplicate
paragraphs <= 20% of all characters; the most frequent n-gram covers <= 20/18/16% of the
characters for n = 2/3/4; characters in duplicated n-grams <= 15/14/13/12/11/10% for
n = 5..10. Reference implementation: datatrove ``GopherRepetitionFilter``.

``semantics: datatrove`` (default) decides as datatrove's ``GopherRepetitionFilter``:
paragraphs split the stripped text on 2+ newlines and lines the raw text on runs of
newlines (``re.split("\\n+")``: a leading/trailing newline leaves an empty line), every
character share is over the text's length, words are the per-language tokenizer's tokens,
the top n-gram is the most frequent one (ties to the first seen) even when it occurs only
once, and duplicated n-gram characters come from datatrove's greedy left-to-right scan
(a repeat adds its concatenated characters and skips n words). ``semantics: paper`` keeps
the definitions below.

Paper definitions (also in ``text.py``): lines are the non-empty ``\\n``-separated lines,
paragraphs split on blank lines; a duplicate is any repeat after the first occurrence;
top n-gram characters = count × length of the most frequent repeated n-gram (its words
joined by spaces), over the text's length; duplicated n-gram characters = characters of
all words covered by an n-gram that occurs more than once (overlaps counted once, the
paper's definition), over the characters of all words.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.filters.base import LanguageAwareFilter, Rule, decide
from pipeline.filters.languages import LanguageAwareConfig
from pipeline.filters.text import (NGrams, TextBatch, duplicate_ngram_chars, duplicates,
                                   greedy_duplicate_ngram_chars, safe_ratio, top_ngram_chars,
                                   top_ngram_chars_first)


class GopherRepetitionConfig(LanguageAwareConfig):
    type: Literal["gopher_repetition"] = "gopher_repetition"
    max_dup_line_fraction: float | None = 0.30
    max_dup_para_fraction: float | None = 0.30
    max_dup_line_char_fraction: float | None = 0.20
    max_dup_para_char_fraction: float | None = 0.20
    # n -> max character share of the most frequent n-gram
    top_ngram_max: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
    # n -> max character share of duplicated n-grams
    dup_ngram_max: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherRepetitionFilter(LanguageAwareFilter):
    config_cls = GopherRepetitionConfig

    def __init__(self, cfg, model_dir=None):
        super().__init__(cfg, model_dir)
        cols = ["dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"]
        top_ns, dup_ns = self._ns()
        cols += [f"top_{n}gram_char_frac" for n in top_ns]
        cols += [f"dup_{n}gram_char_frac" for n in dup_ns]
        self.columns = {c: pa.float64() for c in cols}

    def _ns(self) -> tuple[list[int], list[int]]:
        """The n of every top / duplicated n-gram rule of any language the step may apply."""
        top, dup = set(self.cfg.top_ngram_max), set(self.cfg.dup_ngram_max)
        for over in self.cfg.per_language.values():
            top |= set(over.get("top_ngram_max", {}))
            dup |= set(over.get("dup_ngram_max", {}))
        if self.cfg.language_thresholds == "fineweb2":
            top |= {2, 3, 4}
            dup |= {5, 6, 7, 8, 9, 10}
        return sorted(top), sorted(dup)

    def score(self, batch: TextBatch) -> dict[str, np.ndarray]:
        if self.cfg.semantics == "paper":
            return self._score_paper(batch)
        chars = batch.chars
        paras = batch.paragraphs
        lines = batch.line_runs
        dp, dpc = duplicates(paras)
        dl, dlc = duplicates(lines)
        out = {
            "dup_line_frac": safe_ratio(dl, lines.count),
            "dup_para_frac": safe_ratio(dp, paras.count),
            "dup_line_char_frac": safe_ratio(dlc, chars),
            "dup_para_char_frac": safe_ratio(dpc, chars),
        }
        tok = batch.tokens(self.cfg.language)
        top_ns, dup_ns = self._ns()
        for n, rep in NGrams(tok).iter(sorted(set(top_ns) | set(dup_ns))):
            if n in top_ns:
                top = top_ngram_chars_first(tok, rep, n)
                out[f"top_{n}gram_char_frac"] = np.where(np.isnan(top), np.nan, safe_ratio(
                    np.nan_to_num(top), chars))
            if n in dup_ns:
                out[f"dup_{n}gram_char_frac"] = safe_ratio(
                    greedy_duplicate_ngram_chars(tok, rep, n), chars)
        return out

    def _score_paper(self, batch: TextBatch) -> dict[str, np.ndarray]:
        chars = batch.chars
        lines = batch.nonempty_lines
        paras = batch.paragraphs
        dl, dlc = duplicates(lines)
        dp, dpc = duplicates(paras)
        out = {
            "dup_line_frac": safe_ratio(dl, lines.count),
            "dup_para_frac": safe_ratio(dp, paras.count),
            "dup_line_char_frac": safe_ratio(dlc, chars),
            "dup_para_char_frac": safe_ratio(dpc, chars),
        }
        words = batch.words
        word_chars = words.per_doc(words.length)
        top_ns, dup_ns = self._ns()
        for n, rep in NGrams(words).iter(sorted(set(top_ns) | set(dup_ns))):
            if n in top_ns:
                out[f"top_{n}gram_char_frac"] = safe_ratio(top_ngram_chars(words, rep, n), chars)
            if n in dup_ns:
                out[f"dup_{n}gram_char_frac"] = safe_ratio(
                    duplicate_ngram_chars(words, rep, n), word_chars)
        return out

    def keep(self, s: dict[str, np.ndarray], cfg=None) -> tuple[np.ndarray, np.ndarray]:
        c = cfg or self.cfg
        rules = []
        for name, thr in [("dup_line_frac", c.max_dup_line_fraction),
                          ("dup_para_frac", c.max_dup_para_fraction),
                          ("dup_line_char_frac", c.max_dup_line_char_fraction),
                          ("dup_para_char_frac", c.max_dup_para_char_fraction)]:
            if thr is not None and (thr or c.semantics == "paper"):     # datatrove: 0 = off
                rules.append(Rule(name, s[name], s[name] > thr, "<=", thr))
        for n, thr in sorted(c.top_ngram_max.items()):
            v = s[f"top_{n}gram_char_frac"]
            rules.append(Rule(f"top_{n}gram_char_frac", v, v > thr, "<=", thr))   # NaN: skipped
        for n, thr in sorted(c.dup_ngram_max.items()):
            v = s[f"dup_{n}gram_char_frac"]
            rules.append(Rule(f"dup_{n}gram_char_frac", v, v > thr, "<=", thr))
        return decide(rules, len(s["dup_line_frac"]))
