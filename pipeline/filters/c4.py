"""C4 cleaning (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2).

This filter MODIFIES text. Line level (each line stripped first), in datatrove
``C4QualityFilter`` order: drop lines with a word over 1,000 characters; remove Wikipedia
citation marks (``[1]``, ``[edit]``, ``[citation needed]``); drop lines not ending in
terminal punctuation (``. ! ? "``) or ending in an ellipsis; drop lines with fewer than 3
words; drop lines containing "javascript" or a cookie/terms/privacy-policy phrase.
Document level: remove the document if a surviving line contains "lorem ipsum" or a
curly bracket ``{``, if fewer than 5 sentences remain, or (with ``badwords_paths``) if the
cleaned text contains a word from the bad-words list (LDNOOBW ``en`` is what C4 used).
Kept documents carry the cleaned text: the surviving lines joined by ``\\n``.

Sentences are counted per surviving line as runs of ``.!?`` followed by whitespace or the
line end (at least one per line), a regex stand-in for the NLTK splitter datatrove uses.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.badwords import badwords_pattern, load_badwords
from pipeline.filters.base import Filter, FilterConfig, FilterResult, Rule, decide
from pipeline.filters.text import Pieces, TextBatch, regex_class

POLICY_SUBSTRINGS = ["terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies"]
CITATION_RE = r"\[\d*\]|\[edit\]|\[citation needed\]"


class C4Config(FilterConfig):
    type: Literal["c4"] = "c4"
    max_word_length: int | None = 1000
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    terminal_punct: str = '.?!"'
    min_words_per_line: int | None = 3
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    min_sentences: int | None = 5
    badwords_paths: list[str] = []
    badwords_word_boundaries: bool = True


class C4Filter(Filter):
    config_cls = C4Config
    columns = {c: pa.float64() for c in ("lines_dropped", "chars_dropped", "n_sentences",
                                         "lorem_ipsum", "curly_bracket", "badwords")}

    def __init__(self, cfg: C4Config, model_dir=None):
        super().__init__(cfg, model_dir)
        words = load_badwords(cfg.badwords_paths) if cfg.badwords_paths else []
        self.badwords = badwords_pattern(words, cfg.badwords_word_boundaries) if words else None

    def apply(self, batch: TextBatch) -> FilterResult:
        c = self.cfg
        n = batch.n
        lines = batch.lines
        nl = len(lines.parent)
        text = pc.utf8_trim_whitespace(lines.values)
        ok = np.ones(nl, dtype=bool)

        lw = Pieces(pc.utf8_split_whitespace(text), nl)
        lw = lw.select(lw.length > 0)
        if c.max_word_length is not None:
            maxlen = np.zeros(nl, dtype=np.int64)
            np.maximum.at(maxlen, lw.parent, lw.length)
            ok &= maxlen <= c.max_word_length
        if c.remove_citations:
            text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, CITATION_RE, ""))
        if c.filter_no_terminal_punct:
            rtext = pc.utf8_rtrim_whitespace(text)
            ends = np.asarray(pc.match_substring_regex(rtext, regex_class(c.terminal_punct) + "$"), bool)
            ell = np.asarray(pc.or_(pc.ends_with(rtext, "..."), pc.ends_with(rtext, "…")), bool)
            ok &= ends & ~ell
        if c.min_words_per_line is not None:
            ok &= lw.count >= c.min_words_per_line
        lower = pc.utf8_lower(text)
        lorem = ok & np.asarray(pc.match_substring(lower, "lorem ipsum"), bool) \
            if c.filter_lorem_ipsum else np.zeros(nl, bool)
        if c.filter_javascript:
            ok &= ~np.asarray(pc.match_substring(lower, "javascript"), bool)
        curly = ok & np.asarray(pc.match_substring(text, "{"), bool) \
            if c.filter_curly_bracket else np.zeros(nl, bool)
        if c.filter_policy:
            pol = "|".join(POLICY_SUBSTRINGS)
            ok &= ~np.asarray(pc.match_substring_regex(lower, pol), bool)

        kept = text.filter(pa.array(ok))
        kept_parent = lines.parent[ok]
        per_doc = np.bincount(kept_parent, minlength=n)
        offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
        joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), kept), "\n")
        new_text = pc.utf8_trim_whitespace(joined).cast(pa.string())

        sentences = np.maximum(np.asarray(pc.count_substring_regex(kept, r"[.!?]+(?:\s|$)"),
                                          dtype=np.int64), 1)
        n_sent = np.bincount(kept_parent, weights=sentences, minlength=n)
        new_chars = np.asarray(pc.utf8_length(new_text), dtype=np.float64)
        scores = {
            "lines_dropped": (lines.count - per_doc).astype(np.float64),
            "chars_dropped": batch.chars - new_chars,
            "n_sentences": n_sent,
            "lorem_ipsum": lines.per_doc(lorem.astype(np.float64)),
            "curly_bracket": lines.per_doc(curly.astype(np.float64)),
            "badwords": (np.asarray(pc.count_substring_regex(pc.utf8_lower(new_text), self.badwords),
                                    dtype=np.float64) if self.badwords else np.zeros(n)),
        }
        keep, detail = self.keep(scores)
        return FilterResult(keep=keep, detail=detail, scores=scores, new_text=new_text)

    def keep(self, s):
        n = len(s["n_sentences"])
        rules = [Rule("lorem_ipsum", s["lorem_ipsum"], s["lorem_ipsum"] > 0, "==", 0),
                 Rule("curly_bracket", s["curly_bracket"], s["curly_bracket"] > 0, "==", 0)]
        if self.cfg.min_sentences is not None:
            rules.append(Rule("n_sentences", s["n_sentences"],
                              s["n_sentences"] < self.cfg.min_sentences, ">=", self.cfg.min_sentences))
        rules.append(Rule("badwords", s["badwords"], s["badwords"] > 0, "==", 0))
        return decide(rules, n)
