"""FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3).

Defaults as published (RESEARCH.md), after datatrove ``FineWebQualityFilter``: over the
non-empty lines, remove a document if fewer than 12% end with terminal punctuation, if
more than 67% are at most 30 characters, if characters in duplicated lines exceed 1% of
the (newline-free) characters, or if newlines per word exceed 0.3. A document with no
non-empty line is removed as ``empty``. FineWeb-2 drops the short-line rule for most
languages: set ``max_short_line_ratio: null`` (``language_thresholds: fineweb2`` does).

``semantics: datatrove`` (default) counts words with the per-language tokenizer and ends of
lines against datatrove's full ``TERMINAL_PUNCTUATION`` (158 marks of many scripts);
``paper`` uses whitespace words and the abridged set in ``text.TERMINAL_PUNCT``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import LanguageAwareFilter, Rule, decide
from pipeline.filters.languages import LanguageAwareConfig
from pipeline.filters.text import TERMINAL_PUNCT, TextBatch, duplicates, regex_class, safe_ratio
from pipeline.filters.wordtok import punctuation_sets


class FineWebConfig(LanguageAwareConfig):
    type: Literal["fineweb"] = "fineweb"
    min_line_punct_ratio: float | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_length: int = 30
    max_short_line_ratio: float | None = 0.67
    max_dup_line_char_ratio: float | None = 0.01
    max_newline_per_word: float | None = 0.3
    terminal_punct: str | None = None        # None: datatrove's set (paper: TERMINAL_PUNCT)


class FineWebFilter(LanguageAwareFilter):
    config_cls = FineWebConfig
    columns = {c: pa.float64() for c in ("n_lines", "line_punct_ratio", "short_line_ratio",
                                         "dup_line_char_ratio", "newline_per_word")}

    def score(self, batch: TextBatch) -> dict[str, np.ndarray]:
        c = self.cfg
        datatrove = c.semantics == "datatrove"
        stops = c.terminal_punct or ("".join(sorted(punctuation_sets()[1])) if datatrove else TERMINAL_PUNCT)
        lines = batch.nonempty_lines
        punct = lines.mask_per_doc(pc.match_substring_regex(lines.values, regex_class(stops) + "$"))
        short = lines.mask_per_doc(lines.length <= c.short_line_length)
        _, dup_chars = duplicates(lines)
        newlines = batch.count("\n")
        return {
            "n_lines": lines.count.astype(np.float64),
            "line_punct_ratio": safe_ratio(punct, lines.count),
            "short_line_ratio": safe_ratio(short, lines.count),
            "dup_line_char_ratio": safe_ratio(dup_chars, batch.chars - newlines),
            "newline_per_word": safe_ratio(
                newlines, (batch.tokens(c.language) if datatrove else batch.words).count, empty=np.inf),
        }

    def keep(self, s: dict[str, np.ndarray], cfg=None) -> tuple[np.ndarray, np.ndarray]:
        c = cfg or self.cfg
        n = len(s["n_lines"])
        rules = [Rule("n_lines", s["n_lines"], s["n_lines"] == 0, ">", 0)]
        if c.min_line_punct_ratio is not None:
            v = s["line_punct_ratio"]
            fails = v < c.min_line_punct_ratio
            if c.line_punct_exclude_zero:
                fails &= v != 0
            rules.append(Rule("line_punct_ratio", v, fails, ">=", c.min_line_punct_ratio))
        for name, thr in [("short_line_ratio", c.max_short_line_ratio),
                          ("dup_line_char_ratio", c.max_dup_line_char_ratio),
                          ("newline_per_word", c.max_newline_per_word)]:
            if thr is not None:
                rules.append(Rule(name, s[name], s[name] > thr, "<=", thr))
        return decide(rules, n)
