"""FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3).

Defaults as published (RESEARCH.md), after datatrove ``FineWebQualityFilter``: over the
non-empty lines, remove a document if fewer than 12% end with terminal punctuation, if
more than 67% are at most 30 characters, if characters in duplicated lines exceed 1% of
the (newline-free) characters, or if newlines per word exceed 0.3. A document with no
non-empty line is removed as ``empty``. FineWeb-2 drops the short-line rule for most
languages: set ``max_short_line_ratio: null``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.text import TERMINAL_PUNCT, TextBatch, duplicates, regex_class, safe_ratio


class FineWebConfig(FilterConfig):
    type: Literal["fineweb"] = "fineweb"
    min_line_punct_ratio: float | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_length: int = 30
    max_short_line_ratio: float | None = 0.67
    max_dup_line_char_ratio: float | None = 0.01
    max_newline_per_word: float | None = 0.3
    terminal_punct: str = TERMINAL_PUNCT


class FineWebFilter(Filter):
    config_cls = FineWebConfig
    columns = {c: pa.float64() for c in ("n_lines", "line_punct_ratio", "short_line_ratio",
                                         "dup_line_char_ratio", "newline_per_word")}

    def score(self, batch: TextBatch) -> dict[str, np.ndarray]:
        c = self.cfg
        lines = batch.nonempty_lines
        punct = lines.mask_per_doc(pc.match_substring_regex(
            lines.values, regex_class(c.terminal_punct) + "$"))
        short = lines.mask_per_doc(lines.length <= c.short_line_length)
        _, dup_chars = duplicates(lines)
        newlines = batch.count("\n")
        return {
            "n_lines": lines.count.astype(np.float64),
            "line_punct_ratio": safe_ratio(punct, lines.count),
            "short_line_ratio": safe_ratio(short, lines.count),
            "dup_line_char_ratio": safe_ratio(dup_chars, batch.chars - newlines),
            "newline_per_word": safe_ratio(newlines, batch.words.count, empty=np.inf),
        }

    def keep(self, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
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
