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

``semantics: datatrove`` (default) decides as datatrove's ``C4QualityFilter``: lines are
``str.splitlines()``, each stripped; a line's word count (and the 1,000-character word rule)
is over its whitespace words before citations are removed; citations are removed without
re-stripping; terminal punctuation is ``. ? ! " '`` and a line ending in ``...`` is dropped;
sentences are counted per kept line as spaCy's rule-based sentencizer splits that line's
tokens (a sentence ends at a token among spaCy's sentence marks followed, after any
punctuation tokens, by a non-punctuation token; at least one per line).

``semantics: paper``: sentences are counted per surviving line as runs of ``.!?`` followed
by whitespace or the line end, lines split on ``\n``, ``…`` counts as an ellipsis, the
terminal punctuation is ``. ? ! "``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.badwords import badwords_pattern, load_badwords
from pipeline.filters.base import FilterResult, LanguageAwareFilter, Rule, decide
from pipeline.filters.languages import LanguageAwareConfig
from pipeline.filters.text import Pieces, TextBatch, regex_class
from pipeline.filters.wordtok import tokenize

POLICY_SUBSTRINGS = ["terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies"]
CITATION_RE = r"\[\d*\]|\[edit\]|\[citation needed\]"


class C4Config(LanguageAwareConfig):
    type: Literal["c4"] = "c4"
    max_word_length: int | None = 1000
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    terminal_punct: str | None = None           # None: datatrove's . ? ! " ' (paper: . ? ! ")
    min_words_per_line: int | None = 3
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    min_sentences: int | None = 5
    badwords_paths: list[str] = []
    badwords_word_boundaries: bool = True


class C4Filter(LanguageAwareFilter):
    config_cls = C4Config
    columns = {c: pa.float64() for c in ("lines_dropped", "chars_dropped", "n_sentences",
                                         "lorem_ipsum", "curly_bracket", "badwords")}

    def __init__(self, cfg: C4Config, model_dir=None):
        super().__init__(cfg, model_dir)
        words = load_badwords(cfg.badwords_paths) if cfg.badwords_paths else []
        self.badwords = badwords_pattern(words, cfg.badwords_word_boundaries) if words else None

    def apply(self, batch: TextBatch) -> FilterResult:
        c = self.cfg
        datatrove = c.semantics == "datatrove"
        n = batch.n
        lines = batch.py_lines if datatrove else batch.lines
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
            text = pc.replace_substring_regex(text, CITATION_RE, "")
            if not datatrove:
                text = pc.utf8_trim_whitespace(text)
        if c.filter_no_terminal_punct:
            punct = c.terminal_punct or (".?!\"'" if datatrove else '.?!"')
            rtext = text if datatrove else pc.utf8_rtrim_whitespace(text)
            ends = np.asarray(pc.match_substring_regex(rtext, regex_class(punct) + "$"), bool)
            ell = pc.ends_with(rtext, "...")
            if not datatrove:
                ell = pc.or_(ell, pc.ends_with(rtext, "…"))
            ok &= ends & ~np.asarray(ell, bool)
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

        if datatrove:
            langs = batch.langs if c.language is None else None
            line_langs = None if langs is None else [langs[i] or "en" for i in kept_parent.tolist()]
            sentences = sentence_counts(kept, line_langs if line_langs else
                                        ([c.language] * len(kept) if c.language else None))
        else:
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
        keep, detail = self.keep_grouped(scores, self.groups(batch))
        return FilterResult(keep=keep, detail=detail, scores=scores, new_text=new_text)

    def keep(self, s, cfg=None):
        c = cfg or self.cfg
        n = len(s["n_sentences"])
        rules = [Rule("lorem_ipsum", s["lorem_ipsum"], s["lorem_ipsum"] > 0, "==", 0),
                 Rule("curly_bracket", s["curly_bracket"], s["curly_bracket"] > 0, "==", 0)]
        if c.min_sentences is not None:
            rules.append(Rule("n_sentences", s["n_sentences"],
                              s["n_sentences"] < c.min_sentences, ">=", c.min_sentences))
        rules.append(Rule("badwords", s["badwords"], s["badwords"] > 0, "==", 0))
        return decide(rules, n)


def sentence_counts(lines: pa.Array, langs: list[str] | None = None) -> np.ndarray:
    """Sentences per line as datatrove counts them (``split_into_sentences``: spaCy's
    ``sentencizer`` over the line's tokens). spaCy starts a sentence at a token that is
    neither punctuation nor a sentence mark when a sentence mark was seen since the last
    start, so the count is 1 + the number of non-punctuation tokens whose nearest preceding
    token that is not plain punctuation (``is_punct`` but no sentence mark) is a sentence mark."""
    tok = tokenize(lines, langs)
    n = len(lines)
    if len(tok.ids) == 0:
        return np.ones(n, dtype=np.int64)
    mark = tok.attr("sent_punct") == 1
    other = (tok.attr("punct") == 0) & ~mark       # a token that can start a sentence
    keyed = mark | other                           # tokens that set or reset the state
    idx = np.flatnonzero(keyed)
    same = tok.parent[idx[1:]] == tok.parent[idx[:-1]]
    starts = other[idx[1:]] & mark[idx[:-1]] & same
    return 1 + np.bincount(tok.parent[idx[1:]][starts], minlength=n)
