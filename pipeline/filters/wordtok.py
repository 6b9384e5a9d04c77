"""Word tokenization as datatrove 0.10.1 does it, per language, without spaCy at run time.

datatrove splits words with ``spacy.blank(lang)``'s rule-based tokenizer (English and ~55
other languages; ``xx`` for the rest of the languages it has no better tokenizer for).
spaCy's tokenizer works on whitespace-delimited chunks: each chunk is either a special
case (``don't`` -> ``do n't``, ``e.g.``, emoticons), or has prefixes and suffixes peeled
off by regex, one at a time, re-checking special cases after each, and the rest split on
infix matches (hyphens between letters, ``a.B``, ``3+4``...). This module reimplements
that algorithm (``SpacyRules.split``, a line-by-line port of ``Tokenizer._split_affixes``
and ``_attach_tokens``) over the rules spaCy 3.8 ships, recorded in
``data/tokenizer_rules.json.gz`` (see ``data/make_tokenizer_rules.py``).

Speed comes from what makes spaCy itself fast: the chunk cache. A batch's text is split on
whitespace in Arrow, the chunks are dictionary-encoded, and only chunks never seen before
go through the Python affix loop (natural text repeats its chunks: after a few thousand
documents almost every chunk is a cache hit). Tokens get global integer ids, and per-token
attributes (length, symbol-only, alphabetic, punctuation) are numpy arrays indexed by id,
so every statistic over a batch's tokens is a gather plus ``np.bincount``.

Languages whose datatrove tokenizer needs a model or a package that is not rule-based
(Chinese/jieba, Japanese/SudachiPy, Thai/pythainlp, Korean/Kiwi, Khmer, Lao, Burmese,
Tibetan, Vietnamese/pyvi, Indic/indic-nlp, Stanza) are tokenized here per character in
scripts written without spaces and with spaCy's ``xx`` rules elsewhere (FineWeb-2's fallback
where no segmenter is available); see the README for what that changes.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from array import array
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RULES_PATH = Path(__file__).parent / "data" / "tokenizer_rules.json.gz"

# Scripts without spaces between words: one character = one word in the fallback.
NOSPACE_RANGES = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u0f00-\u0fff"   # Thai Lao Myanmar Khmer Tibetan
                  "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                  "\U00020000-\U0002fa1f")
_NOSPACE_SPLIT = re.compile(f"([{NOSPACE_RANGES}])")
CHAR_LEVEL_TYPES = {"ThaiTokenizer", "KhmerTokenizer", "LaoTokenizer", "TibetanTokenizer",
                    "BurmeseTokenizer"}
CHAR_LEVEL_SPACY = {"zh", "ja"}


@lru_cache(maxsize=1)
def rules_data() -> dict:
    with gzip.open(RULES_PATH, "rt", encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def punctuation_sets() -> tuple[frozenset, frozenset, frozenset]:
    """datatrove's PUNCTUATION_SET, TERMINAL_PUNCTUATION and spaCy's sentencizer marks."""
    d = rules_data()
    term = frozenset(d["terminal_punctuation"])
    return frozenset(d["punctuation"]) | term, term, frozenset(d["sentencizer_punct_chars"])


class Vocab:
    """Global token ids and per-token attributes (numpy arrays indexed by id)."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.tokens: list[str] = []
        self._attrs = {k: array("q") for k in ("length", "symbol", "alpha", "punct", "sent_punct")}
        self._np: dict[str, np.ndarray] = {}

    def id(self, tok: str) -> int:
        i = self.ids.get(tok)
        if i is None:
            i = self.ids[tok] = len(self.tokens)
            self.tokens.append(tok)
            punct_set, _, sent = punctuation_sets()
            a = self._attrs
            a["length"].append(len(tok))
            a["symbol"].append(all(ch in punct_set for ch in tok))
            a["alpha"].append(any(ch.isalpha() for ch in tok))
            a["punct"].append(all(unicodedata.category(ch).startswith("P") for ch in tok))
            a["sent_punct"].append(tok in sent)
            self._np.clear()
        return i

    def attr(self, name: str) -> np.ndarray:
        arr = self._np.get(name)
        if arr is None:
            arr = self._np[name] = np.frombuffer(self._attrs[name], dtype=np.int64).copy()
        return arr

    def lookup(self, words) -> np.ndarray:
        """Ids of ``words`` (added to the vocabulary)."""
        return np.array([self.id(w) for w in words], dtype=np.int64)


VOCAB = Vocab()


class SpacyRules:
    """spaCy's rule-based tokenizer for one language, applied to one whitespace-free chunk."""

    def __init__(self, code: str):
        d = rules_data()
        lang = d["languages"][code]
        t = d["tables"]
        comp = (lambda i: None if t[i] is None else re.compile(t[i]))
        self.code = code
        self.prefix = comp(lang["prefix"])
        self.suffix = comp(lang["suffix"])
        self.infix = comp(lang["infix"])
        self.url_match = comp(lang["url_match"])
        self.token_match = comp(lang["token_match"])
        self.specials: dict[str, list[str]] = t[lang["specials"]]
        # spaCy's special-case matcher: specials that contain affixes are found again after
        # the affix split, as the token sequence the split makes of them
        self.matcher: dict[str, list[tuple[str, ...]]] = {}
        for key in self.specials:
            if self._find_prefix(key) or self._find_suffix(key) or " " in key or \
                    (self.infix and self.infix.search(key)):
                pat = tuple(self._split(key, False))
                if pat:
                    self.matcher.setdefault(pat[0], []).append(pat)

    def _find_prefix(self, s: str) -> int:
        m = self.prefix.search(s) if self.prefix else None
        return (m.end() - m.start()) if m else 0

    def _find_suffix(self, s: str) -> int:
        m = self.suffix.search(s) if self.suffix else None
        return (m.end() - m.start()) if m else 0

    def split(self, string: str) -> list[str]:
        """Tokens of one chunk (``Tokenizer._tokenize``: specials, affixes, infixes, then
        ``_apply_special_cases``)."""
        if string in self.specials:
            return list(self.specials[string])
        toks = self._split(string, True)
        return self._apply_special_cases(toks) if self.matcher else toks

    def _apply_special_cases(self, toks: list[str]) -> list[str]:
        matches = []
        for i, t in enumerate(toks):
            for pat in self.matcher.get(t, ()):
                if tuple(toks[i:i + len(pat)]) == pat:
                    matches.append((i, i + len(pat)))
        if not matches:
            return toks
        # longest first, then earliest; a match is dropped if its first or last token is taken
        matches.sort(key=lambda m: (-(m[1] - m[0]), m[0]))
        seen: set[int] = set()
        chosen = []
        for a, b in matches:
            if a not in seen and (b - 1) not in seen:
                chosen.append((a, b))
            seen.update(range(a, b))
        out, i = [], 0
        for a, b in sorted(chosen):
            out.extend(toks[i:a])
            out.extend(self.specials.get("".join(toks[a:b]), toks[a:b]))
            i = b
        out.extend(toks[i:])
        return out

    def _split(self, string: str, with_special_cases: bool) -> list[str]:
        specials = self.specials if with_special_cases else {}
        prefixes: list[str] = []
        suffixes: list[str] = []
        last_size = 0
        while string and len(string) != last_size:
            if self.token_match and self.token_match.match(string):
                break
            if string in specials:
                break
            last_size = len(string)
            pre_len = self._find_prefix(string)
            if pre_len:
                prefix, minus_pre = string[:pre_len], string[pre_len:]
                if minus_pre and minus_pre in specials:
                    string = minus_pre
                    prefixes.append(prefix)
                    break
            suf_len = self._find_suffix(string[pre_len:])
            if suf_len:
                suffix, minus_suf = string[-suf_len:], string[:-suf_len]
                if minus_suf and minus_suf in specials:
                    string = minus_suf
                    suffixes.append(suffix)
                    break
            if pre_len and suf_len and (pre_len + suf_len) <= len(string):
                string = string[pre_len:-suf_len]
                prefixes.append(prefix)
                suffixes.append(suffix)
            elif pre_len:
                string = minus_pre
                prefixes.append(prefix)
            elif suf_len:
                string = minus_suf
                suffixes.append(suffix)
        out = prefixes
        if string:
            if string in specials:
                out.extend(specials[string])
            elif ((self.token_match and self.token_match.match(string))
                  or (self.url_match and self.url_match.match(string))):
                out.append(string)
            else:
                matches = list(self.infix.finditer(string)) if self.infix else []
                if not matches:
                    out.append(string)
                else:
                    start = 0
                    for m in matches:
                        a, b = m.start(), m.end()
                        if a == 0:
                            continue
                        if a != start:
                            out.append(string[start:a])
                        if a != b:
                            out.append(string[a:b])
                        start = b
                    if string[start:]:
                        out.append(string[start:])
        out.extend(reversed(suffixes))
        return [w for w in (x.strip() for x in out) if w]


class CharLevelRules:
    """Fallback for scripts without spaces: those characters one token each, the rest by ``xx``."""

    def __init__(self):
        self.code = "chars"
        self.rest = SpacyRules("xx")

    def split(self, string: str) -> list[str]:
        out: list[str] = []
        for part in _NOSPACE_SPLIT.split(string):
            if part:
                out.extend([part] if _NOSPACE_SPLIT.fullmatch(part) else self.rest.split(part))
        return out


class ChunkTokenizer:
    """A language's tokenizer with its chunk cache: chunk -> tuple of token ids."""

    MAX_CACHE = 2_000_000

    def __init__(self, rules):
        self.rules = rules
        self.cache: dict[str, tuple[int, ...]] = {}

    def lookup(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The token ids of ``chunks``, concatenated, and how many each chunk has."""
        cache = self.cache
        if len(cache) > self.MAX_CACHE:
            cache.clear()
        split, vid = self.rules.split, VOCAB.id
        out = []
        for ch in chunks:
            hit = cache.get(ch)
            if hit is None:
                hit = cache[ch] = tuple(vid(t) for t in split(ch))
            out.append(hit)
        lens = np.fromiter(map(len, out), dtype=np.int64, count=len(out))
        return np.fromiter(chain.from_iterable(out), dtype=np.int64, count=int(lens.sum())), lens

    def tokens(self, text: str) -> list[str]:
        """Tokens of one text (for tests and per-document callers)."""
        return [t for ch in text.split() for t in self.rules.split(ch)]


@lru_cache(maxsize=None)
def tokenizer_for(code: str) -> ChunkTokenizer:
    """The tokenizer datatrove assigns to ``code`` (``en``, ``eng``, ``eng_Latn``, ...);
    ``xx`` rules for unknown codes."""
    d = rules_data()
    kind, tok_code = d["assignment"].get(code or "", ("SpaCyTokenizer", "xx"))
    if kind in CHAR_LEVEL_TYPES or (kind == "SpaCyTokenizer" and tok_code in CHAR_LEVEL_SPACY):
        return _shared("chars")
    if kind == "SpaCyTokenizer" and tok_code in d["languages"]:
        return _shared(tok_code)
    return _shared("xx")


@lru_cache(maxsize=None)
def _shared(code: str) -> ChunkTokenizer:
    return ChunkTokenizer(CharLevelRules() if code == "chars" else SpacyRules(code))


class Tokens:
    """The tokens of a batch: ``ids`` (global vocabulary ids), ``parent`` (document of
    each token), ``count`` (tokens per document); the same interface as ``text.Pieces``
    for the n-gram and duplicate helpers."""

    def __init__(self, ids: np.ndarray, parent: np.ndarray, n_docs: int):
        self.ids = ids
        self.parent = parent
        self.n_docs = n_docs
        self.count = np.bincount(parent, minlength=n_docs)

    def attr(self, name: str) -> np.ndarray:
        return VOCAB.attr(name)[self.ids] if len(self.ids) else np.zeros(0, dtype=np.int64)

    @property
    def length(self) -> np.ndarray:
        return self.attr("length")

    def per_doc(self, weights=None) -> np.ndarray:
        return np.bincount(self.parent, weights=weights, minlength=self.n_docs)

    def mask_per_doc(self, mask) -> np.ndarray:
        return np.bincount(self.parent[np.asarray(mask, dtype=bool)], minlength=self.n_docs)

    def select(self, mask: np.ndarray) -> "Tokens":
        return Tokens(self.ids[mask], self.parent[mask], self.n_docs)


def tokenize(text: pa.Array, langs: list[str] | None = None) -> Tokens:
    """datatrove's ``split_into_words`` for every document of ``text`` (one language code
    per document, default English)."""
    n = len(text)
    chunks_list = pc.utf8_split_whitespace(text)
    chunks = pc.list_flatten(chunks_list)
    parent = np.asarray(pc.list_parent_indices(chunks_list), dtype=np.int64)
    if len(chunks) == 0:
        return Tokens(np.zeros(0, np.int64), np.zeros(0, np.int64), n)
    enc = pc.dictionary_encode(chunks)
    cidx = np.asarray(enc.indices, dtype=np.int64)
    dictionary = enc.dictionary.to_pylist()
    toks = [tokenizer_for(c) for c in (langs or ["en"])]
    if langs is None or len(set(map(id, toks))) == 1:
        groups, g_of_doc = [toks[0]], np.zeros(n, dtype=np.int64)
    else:
        uniq = {}
        g_of_doc = np.array([uniq.setdefault(id(t), len(uniq)) for t in toks], dtype=np.int64)
        groups = list({id(t): t for t in toks}.values())
    key = g_of_doc[parent] * len(dictionary) + cidx
    ukey, inv = np.unique(key, return_inverse=True)
    lens = np.empty(len(ukey), dtype=np.int64)
    flats = []
    for g, tok in enumerate(groups):
        sel = np.flatnonzero(ukey // len(dictionary) == g)
        if len(sel):
            flat_g, lens[sel] = tok.lookup([dictionary[i] for i in (ukey[sel] % len(dictionary)).tolist()])
            flats.append(flat_g)
    flat = flats[0] if len(flats) == 1 else np.concatenate(flats)
    starts = np.cumsum(lens) - lens
    occ_start, occ_len = starts[inv], lens[inv]
    total = int(occ_len.sum())
    offsets = np.cumsum(occ_len) - occ_len
    pos = np.repeat(occ_start - offsets, occ_len) + np.arange(total)
    return Tokens(flat[pos].astype(np.int64), np.repeat(parent, occ_len), n)
