"""Batch text primitives shared by the filters: words, lines, paragraphs, duplicates, n-grams.

Every function works on a whole Arrow batch at once. Splitting happens in Arrow's C++
kernels (``utf8_split_whitespace``, ``split_pattern``), the per-document statistics are
numpy reductions over the flattened pieces keyed by their parent document
(``np.bincount(parent, weights)``), so a batch of 1,000 documents costs a few dozen
C-level passes instead of 1,000 Python loops.

Word splitting: whitespace tokens, except that characters of scripts written without
spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar) are each their own word —
the per-character segmentation FineWeb-2 falls back to for such languages. It is applied
only to documents that contain such characters.

``TextBatch`` caches these splits so that several rules over the same batch share them;
a filter that rewrites the text (C4 line cleaning) hands the next filter a new batch.
"""

from __future__ import annotations

import bisect

import string
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Scripts without spaces between words: one character = one word.
NOSPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
NOSPACE_CHAR = f"[{NOSPACE_SCRIPTS}]"

# Characters stripped from the ends of a token before measuring it / matching stop words.
PUNCT_CHARS = string.punctuation + "“”‘’«»…—–¿¡。、，！？；：「」『』（）《》【】・"

# Python's str.splitlines() boundaries.
PY_LINE_BREAK = "\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"

# Terminal punctuation (FineWeb / datatrove END_PUNCTUATION, abridged).
TERMINAL_PUNCT = ".!?\"'。！？…։؟۔।॥။።"


def regex_class(chars: str) -> str:
    """A RE2 character class matching any of ``chars``."""
    return "[" + "".join("\\" + c if c in "\\]^-[" else c for c in chars) + "]"


class Pieces:
    """Flattened pieces of a batch (words or lines): ``values`` (Arrow strings),
    ``parent`` (document index of each piece), ``count`` (pieces per document)."""

    def __init__(self, lists: pa.Array, n_docs: int):
        self.values = pc.list_flatten(lists)
        self.parent = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
        self.count = np.asarray(pc.list_value_length(lists).fill_null(0), dtype=np.int64)
        self.n_docs = n_docs

    @cached_property
    def length(self) -> np.ndarray:
        """Characters (code points) of each piece."""
        return np.asarray(pc.utf8_length(self.values), dtype=np.int64)

    @cached_property
    def ids(self) -> np.ndarray:
        """Batch-wide integer id of each distinct piece (equal strings, equal ids)."""
        return np.asarray(pc.dictionary_encode(self.values).indices, dtype=np.int64)

    def per_doc(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Sum of ``weights`` (or count) over each document's pieces."""
        return np.bincount(self.parent, weights=weights, minlength=self.n_docs)

    def mask_per_doc(self, mask) -> np.ndarray:
        """Number of pieces per document where ``mask`` (Arrow or numpy bool) is true."""
        m = np.asarray(mask.fill_null(False) if isinstance(mask, (pa.Array, pa.ChunkedArray)) else mask,
                       dtype=bool)
        return np.bincount(self.parent[m], minlength=self.n_docs)

    def select(self, mask: np.ndarray) -> "Pieces":
        """The subset of pieces where ``mask`` is true (parents kept)."""
        sub = object.__new__(Pieces)
        sub.values = self.values.filter(pa.array(mask))
        sub.parent = self.parent[mask]
        sub.count = np.bincount(sub.parent, minlength=self.n_docs)
        sub.n_docs = self.n_docs
        if "length" in self.__dict__:
            sub.length = self.length[mask]
        return sub


def duplicates(pieces: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (number of pieces seen before in the same document, their characters).

    Same semantics as datatrove's ``find_duplicates`` (the first occurrence is not a
    duplicate, every later one is), computed for the whole batch with one stable sort.
    """
    if len(pieces.parent) == 0:
        z = np.zeros(pieces.n_docs)
        return z, z.copy()
    key = pieces.parent * (int(pieces.ids.max()) + 1) + pieces.ids
    _, first = np.unique(key, return_index=True)
    dup = np.ones(len(key), dtype=bool)
    dup[first] = False
    return (np.bincount(pieces.parent[dup], minlength=pieces.n_docs).astype(np.float64),
            pieces.per_doc(np.where(dup, pieces.length, 0)))


def length_csum(words) -> np.ndarray:
    """``[0, cumsum(words.length)]``, computed once per word split (the n-gram character
    counts of every n read it)."""
    csum = getattr(words, "_length_csum", None)
    if csum is None:
        csum = np.concatenate([[0], np.cumsum(words.length)])
        words._length_csum = csum
    return csum


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)


def _mix(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One step of a 64-bit multiplicative hash combining ``h`` with word ids ``w``."""
    with np.errstate(over="ignore"):
        h = (h ^ (w.astype(np.uint64) + _M1)) * _M2
        return h ^ (h >> np.uint64(29))


class NGrams:
    """Word n-grams of a batch with their in-document occurrence counts.

    ``for n, start, count in NGrams(words).iter(ns)``: ``start`` are the indices (into the
    flat word array) of the n-gram windows that lie inside one document and ``count`` how
    often that window's n-gram occurs in its document.

    N-grams are hashed incrementally (the hash of an n-gram extends the hash of its
    (n-1)-gram prefix) with the document index mixed in, 64 bits: collisions ~2^-64 a pair.
    Counting is pruned exactly: an n-gram can only occur twice if both of its (n-1)-gram
    parts do, so only those windows are counted; every other window has count 1. In
    natural text repeated 5-grams are rare, so the longer n cost little.
    """

    def __init__(self, words: Pieces):
        self.words = words

    def iter(self, ns: list[int]):
        w = self.words.ids
        parent = self.words.parent
        total = len(w)
        h = _mix(_mix(parent.astype(np.uint64), np.zeros(total, np.uint64)), w)   # 1-grams
        rep = None                                 # (n-1)-gram windows that repeat
        for n in range(2, max(ns, default=1) + 1):
            m = total - n + 1
            if m <= 0:
                if n in ns:
                    yield n, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
                rep = np.zeros(0, dtype=bool)
                continue
            h = _mix(h[:m], w[n - 1:n - 1 + m])
            inside = parent[:m] == parent[n - 1:n - 1 + m]
            cand = inside if rep is None else inside & rep[:m] & rep[1:m + 1]
            count = np.ones(m, dtype=np.int64)
            idx = np.flatnonzero(cand)
            if len(idx):
                _, inv, cnt = np.unique(h[idx], return_inverse=True, return_counts=True)
                count[idx] = cnt[inv]
            rep = count > 1
            if n in ns:
                start = np.flatnonzero(inside)
                self.hash = h[start]           # the windows' n-gram hashes, for callers that need identity
                yield n, start, count[start]


def top_ngram_chars(words: Pieces, start: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """Per document: characters of the most frequent n-gram × its count (0 if none repeats).

    Ties between equally frequent n-grams go to the longest one. The n-gram's length is
    its words joined by single spaces, as in datatrove ``find_top_duplicate``.
    """
    out = np.zeros(words.n_docs, dtype=np.int64)
    sel = count > 1
    if not sel.any():
        return out.astype(np.float64)
    start, count = start[sel], count[sel]
    csum = length_csum(words)
    length = csum[start + n] - csum[start] + (n - 1)
    np.maximum.at(out, words.parent[start], (count << 32) + length)
    return ((out >> 32) * (out & 0xFFFFFFFF)).astype(np.float64)


def top_ngram_chars_first(words, start: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """datatrove's ``find_top_duplicate``: per document, characters of the most frequent
    n-gram (words joined by spaces) × its count, ties to the n-gram seen first, and a
    count of 1 counts too (every document with >= n words has a top n-gram); NaN for
    documents with fewer than n words (the rule is skipped)."""
    out = np.full(words.n_docs, np.nan)
    if len(start) == 0:
        return out
    parent = words.parent[start]           # non-decreasing: windows are in text order
    seg = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
    docs = parent[seg]
    top = np.maximum.reduceat(count, seg)                   # the highest count per document
    at_top = np.flatnonzero(count == np.repeat(top, np.diff(np.r_[seg, len(count)])))
    best = at_top[np.flatnonzero(np.r_[True, parent[at_top][1:] != parent[at_top][:-1]])]
    csum = length_csum(words)
    length = csum[start[best] + n] - csum[start[best]] + (n - 1)
    out[docs] = length * count[best]
    return out


def greedy_duplicate_ngram_chars(words, start: np.ndarray, count: np.ndarray, hashes: np.ndarray,
                                 n: int) -> np.ndarray:
    """datatrove's ``find_all_duplicate``: scan each document's n-grams left to right; an
    n-gram seen before adds its characters (words concatenated) and skips ``n`` words, an
    unseen one is remembered.

    The same walk, visiting only the windows whose n-gram occurred earlier in the document
    (``count > 1`` and not its first occurrence): every other visited window is unseen by
    definition. A repeat at ``c`` is a duplicate when its n-gram was seen at a visited
    window: an earlier repeat that was visited (the set ``seen``), or its first occurrence
    ``f`` unless a duplicate's skip covered ``f`` (only the last duplicate before ``f``
    can: skips do not overlap). Documents without a repeated n-gram get 0 without a scan.
    """
    out = np.zeros(words.n_docs)
    rep = np.flatnonzero(count > 1)
    if not len(rep):
        return out
    hr = hashes[rep]
    order = np.lexsort((rep, hr))                  # by n-gram, then position
    sh, si = hr[order], rep[order]
    new = np.empty(len(sh), dtype=bool)
    new[0] = True
    new[1:] = sh[1:] != sh[:-1]
    first = np.empty(len(rep), dtype=np.int64)
    first[order] = si[new][np.cumsum(new) - 1]     # first occurrence of each repeat's n-gram
    cand = first != rep
    cw, cf, ch = rep[cand], first[cand], hr[cand]
    if not len(cw):
        return out
    doc = words.parent[start[cw]]
    seg = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    seg_end = np.r_[seg[1:], len(cw)]
    # Fast path: suppose every visited repeat is a duplicate (its first occurrence was
    # visited). The walk is then a chain: from a document's first repeat, the next visited
    # repeat is the first one at or after c + n. The supposition is checked on the chain
    # (no chosen duplicate's skip covers the first occurrence of another); a document
    # where it fails is walked exactly.
    nxt = np.searchsorted(cw, cw + n)
    same = nxt < len(cw)
    same[same] = doc[nxt[same]] == doc[same]
    nxt_l = np.where(same, nxt, -1).tolist()
    chain: list[int] = []
    for k in seg.tolist():
        while k != -1:
            chain.append(k)
            k = nxt_l[k]
    sel = np.asarray(chain, dtype=np.int64)
    d_w, f_w, d_doc = cw[sel], cf[sel], doc[sel]
    j = np.searchsorted(d_w, f_w) - 1
    jc = np.maximum(j, 0)
    bad = (j >= 0) & (d_doc[jc] == d_doc) & (f_w < d_w[jc] + n)
    dups = d_w
    if bad.any():
        bad_docs = np.unique(d_doc[bad])
        keep = ~np.isin(d_doc, bad_docs)
        exact: list[int] = []
        cw_l, cf_l, ch_l = cw.tolist(), cf.tolist(), ch.tolist()
        for si in np.flatnonzero(np.isin(doc[seg], bad_docs)).tolist():
            exact += _greedy_walk(cw_l, cf_l, ch_l, int(seg[si]), int(seg_end[si]), n)
        dups = np.concatenate([d_w[keep], np.asarray(exact, dtype=np.int64)])
    if len(dups):
        d = np.asarray(dups, dtype=np.int64)
        csum = length_csum(words)
        st = start[d]
        np.add.at(out, words.parent[st], csum[st + n] - csum[st])
    return out


def _greedy_walk(cw: list[int], cf: list[int], ch: list, a: int, b: int, n: int) -> list[int]:
    """The exact walk over one document's repeats ``cw[a:b]`` (first occurrences ``cf``,
    n-gram hashes ``ch``): the windows that count as duplicates."""
    seen: set = set()
    dups: list[int] = []
    skip_until = -1
    for k in range(a, b):
        c = cw[k]
        if c < skip_until:
            continue
        h = ch[k]
        dup = h in seen
        if not dup:
            seen.add(h)
            f = cf[k]
            j = bisect.bisect_left(dups, f) - 1
            dup = j < 0 or f >= dups[j] + n
        if dup:
            dups.append(c)
            skip_until = c + n
    return dups


def duplicate_ngram_chars(words: Pieces, start: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """Per document: characters of the words covered by any n-gram that occurs more than
    once in the document (overlaps counted once) — Gopher's "duplicate n-gram" fraction."""
    dup_start = start[count > 1]
    if len(dup_start) == 0:
        return np.zeros(words.n_docs)
    diff = np.zeros(len(words.parent) + 1, dtype=np.int64)
    np.add.at(diff, dup_start, 1)
    np.add.at(diff, dup_start + n, -1)
    covered = np.cumsum(diff[:-1]) > 0
    return words.per_doc(np.where(covered, words.length, 0))


class TextBatch:
    """The text column of a batch plus lazily computed, cached splits."""

    def __init__(self, text: pa.Array, table: pa.Table | None = None,
                 tokens: dict | None = None):
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        self.text = text
        self.table = table          # the other columns (url, source, ...), same rows
        self.n = len(text)
        if tokens:                  # tokenizations of these same texts (and languages)
            self.__dict__["_tokens"] = dict(tokens)

    def token_cache(self) -> dict:
        """The tokenizations computed so far, by language key (for ``tokens=``)."""
        return dict(self.__dict__.get("_tokens", {}))

    def column(self, name: str) -> pa.Array | None:
        if self.table is None or name not in self.table.column_names:
            return None
        col = self.table.column(name)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    @cached_property
    def chars(self) -> np.ndarray:
        return np.asarray(pc.utf8_length(self.text), dtype=np.float64)

    @cached_property
    def lower(self) -> pa.Array:
        return pc.utf8_lower(self.text)

    @cached_property
    def words(self) -> Pieces:
        text = self.text
        nospace = pc.match_substring_regex(text, NOSPACE_CHAR)
        if pc.any(nospace).as_py():
            spaced = pc.replace_substring_regex(text, f"({NOSPACE_CHAR})", r" \1 ")
            text = pc.if_else(nospace, spaced, text)
        words = Pieces(pc.utf8_split_whitespace(text), self.n)
        nonempty = words.length > 0          # "" from empty docs / leading whitespace
        return words if nonempty.all() else words.select(nonempty)

    @cached_property
    def langs(self) -> list[str] | None:
        """Per-document language code from the ``lang`` column (langid's output or the
        input's own), None where absent."""
        col = self.column("lang")
        return None if col is None else col.to_pylist()

    def tokens(self, language: str | None = None):
        """Words as datatrove's ``split_into_words`` makes them (``wordtok``): in
        ``language``, or per document from the ``lang`` column (English where unknown)."""
        key = language or "auto"
        cache = self.__dict__.setdefault("_tokens", {})
        if key not in cache:
            from pipeline.filters.wordtok import tokenize
            if language is not None:
                langs = [language] * self.n
            else:
                langs = None if self.langs is None else [lang or "en" for lang in self.langs]
            cache[key] = tokenize(self.text, langs)
        return cache[key]

    @cached_property
    def py_lines(self) -> Pieces:
        """Lines as Python's ``str.splitlines()`` makes them (what datatrove's Gopher quality
        and C4 filters use): every line-boundary character, no trailing empty line."""
        lists = pc.split_pattern_regex(self.text, PY_LINE_BREAK)
        ends = np.asarray(pc.match_substring_regex(self.text, f"(?:{PY_LINE_BREAK})$"), dtype=bool)
        pieces = Pieces(lists, self.n)
        if not ends.any():
            return pieces
        last = np.cumsum(pieces.count) - 1
        drop = np.zeros(len(pieces.parent), dtype=bool)
        drop[last[ends]] = True
        return pieces.select(~drop)

    @cached_property
    def lines(self) -> Pieces:
        """All lines, split on ``\\n`` (empty lines included)."""
        return Pieces(pc.split_pattern(self.text, "\n"), self.n)

    @cached_property
    def nonempty_lines(self) -> Pieces:
        """Lines that are not empty/whitespace-only."""
        lines = self.lines
        keep = np.asarray(pc.not_equal(pc.utf8_trim_whitespace(lines.values), ""), dtype=bool)
        return lines.select(keep)

    @cached_property
    def paragraphs(self) -> Pieces:
        """Paragraphs: the stripped text split on two or more newlines."""
        return Pieces(pc.split_pattern_regex(pc.utf8_trim_whitespace(self.text), r"\n{2,}"), self.n)

    def count(self, pattern: str) -> np.ndarray:
        return np.asarray(pc.count_substring(self.text, pattern), dtype=np.float64)


def safe_ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """num / den with ``empty`` where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
