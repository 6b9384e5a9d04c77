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
from typing import NamedTuple

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
PY_OTHER_BREAK = "[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"

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


def group_first(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element of ``keys`` (unsigned 64-bit): how many elements are equal to it
    (``count``) and the lowest index of one (``first``); ``np.unique``'s counts and first
    indices mapped back to the elements, at a fraction of its cost.

    One plain sort of ``key | index`` (no argsort, no stable sort): the index takes the
    low ``b`` bits (``b`` = bits of ``len(keys) - 1``), so the sorted array gives each
    group of equal keys in index order, its first element first. Keys below ``2**(64-b)``
    fit whole (exact integer keys); wider ones (hashes) are compared on their top
    ``64 - b`` bits, and the rare groups where full keys differ under one such prefix are
    redone with ``np.unique``: the result is exact either way."""
    k = len(keys)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    b = max(1, (k - 1).bit_length())
    ub = np.uint64(b)
    exact = int(keys.max()) < (1 << (64 - b))
    key = (keys << ub) if exact else ((keys >> ub) << ub)
    key |= np.arange(k, dtype=np.uint64)
    key.sort()
    order = (key & np.uint64((1 << b) - 1)).astype(np.int64)
    key >>= ub
    new = np.empty(k, dtype=bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, k))
    count = np.empty(k, dtype=np.int64)
    first = np.empty(k, dtype=np.int64)
    count[order] = np.repeat(sizes, sizes)
    first[order] = np.repeat(order[starts], sizes)
    if not exact:
        ks = keys[order]
        mixed = ~new
        mixed[1:] &= ks[1:] != ks[:-1]
        if mixed.any():                    # one prefix, several keys: np.unique on those
            gid = np.cumsum(new) - 1
            sub = np.sort(order[np.isin(gid, gid[mixed])])
            _, fi, inv, cnt = np.unique(keys[sub], return_index=True, return_inverse=True,
                                        return_counts=True)
            count[sub] = cnt[inv]
            first[sub] = sub[fi][inv]
    return count, first


def duplicates(pieces: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (number of pieces seen before in the same document, their characters).

    Same semantics as datatrove's ``find_duplicates`` (the first occurrence is not a
    duplicate, every later one is), computed for the whole batch with one sort.
    """
    if len(pieces.parent) == 0:
        z = np.zeros(pieces.n_docs)
        return z, z.copy()
    key = pieces.parent * (int(pieces.ids.max()) + 1) + pieces.ids
    _, first = group_first(key.astype(np.uint64))
    dup = first != np.arange(len(key))
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


class Repeats(NamedTuple):
    """The n-gram windows of a batch whose n-gram occurs more than once in its document:
    ``pos`` (flat word index of the window's first word, increasing), ``count`` (how
    often the n-gram occurs in the document) and ``first`` (``pos`` of its first
    occurrence; equal to ``pos`` for the first occurrence itself). Every other window
    (``words.count[d] - n + 1`` per document with at least ``n`` words) occurs once."""
    pos: np.ndarray
    count: np.ndarray
    first: np.ndarray


_NO_REPEATS = Repeats(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


class NGrams:
    """Word n-grams of a batch: ``for n, rep in NGrams(words).iter(ns)`` gives each ``n``'s
    ``Repeats``.

    N-grams are hashed incrementally (the hash of an n-gram extends the hash of its
    (n-1)-gram prefix) with the document index mixed in, 64 bits: collisions ~2^-64 a pair.
    Counting is pruned exactly: an n-gram can only occur twice if the (n-1)-grams at its
    position and the next both repeat, so from n = 3 on only those windows are hashed and
    counted (``group_first``), and the work shrinks with the repeats. In natural text
    repeated 5-grams are rare, so the longer n cost little.
    """

    def __init__(self, words: Pieces):
        self.words = words

    def iter(self, ns):
        w = self.words.ids
        parent = self.words.parent
        total = len(w)
        pos = hs = None                       # the repeated (n-1)-grams: positions, hashes
        for n in range(2, max(ns, default=1) + 1):
            if n == 2:
                cand = np.flatnonzero(parent[:-1] == parent[1:]) if total > 1 else np.zeros(0, np.int64)
                h1 = _mix(_mix(parent[cand].astype(np.uint64), np.zeros(len(cand), np.uint64)), w[cand])
                hc = _mix(h1, w[cand + 1])
            else:
                j = np.flatnonzero(pos[1:] == pos[:-1] + 1)      # (n-1)-grams at i and i+1 repeat
                cand = pos[j]
                hc = _mix(hs[j], w[cand + n - 1])
            if len(cand):
                cnt, fc = group_first(hc)
                sel = np.flatnonzero(cnt > 1)
                pos, hs = cand[sel], hc[sel]
                rep = Repeats(pos, cnt[sel], cand[fc[sel]])
            else:
                pos, hs, rep = _NO_REPEATS.pos, np.zeros(0, np.uint64), _NO_REPEATS
            if n in ns:
                yield n, rep


def top_ngram_chars(words: Pieces, rep: Repeats, n: int) -> np.ndarray:
    """Per document: characters of the most frequent n-gram × its count (0 if none repeats).

    Ties between equally frequent n-grams go to the longest one. The n-gram's length is
    its words joined by single spaces, as in datatrove ``find_top_duplicate``.
    """
    out = np.zeros(words.n_docs, dtype=np.int64)
    if not len(rep.pos):
        return out.astype(np.float64)
    start, count = rep.pos, rep.count
    csum = length_csum(words)
    length = csum[start + n] - csum[start] + (n - 1)
    np.maximum.at(out, words.parent[start], (count << 32) + length)
    return ((out >> 32) * (out & 0xFFFFFFFF)).astype(np.float64)


def top_ngram_chars_first(words, rep: Repeats, n: int) -> np.ndarray:
    """datatrove's ``find_top_duplicate``: per document, characters of the most frequent
    n-gram (words joined by spaces) × its count, ties to the n-gram seen first, and a
    count of 1 counts too (every document with >= n words has a top n-gram: without a
    repeat, its first n-gram); NaN for documents with fewer than n words (the rule is
    skipped)."""
    out = np.full(words.n_docs, np.nan)
    csum = length_csum(words)
    n_words = np.asarray(words.count, dtype=np.int64)
    docs = np.flatnonzero(n_words >= n)
    if not len(docs):
        return out
    at = (np.cumsum(n_words) - n_words)[docs]             # each document's first n-gram, count 1
    out[docs] = csum[at + n] - csum[at] + (n - 1)
    if len(rep.pos):
        pos, count = rep.pos, rep.count
        parent = words.parent[pos]                         # non-decreasing
        seg = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        top = np.maximum.reduceat(count, seg)              # the highest count per document
        at_top = np.flatnonzero(count == np.repeat(top, np.diff(np.r_[seg, len(count)])))
        best = at_top[np.flatnonzero(np.r_[True, parent[at_top][1:] != parent[at_top][:-1]])]
        length = csum[pos[best] + n] - csum[pos[best]] + (n - 1)
        out[parent[seg]] = length * count[best]
    return out


def greedy_duplicate_ngram_chars(words, rep: Repeats, n: int) -> np.ndarray:
    """datatrove's ``find_all_duplicate``: scan each document's n-grams left to right; an
    n-gram seen before adds its characters (words concatenated) and skips ``n`` words, an
    unseen one is remembered.

    The same walk, visiting only the windows whose n-gram occurred earlier in the document
    (repeats that are not their n-gram's first occurrence): every other visited window is
    unseen by definition. A repeat at ``c`` is a duplicate when its n-gram was seen at a
    visited window: an earlier repeat that was visited (the set ``seen``), or its first
    occurrence ``f`` unless a duplicate's skip covered ``f`` (only the last duplicate
    before ``f`` can: skips do not overlap). Documents without a repeated n-gram get 0
    without a scan.
    """
    out = np.zeros(words.n_docs)
    later = rep.first != rep.pos
    cw, cf = rep.pos[later], rep.first[later]      # an n-gram's identity: its first window
    if not len(cw):
        return out
    doc = words.parent[cw]
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
        # the chain is right up to a document's first failure: the exact walk resumes
        # there, with the chain before it as its duplicates and their n-grams as seen
        bad_idx = np.flatnonzero(bad)
        first_bad = bad_idx[np.r_[True, d_doc[bad_idx][1:] != d_doc[bad_idx][:-1]]]
        run = np.flatnonzero(np.r_[True, d_doc[1:] != d_doc[:-1]])       # each document's chain
        run_of = np.searchsorted(run, first_bad, side="right") - 1
        run_start, run_end = run[run_of], np.r_[run[1:], len(sel)][run_of]
        redo = np.zeros(len(sel) + 1, dtype=np.int64)
        np.add.at(redo, first_bad, 1)
        np.add.at(redo, run_end, -1)
        keep = np.cumsum(redo[:-1]) == 0
        k_from = sel[first_bad]
        k_to = seg_end[np.searchsorted(seg, k_from, side="right") - 1]
        exact: list[int] = []
        d_w_l, f_w_l = d_w.tolist(), f_w.tolist()
        for ci, rs, a, b in zip(first_bad.tolist(), run_start.tolist(), k_from.tolist(), k_to.tolist()):
            exact += _greedy_walk(cw[a:b].tolist(), cf[a:b].tolist(), n, d_w_l[rs:ci], set(f_w_l[rs:ci]))
        dups = np.concatenate([d_w[keep], np.asarray(exact, dtype=np.int64)])
    if len(dups):
        d = np.asarray(dups, dtype=np.int64)
        csum = length_csum(words)
        np.add.at(out, words.parent[d], csum[d + n] - csum[d])
    return out


def _greedy_walk(cw: list[int], cf: list[int], n: int, dups: list[int] | None = None,
                 seen: set | None = None) -> list[int]:
    """The exact walk over one document's repeats ``cw`` (each with its n-gram's first
    occurrence ``cf``, which is also the n-gram's identity): the windows that count as
    duplicates. ``dups`` and ``seen``: the walk so far, when it resumes at ``cw[0]``
    (a window it visits); only the duplicates it adds are returned."""
    seen = set() if seen is None else seen
    dups = [] if dups is None else list(dups)
    done = len(dups)
    skip_until = -1
    for c, f in zip(cw, cf):
        if c < skip_until:
            continue
        dup = f in seen
        if not dup:
            seen.add(f)
            j = bisect.bisect_left(dups, f) - 1
            dup = j < 0 or f >= dups[j] + n
        if dup:
            dups.append(c)
            skip_until = c + n
    return dups[done:]


def duplicate_ngram_chars(words: Pieces, rep: Repeats, n: int) -> np.ndarray:
    """Per document: characters of the words covered by any n-gram that occurs more than
    once in the document (overlaps counted once) — Gopher's "duplicate n-gram" fraction."""
    dup_start = rep.pos
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
        # the other line breaks are rare: a literal split on "\n" (several times faster
        # than the regex split), after the documents that have one get "\n" for each break
        text = self.text
        other = pc.match_substring_regex(text, PY_OTHER_BREAK).fill_null(False)
        if pc.any(other).as_py():
            text = pc.replace_with_mask(text, other, pc.replace_substring_regex(
                text.filter(other), PY_LINE_BREAK, "\n"))
        lists = pc.split_pattern(text, "\n")
        # a last line that a break ends is not a line, nor is an empty text one
        ends = np.asarray(pc.or_(pc.ends_with(text, "\n"), pc.equal(pc.utf8_length(text), 0))
                          .fill_null(False), dtype=bool)
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
    def line_runs(self) -> Pieces:
        """``re.split("\\n+", text)``: the text split on runs of newlines (a leading or
        trailing newline leaves an empty first or last line), from ``lines`` without its
        empty lines inside the text."""
        lines = self.lines
        if len(lines.parent) == 0:
            return lines
        end = np.cumsum(lines.count)
        pos = np.arange(len(lines.parent)) - (end - lines.count)[lines.parent]
        edge = (pos == 0) | (pos == (lines.count - 1)[lines.parent])
        keep = edge | (lines.length > 0)
        return lines if keep.all() else lines.select(keep)

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
