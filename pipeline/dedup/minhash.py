"""Vectorised MinHash signatures, bit-for-bit equal to ``datasketch.MinHash``.

Pipeline for a batch of documents:
  normalise -> shingles (word or character n-grams) -> sha1 -> 32-bit hash per distinct
  shingle (datasketch's ``sha1_hash32``) -> one numpy matrix [all shingles of the batch x
  num_perm] of permuted hashes -> ``np.minimum.reduceat`` per document.

Only the sha1 of each distinct shingle is a Python-level call (it must be, to match
datasketch); the permutations and minima run in numpy over all shingles of a batch at
once, instead of one MinHash object and one numpy call per document.

Permutation schemes (datasketch 2.0, ``datasketch/minhash.py``):
  * ``affine32`` (default since datasketch 2.0): h <- fmix32(h) (MurmurHash3 finaliser),
    then (a*h + b) mod 2^32 with odd a; a, b from ``np.random.RandomState(seed)``.
  * ``legacy`` (datasketch < 2.0, the one RESEARCH.md quotes): (a*h + b) mod (2^61 - 1),
    truncated to 32 bits, a in [1, p), b in [0, p) drawn pairwise from the same RandomState.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

import numpy as np

try:    # CPython's built-in (HACL*) sha1: same digest, ~1.5x faster than OpenSSL on tiny inputs
    from _sha1 import sha1 as _fast_sha1
except ImportError:  # pragma: no cover
    _fast_sha1 = hashlib.sha1

MERSENNE = np.uint64((1 << 61) - 1)
MAX32 = np.uint64((1 << 32) - 1)

# Languages written without spaces between words: shingle by characters (NeMo Curator
# and FineWeb2 do the same for zh/ja/th).
NO_SPACE_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})

_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_DIGIT = re.compile(r"\d", re.UNICODE)
_SPACE = re.compile(r"\s+", re.UNICODE)
# scripts written without spaces: Thai, Lao, Tibetan, Myanmar, Khmer, kana, CJK ideographs
_NO_SPACE_SCRIPT = re.compile("[\u0E00-\u0EFF\u0F00-\u0FFF\u1000-\u109F\u1780-\u17FF"
                              "\u3040-\u30FF\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]")


# ---------------------------------------------------------------------------------------
# normalisation and shingles
# ---------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """NFKC, lowercase, every digit -> '0', punctuation -> space, whitespace collapsed.

    The same normalisation keys exact dedup, so "Hello, World!" and "hello world" are
    exact duplicates (datatrove's ``simplify_text`` does the same minus accent removal).
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DIGIT.sub("0", text)
    text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def use_char_ngrams(norm_text: str, lang: str | None, setting: bool | None) -> bool:
    """Character shingles for no-space languages: the explicit setting, else the `lang`
    column, else a script test: over 30% of the first 1,000 characters are Thai, Lao,
    Tibetan, Myanmar, Khmer, kana or CJK ideographs."""
    if setting is not None:
        return setting
    if lang:
        return lang.split("_")[0].split("-")[0].lower() in NO_SPACE_LANGS
    head = norm_text[:1000]
    return bool(head) and len(_NO_SPACE_SCRIPT.findall(head)) > 0.3 * len(head)


def shingles(norm_text: str, n: int, char: bool = False) -> set[str]:
    """Distinct n-grams of a normalised text.

    Word n-grams are words joined by a space; character n-grams are taken from the text
    with spaces removed. A text shorter than n units gives one shingle (the whole text),
    so short documents still match their copies; an empty text gives none.
    """
    if char:
        s = norm_text.replace(" ", "")
        if not s:
            return set()
        if len(s) <= n:
            return {s}
        return {s[i:i + n] for i in range(len(s) - n + 1)}
    words = norm_text.split(" ") if norm_text else []
    if not words:
        return set()
    if len(words) <= n:
        return {" ".join(words)}
    return set(map(" ".join, zip(*(words[i:] for i in range(n)))))


def hash_shingles(sh, shingle_hash: str = "sha1") -> np.ndarray:
    """32-bit hashes of a collection of shingle strings (reference path, one call each)."""
    if not sh:
        return np.empty(0, dtype=np.uint32)
    f = SHINGLE_HASHFUNCS[shingle_hash]
    return np.array([f(s.encode("utf-8")) for s in sh], dtype=np.uint32)


# Fast path for ASCII text (most of a web crawl): one bytes.translate does lowercase,
# digits -> '0' and everything else that is not [a-z0-9] -> space, which is exactly what
# ``normalize`` does to ASCII (NFKC is the identity on ASCII; ``_`` and control
# characters are neither letters nor digits).
_ASCII_TABLE = bytes((c + 32) if 65 <= c <= 90 else c if 97 <= c <= 122 else 48 if 48 <= c <= 57
                     else 32 for c in range(256))


def normalize_bytes(text: str) -> bytes:
    """UTF-8 of ``normalize(text)``, via the bytes fast path when the text is ASCII."""
    if text.isascii():
        return b" ".join(text.encode("ascii").translate(_ASCII_TABLE).split())
    return normalize(text).encode("utf-8")


def normalize_batch(texts: list[str]) -> list[bytes]:
    """``normalize_bytes`` of every text; the ASCII ones together in a few numpy passes:
    the texts joined with newlines, translated by ``_ASCII_TABLE`` (newlines inside texts
    become spaces like any other non-alphanumeric byte, the joins are set back to
    newlines), then of every run of spaces only the first byte is kept, and only if the
    run lies between two words of the same text."""
    out: list[bytes] = [b""] * len(texts)
    idx = []
    for i, t in enumerate(texts):
        if not t:
            continue
        if t.isascii():
            idx.append(i)
        else:
            out[i] = normalize(t).encode("utf-8")
    if not idx:
        return out
    parts = [texts[i] for i in idx]
    a = np.frombuffer("\n".join(parts).encode("ascii").translate(_ASCII_TABLE) + b"\n",
                      dtype=np.uint8).copy()
    lens = np.fromiter((len(t) for t in parts), dtype=np.int64, count=len(parts))
    a[np.cumsum(lens + 1) - 1] = 10                       # document separators
    sp = a == 32
    word = ~sp & (a != 10)
    pad = np.zeros(len(a) + 2, dtype=np.int8)
    pad[1:-1] = sp
    d = np.diff(pad)
    rs, re_ = np.flatnonzero(d == 1), np.flatnonzero(d == -1)   # runs of spaces [rs, re)
    ok = (rs > 0) & (re_ < len(a))
    rs, re_ = rs[ok], re_[ok]
    rs = rs[word[rs - 1] & word[re_]]
    keep = ~sp
    keep[rs] = True
    norms = a[keep].tobytes().split(b"\n")
    for i, x in zip(idx, norms):
        out[i] = x
    return out


# ---------------------------------------------------------------------------------------
# shingle hash functions
# ---------------------------------------------------------------------------------------
# ``sha1``: datasketch's default ``sha1_hash32`` (first 4 bytes of sha1, little endian).
# Needs one Python-level call per shingle (~0.4 us): about 150 us per 2 KB document.
#
# ``rolling64`` (default): a polynomial hash of the shingle's bytes modulo 2^64 over a
# random byte table, finalised with MurmurHash3's fmix64, top 32 bits:
#     H(s) = fmix64( sum_j T[s_j] * B^j  mod 2^64 ) >> 32
# Because the sum is positional, the hash of any byte range [x, y) of a buffer is
# (P[y] - P[x]) * B^-x from one prefix sum P over the buffer, so every shingle of a whole
# batch is hashed by a handful of numpy passes (~5 us per 2 KB document). The same
# function as a plain Python callable (``rolling64_hash32``) is passed to datasketch as
# ``hashfunc`` to check the signatures bit for bit. Known weakness of any polynomial hash
# mod 2^64: crafted Thue-Morse strings of >= 2 KB collide; a collision only merges two
# shingles, which at worst nudges a Jaccard estimate.
def _splitmix64(state: int, n: int) -> list[int]:
    out, m = [], (1 << 64) - 1
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & m
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append(z ^ (z >> 31))
    return out


_M64 = (1 << 64) - 1
_TAB = np.array(_splitmix64(0x666F726765666C6F, 256), dtype=np.uint64)     # "forgeflo"
_BASE = 0x9E3779B97F4A7C15                     # odd, so invertible mod 2^64
_IBASE = pow(_BASE, -1, 1 << 64)
_WINDOW = 1 << 18               # bytes per prefix-sum window (powers tables: 2 x 2 MiB)
_POW: np.ndarray | None = None
_IPOW: np.ndarray | None = None


def _powers() -> tuple[np.ndarray, np.ndarray]:
    global _POW, _IPOW
    if _POW is None:
        p = np.full(_WINDOW + 1, _BASE, dtype=np.uint64)
        p[0] = 1
        ip = np.full(_WINDOW + 1, _IBASE, dtype=np.uint64)
        ip[0] = 1
        _POW, _IPOW = np.cumprod(p), np.cumprod(ip)        # wrap mod 2^64
    return _POW, _IPOW


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def rolling64_hash32(data: bytes) -> int:
    """The ``rolling64`` shingle hash of one byte string, in plain Python (reference;
    pass it to ``datasketch.MinHash(hashfunc=...)``)."""
    h, p, tab = 0, 1, _TAB.tolist()
    for c in data:
        h = (h + tab[c] * p) & _M64
        p = (p * _BASE) & _M64
    return _fmix64_int(h) >> 32


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash function (``datasketch.hashfunc.sha1_hash32``)."""
    return int.from_bytes(_fast_sha1(data).digest()[:4], "little")


SHINGLE_HASHFUNCS = {"rolling64": rolling64_hash32, "sha1": sha1_hash32}


def _rolling_spans(a: np.ndarray, S: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``rolling64`` hashes (uint32) of the byte ranges [S[i], E[i]) of the uint8 buffer
    ``a``; S ascending. Prefix sums run over windows of at most 256 KiB, so temporary
    memory is bounded whatever the batch or document size."""
    pw, ipw = _powers()
    out = np.empty(len(S), dtype=np.uint64)
    emax = np.maximum.accumulate(E) if len(E) else E
    i, n = 0, len(S)
    while i < n:
        x0 = int(S[i])
        if int(E[i]) - x0 > _WINDOW:          # one huge shingle: accumulate block by block
            h = 0
            for c0 in range(x0, int(E[i]), _WINDOW):
                seg = a[c0:min(int(E[i]), c0 + _WINDOW)]
                part = int(np.sum(_TAB[seg] * pw[:len(seg)], dtype=np.uint64))
                h = (h + part * pow(_BASE, c0 - x0, 1 << 64)) & _M64
            out[i] = h                        # raw sum: fmix64 is applied below
            i += 1
            continue
        j = max(i + 1, int(np.searchsorted(emax, x0 + _WINDOW, side="right")))
        j = min(j, n)
        while j > i + 1 and int(E[j - 1]) - x0 > _WINDOW:
            j -= 1
        x1 = int(emax[j - 1])
        P = np.empty(x1 - x0 + 1, dtype=np.uint64)
        P[0] = 0
        np.cumsum(_TAB[a[x0:x1]] * pw[:x1 - x0], out=P[1:])
        s, e = S[i:j] - x0, E[i:j] - x0
        out[i:j] = (P[e] - P[s]) * ipw[s]
        i = j
    return (fmix64(out) >> np.uint64(32)).astype(np.uint32)


def _sha1_spans(buf: bytes, S: np.ndarray, E: np.ndarray) -> np.ndarray:
    sha1 = _fast_sha1
    raw = b"".join([sha1(buf[s:e]).digest()[:4] for s, e in zip(S.tolist(), E.tolist())])
    return np.frombuffer(raw, dtype="<u4").copy() if raw else np.empty(0, np.uint32)


def _shingle_spans(a: np.ndarray, doc_off: np.ndarray, n_docs: int, n: int, char: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges of every shingle of the documents concatenated in ``a`` (each followed
    by a newline; document k starts at ``doc_off[k]``). Units are words (runs of bytes
    between single spaces) or, with ``char``, UTF-8 characters. A shingle is ``n``
    consecutive units of one document; a document with 1..n-1 units has one shingle
    (all of it). Returns (starts, ends, doc) ordered by document then position; the
    range [start, end) is byte-identical to ``" ".join(words[i:i+n])`` (or the chars)."""
    nl = a == 10
    if char:
        is_start = ~nl & ((a & 0xC0) != 0x80)
        bounds = np.flatnonzero(is_start | nl)
        k = np.flatnonzero(is_start[bounds])
        us = bounds[k]
        ue = np.append(bounds, len(a))[k + 1]
    else:
        word = np.ones(len(a) + 2, dtype=np.int8)          # 1 = separator (space, newline)
        word[1:-1] = nl | (a == 32)
        edges = np.flatnonzero(np.diff(word))              # word starts and ends alternate
        us, ue = edges[0::2], edges[1::2]
    udoc = np.searchsorted(doc_off, us, side="right") - 1
    m = len(us)
    if m >= n:
        first = np.flatnonzero(udoc[:m - n + 1] == udoc[n - 1:])
        S, E, D = us[first], ue[first + n - 1], udoc[first]
    else:
        S = E = D = np.empty(0, dtype=np.int64)
    wc = np.bincount(udoc, minlength=n_docs)
    short = np.flatnonzero((wc > 0) & (wc < n))
    if len(short):
        ustart = np.concatenate(([0], np.cumsum(wc)[:-1]))
        S = np.concatenate((S, us[ustart[short]]))
        E = np.concatenate((E, ue[ustart[short] + wc[short] - 1]))
        D = np.concatenate((D, short))
        order = np.lexsort((S, D))
        S, E, D = S[order], E[order], D[order]
    return S, E, D


def shingle_hashes(norms: list[bytes], n: int, char: bool = False,
                   shingle_hash: str = "rolling64") -> list[np.ndarray]:
    """Per normalised document: the 32-bit hashes of its shingles (repeats included:
    they do not change a minimum), for a whole batch at once."""
    if not norms:
        return []
    if char:
        norms = [x.replace(b" ", b"") for x in norms]
    buf = b"\n".join(norms) + b"\n"
    a = np.frombuffer(buf, dtype=np.uint8)
    lens = np.fromiter((len(x) + 1 for x in norms), dtype=np.int64, count=len(norms))
    doc_off = np.concatenate(([0], np.cumsum(lens)[:-1]))
    S, E, D = _shingle_spans(a, doc_off, len(norms), n, char)
    hv = _rolling_spans(a, S, E) if shingle_hash == "rolling64" else _sha1_spans(buf, S, E)
    counts = np.bincount(D, minlength=len(norms))
    return np.split(hv, np.cumsum(counts)[:-1])


def doc_features(texts: list[str], ngram: int, langs: list[str | None] | None = None,
                 char_ngrams: bool | None = None, shingle_hash: str = "rolling64"
                 ) -> tuple[list[bytes], list[np.ndarray]]:
    """(normalised UTF-8 texts, shingle hashes) of a batch of raw documents; word
    n-grams, or character n-grams per ``use_char_ngrams``."""
    langs = langs if langs is not None else [None] * len(texts)
    norms = normalize_batch(texts)
    char = [bool(x) and (char_ngrams is True or (
        char_ngrams is None and not x.isascii() and use_char_ngrams(x.decode("utf-8"), lang, None)))
        for x, lang in zip(norms, langs)]
    hashes: list[np.ndarray] = [None] * len(norms)   # type: ignore[list-item]
    for flag in (False, True):
        idx = [i for i, c in enumerate(char) if c == flag]
        if idx:
            for i, h in zip(idx, shingle_hashes([norms[i] for i in idx], ngram, flag, shingle_hash)):
                hashes[i] = h
    return norms, hashes


# ---------------------------------------------------------------------------------------
# permutations and signatures
# ---------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) exactly as ``datasketch.MinHash._init_permutations`` draws them."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array([(gen.randint(1, MERSENNE, dtype=np.uint64),
                        gen.randint(0, MERSENNE, dtype=np.uint64)) for _ in range(num_perm)],
                      dtype=np.uint64).T
        return ab[0].copy(), ab[1].copy()
    if scheme == "affine32":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a, b
    raise ValueError(f"unknown MinHash scheme {scheme!r}")


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finaliser (datasketch ``_fmix(hv, 32)``); wraps mod 2^32."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _permute(hv: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """[num_perm, n_shingles] permuted hash values (uint32, or uint64 < 2^32 for legacy).
    Permutations on the first axis: the per-document minimum is then a reduceat along
    contiguous rows, about twice as fast as along the other axis."""
    if scheme == "affine32":
        x = np.multiply(a[:, None], fmix32(hv)[None, :])
        x += b[:, None]
        return x
    x = a[:, None] * hv.astype(np.uint64)[None, :]          # wraps mod 2^64 as datasketch
    x += b[:, None]
    np.remainder(x, MERSENNE, out=x)
    np.bitwise_and(x, MAX32, out=x)
    return x


def signatures_from_hashes(hashes: list[np.ndarray], num_perm: int, seed: int = 1,
                           scheme: str = "affine32", chunk_elems: int = 1 << 20) -> np.ndarray:
    """MinHash signatures [n_docs, num_perm] (uint64) from each document's shingle hashes.

    All shingles of the batch are permuted together, in chunks of whole documents of at
    most ``chunk_elems`` matrix cells (4 MiB of uint32: stays in cache), then reduced per
    document with ``np.minimum.reduceat``. A document without shingles gets the empty
    signature (all 2^32 - 1), as an empty ``datasketch.MinHash``.
    """
    a, b = permutations(num_perm, seed, scheme)
    n = len(hashes)
    out = np.full((n, num_perm), MAX32, dtype=np.uint64)
    counts = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=n)
    max_cols = max(1, chunk_elems // num_perm)
    i = 0
    while i < n:
        # take documents while the chunk stays under max_cols shingles (at least one doc)
        j, cols = i, 0
        while j < n and (j == i or cols + counts[j] <= max_cols):
            cols += counts[j]
            j += 1
        idx = np.arange(i, j)
        nonempty = idx[counts[i:j] > 0]
        if len(nonempty):
            hv = np.concatenate([hashes[k] for k in nonempty])
            starts = np.concatenate(([0], np.cumsum(counts[nonempty])[:-1]))
            out[nonempty] = np.minimum.reduceat(_permute(hv, a, b, scheme), starts, axis=1).T
        i = j
    return out


def doc_hashes(texts: list[str], ngram: int = 5, char_ngrams: bool | None = None,
               langs: list[str | None] | None = None, shingle_hash: str = "rolling64"
               ) -> list[np.ndarray]:
    """Per document: 32-bit hashes of its shingles after normalisation (a shingle may
    repeat; ``np.unique`` gives the set)."""
    return doc_features(texts, ngram, langs, char_ngrams, shingle_hash)[1]


def signatures(texts: list[str], cfg=None, *, ngram: int = 5, num_perm: int = 112, seed: int = 1,
               scheme: str = "affine32", char_ngrams: bool | None = None,
               langs: list[str | None] | None = None, shingle_hash: str = "rolling64") -> np.ndarray:
    """MinHash signatures [len(texts), num_perm] (uint64) of raw texts.

    With ``cfg`` (a DedupConfig) its ngram/num_perm/seed/scheme/char_ngrams/shingle_hash
    are used. Row i equals ``datasketch.MinHash(num_perm, seed, scheme=...,
    hashfunc=SHINGLE_HASHFUNCS[shingle_hash])`` updated with the UTF-8 shingles of
    ``shingles(normalize(texts[i]), ngram)`` (``sha1`` is datasketch's default hashfunc).
    """
    if cfg is not None:
        ngram, num_perm, seed, scheme, char_ngrams, shingle_hash = (
            cfg.ngram, cfg.num_perm, cfg.seed, cfg.scheme, cfg.char_ngrams, cfg.shingle_hash)
    return signatures_from_hashes(doc_hashes(texts, ngram, char_ngrams, langs, shingle_hash),
                                  num_perm, seed, scheme)


# ---------------------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------------------
_FNV = np.uint64(0x100000001B3)


def fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n_docs, bands] uint64 bucket keys: a 64-bit hash of each band's ``rows`` values,
    salted with the band index, so one key column serves all bands (two documents share
    a key only if they agree on all rows of the same band, up to a 2^-64 collision)."""
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for bi in range(bands):
            h = np.full(n, np.uint64(0xCBF29CE484222325) ^ np.uint64(bi + 1), dtype=np.uint64)
            for c in range(bi * rows, (bi + 1) * rows):
                h = (h ^ sigs[:, c]) * _FNV
            keys[:, bi] = fmix64(h)
    return keys


def p_candidate(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one bucket) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - s ** rows) ** bands


def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5,
                  fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive + false-negative areas under
    the S-curve, as ``datasketch.lsh._optimal_param`` (same integrals, same search)."""
    from scipy.integrate import quad

    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, _ = quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)
            fn, _ = quad(lambda s: (1 - s ** float(r)) ** float(b), threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def jaccard(h1: np.ndarray, h2: np.ndarray) -> float:
    """Exact Jaccard of two shingle-hash sets (arrays of distinct values)."""
    if len(h1) == 0 and len(h2) == 0:
        return 1.0
    inter = len(np.intersect1d(h1, h2, assume_unique=True))
    return inter / (len(h1) + len(h2) - inter)
