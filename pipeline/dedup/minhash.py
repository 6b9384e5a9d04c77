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


def hash_shingles(sh) -> np.ndarray:
    """datasketch ``sha1_hash32``: little-endian uint32 of the first 4 sha1 bytes."""
    if not sh:
        return np.empty(0, dtype=np.uint32)
    sha1 = hashlib.sha1
    raw = b"".join([sha1(s.encode("utf-8")).digest()[:4] for s in sh])
    return np.frombuffer(raw, dtype="<u4")


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


def word_shingle_hashes(norm: bytes, n: int) -> np.ndarray:
    """sha1_hash32 of every word n-gram of a normalised UTF-8 text (duplicates included:
    they do not change a minimum). Shingles are slices of ``norm`` between word
    boundaries, byte-identical to ``" ".join(words[i:i+n]).encode()`` with no per-shingle
    string building or encoding."""
    if not norm:
        return np.empty(0, dtype=np.uint32)
    sp = np.flatnonzero(np.frombuffer(norm, dtype=np.uint8) == 32)
    if len(sp) + 1 <= n:
        return np.frombuffer(_fast_sha1(norm).digest()[:4], dtype="<u4")
    starts = np.concatenate(([0], sp + 1))[: len(sp) + 2 - n].tolist()
    ends = np.concatenate((sp, [len(norm)]))[n - 1:].tolist()
    sha1 = _fast_sha1
    raw = b"".join([sha1(norm[a:b]).digest()[:4] for a, b in zip(starts, ends)])
    return np.frombuffer(raw, dtype="<u4")


def text_features(text: str, ngram: int, lang: str | None, char_ngrams: bool | None
                  ) -> tuple[bytes, np.ndarray]:
    """(normalised UTF-8 text, shingle hashes) of one raw document."""
    norm = normalize_bytes(text or "")
    if norm and not norm.isascii() and use_char_ngrams(norm.decode("utf-8"), lang, char_ngrams):
        return norm, hash_shingles(shingles(norm.decode("utf-8"), ngram, char=True))
    if char_ngrams:   # explicit character n-grams on ASCII text
        return norm, hash_shingles(shingles(norm.decode("ascii"), ngram, char=True))
    return norm, word_shingle_hashes(norm, ngram)


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
               langs: list[str | None] | None = None) -> list[np.ndarray]:
    """Per document: uint32 sha1 hashes of its shingles after normalisation (a shingle
    may repeat; ``np.unique`` gives the set)."""
    langs = langs if langs is not None else [None] * len(texts)
    return [text_features(t, ngram, lang, char_ngrams)[1] for t, lang in zip(texts, langs)]


def signatures(texts: list[str], cfg=None, *, ngram: int = 5, num_perm: int = 112, seed: int = 1,
               scheme: str = "affine32", char_ngrams: bool | None = None,
               langs: list[str | None] | None = None) -> np.ndarray:
    """MinHash signatures [len(texts), num_perm] (uint64) of raw texts.

    With ``cfg`` (a DedupConfig) its ngram/num_perm/seed/scheme/char_ngrams are used.
    Row i equals ``datasketch.MinHash(num_perm, seed, scheme=...)`` updated with the
    UTF-8 shingles of ``shingles(normalize(texts[i]), ngram)``.
    """
    if cfg is not None:
        ngram, num_perm, seed, scheme, char_ngrams = (cfg.ngram, cfg.num_perm, cfg.seed,
                                                      cfg.scheme, cfg.char_ngrams)
    return signatures_from_hashes(doc_hashes(texts, ngram, char_ngrams, langs), num_perm, seed, scheme)


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
