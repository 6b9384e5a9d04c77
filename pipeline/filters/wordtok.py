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
_HAS_SPACE = re.compile(r"\s")      # what str.strip() strips
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
    """Global token ids and per-token attributes (numpy arrays indexed by id). ``id`` only
    numbers a new token; its attributes are computed for all new tokens together on the
    next ``attr`` call, into arrays that grow by doubling (``attr`` returns a view: no
    copy of the whole vocabulary per batch)."""

    NAMES = ("length", "symbol", "alpha", "punct", "sent_punct")

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.tokens: list[str] = []
        self._arrays = {k: np.zeros(1024, dtype=np.int64) for k in self.NAMES}
        self._filled = 0

    def id(self, tok: str) -> int:
        i = self.ids.get(tok)
        if i is None:
            i = self.ids[tok] = len(self.tokens)
            self.tokens.append(tok)
        return i

    def _fill(self) -> None:
        done, total = self._filled, len(self.tokens)
        if done == total:
            return
        punct_set, _, sent = punctuation_sets()
        category = unicodedata.category
        new = {k: [] for k in self.NAMES}
        length, symbol, alpha, punct, sent_punct = (new[k] for k in self.NAMES)
        for tok in self.tokens[done:]:
            length.append(len(tok))
            symbol.append(set(tok) <= punct_set)
            if tok.isalpha():           # letters only: alphabetic, not punctuation
                alpha.append(True)
                punct.append(False)
            else:
                alpha.append(any(ch.isalpha() for ch in tok))
                punct.append(all(category(ch).startswith("P") for ch in tok))
            sent_punct.append(tok in sent)
        for k in self.NAMES:
            arr = self._arrays[k]
            if len(arr) < total:
                grown = np.zeros(max(total, 2 * len(arr)), dtype=np.int64)
                grown[:done] = arr[:done]
                arr = self._arrays[k] = grown
            arr[done:total] = new[k]
        self._filled = total

    def attr(self, name: str) -> np.ndarray:
        self._fill()
        return self._arrays[name][:self._filled]

    def lookup(self, words) -> np.ndarray:
        """Ids of ``words`` (added to the vocabulary)."""
        return np.array([self.id(w) for w in words], dtype=np.int64)


VOCAB = Vocab()


# ------------------------------------------------------------------ affix regex indexes
# spaCy's prefix regex is ``^piece|^piece|...`` and its suffix regex ``piece$|piece$|...``:
# every match starts at the chunk's first character (ends at its last). A piece whose
# first (last) consumed character cannot be the chunk's first (last) character cannot
# match, so the search only needs the pieces that can: one small regex per edge character,
# built the first time that character is seen. An infix piece can only match a chunk that
# holds a character of each class the piece requires; a chunk where no piece can has no
# infix, and the others are searched with the pieces that can.
# Both are exact (``tests/test_filters_rules.py`` compares them with the plain regexes on
# every chunk of a corpus, in every language); a pattern the analysis does not understand
# (case-insensitive flags, back-references) keeps the plain regex.
import re._constants as _sc  # noqa: E402
import re._parser as _sp  # noqa: E402

_ALL = ("all", None)
_MISSING = object()


class _Unsupported(Exception):
    pass


def _top_branches(pattern: str) -> list[str]:
    """``pattern`` split on its top-level ``|`` (outside groups, classes and escapes)."""
    out, depth, in_class, esc, start = [], 0, False, False, 0
    for i, ch in enumerate(pattern):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif in_class:
            in_class = ch != "]" or i == start
        elif ch == "[":
            in_class = True
            start = i + 1 if pattern[i + 1:i + 2] != "^" else i + 2
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            out.append(pattern[len("|".join(out)) + bool(out):i])
    out.append(pattern[len("|".join(out)) + bool(out):])
    return out


def _group_body(av):
    """A group's sub-pattern; a group that switches on case-insensitive (or locale)
    matching cannot be analysed with case-sensitive classes."""
    _group, add_flags, _del_flags, body = av
    if add_flags & (_sc.SRE_FLAG_IGNORECASE | _sc.SRE_FLAG_LOCALE):
        raise _Unsupported("flags")
    return body


def _edge_atoms(seq, from_end: bool) -> tuple[list, bool]:
    """The sets the first (last) consumed character of ``seq`` belongs to, and whether
    ``seq`` can consume nothing."""
    atoms: list = []
    items = list(seq)
    for op, av in (reversed(items) if from_end else items):
        got, nullable = _node_atoms(op, av, from_end)
        atoms += got
        if not nullable:
            return atoms, False
    return atoms, True


def _node_atoms(op, av, from_end: bool) -> tuple[list, bool]:
    if op is _sc.LITERAL:
        return [("lit", av)], False
    if op is _sc.IN:
        return [("in", av)], False
    if op is _sc.CATEGORY:
        return [("in", [(op, av)])], False
    if op in (_sc.ASSERT, _sc.ASSERT_NOT, _sc.AT):
        return [], True
    if op is _sc.SUBPATTERN:
        return _edge_atoms(_group_body(av), from_end)
    if op is _sc.ATOMIC_GROUP:
        return _edge_atoms(av, from_end)
    if op is _sc.BRANCH:
        atoms, nullable = [], False
        for b in av[1]:
            got, n = _edge_atoms(b, from_end)
            atoms += got
            nullable |= n
        return atoms, nullable
    if op in (_sc.MAX_REPEAT, _sc.MIN_REPEAT, _sc.POSSESSIVE_REPEAT):
        lo, _hi, p = av
        got, n = _edge_atoms(p, from_end)
        return got, n or lo == 0
    return [_ALL], False        # ANY, NOT_LITERAL, group references: any character


_CATEGORY_CLASS = {_sc.CATEGORY_DIGIT: r"\d", _sc.CATEGORY_NOT_DIGIT: r"\D",
                   _sc.CATEGORY_SPACE: r"\s", _sc.CATEGORY_NOT_SPACE: r"\S",
                   _sc.CATEGORY_WORD: r"\w", _sc.CATEGORY_NOT_WORD: r"\W"}


def _class_regex(atoms: list) -> str | None:
    """A regex matching one character of any of ``atoms`` (None: any character)."""
    parts = []
    for kind, av in atoms:
        if kind == "all":
            return None
        if kind == "lit":
            parts.append(re.escape(chr(av)))
            continue
        inner, negate = [], False
        for op, x in av:
            if op is _sc.NEGATE:
                negate = True
            elif op is _sc.LITERAL:
                inner.append(re.escape(chr(x)))
            elif op is _sc.RANGE:
                inner.append(f"{re.escape(chr(x[0]))}-{re.escape(chr(x[1]))}")
            elif op is _sc.CATEGORY and x in _CATEGORY_CLASS:
                inner.append(_CATEGORY_CLASS[x])
            else:
                return None
        if inner:
            parts.append(("[^" if negate else "[") + "".join(inner) + "]")
        elif negate:
            return None
    return "|".join(parts) if parts else "(?!)"


def _mandatory_atoms(seq) -> list[list]:
    """Sets of which every match of ``seq`` needs a character in the string (consumed
    or looked at by a positive look-around): one list of atoms per such element."""
    out: list[list] = []
    for op, av in seq:
        if op in (_sc.LITERAL, _sc.IN, _sc.CATEGORY):
            out.append(_node_atoms(op, av, False)[0])
        elif op is _sc.SUBPATTERN:
            out += _mandatory_atoms(_group_body(av))
        elif op is _sc.ATOMIC_GROUP:
            out += _mandatory_atoms(av)
        elif op in (_sc.MAX_REPEAT, _sc.MIN_REPEAT, _sc.POSSESSIVE_REPEAT) and av[0] >= 1:
            out += _mandatory_atoms(av[2])
        elif op is _sc.ASSERT:
            out += _mandatory_atoms(av[1])
        elif op is _sc.BRANCH:
            firsts: list = []
            for b in av[1]:
                got, nullable = _edge_atoms(b, False)
                if nullable:
                    break
                firsts += got
            else:
                out.append(firsts)
    return out


_CLASS_CACHE: dict[tuple[str, int], re.Pattern] = {}


def _compiled_class(cls: str, flags: int) -> re.Pattern:
    rx = _CLASS_CACHE.get((cls, flags))
    if rx is None:
        rx = _CLASS_CACHE[(cls, flags)] = re.compile(cls, flags)
    return rx


class _Edge:
    """The pieces of an anchored alternation that can start (end) with one character:
    their regex, and for each piece the character classes the string must also contain
    for it to match (``possible``: a cheap necessary condition)."""

    __slots__ = ("regex", "always", "gates")

    def __init__(self, regex: re.Pattern, gates: list[tuple[re.Pattern, ...]]):
        self.regex = regex
        self.always = any(not g for g in gates)
        self.gates = tuple(gates)

    def possible(self, s: str) -> bool:
        if self.always:
            return True
        for gate in self.gates:
            for g in gate:
                if not g.search(s):
                    break
            else:
                return True
        return False


class _EdgeIndex:
    """``regex.search`` for an anchored alternation, trying only the pieces whose first
    (``from_end=False``) or last consumed character can be the string's, and only when
    one of them can match at all."""

    def __init__(self, regex: re.Pattern, from_end: bool):
        self.regex, self.from_end = regex, from_end
        self.by_char: dict[str, _Edge | None] = {}
        anchor = _sc.AT_END if from_end else _sc.AT_BEGINNING
        flags = _sp.parse(regex.pattern).state.flags
        if flags & (_sc.SRE_FLAG_IGNORECASE | _sc.SRE_FLAG_LOCALE | _sc.SRE_FLAG_MULTILINE):
            raise _Unsupported("flags")
        self.flags = flags
        self.pieces = []
        for text in _top_branches(regex.pattern):
            seq = list(_sp.parse(text, flags))
            edge = seq[-1] if from_end else seq[0]
            if not seq or edge != (_sc.AT, anchor):
                raise _Unsupported("unanchored piece")
            atoms, nullable = _edge_atoms(seq, from_end)
            cls = None if nullable else _class_regex(atoms)
            gates = [c for c in map(_class_regex, _mandatory_atoms(seq)) if c is not None]
            self.pieces.append((text, None if cls is None else _compiled_class(cls, flags),
                                [_compiled_class(g, flags) for g in gates]))
        if "|".join(t for t, _, _ in self.pieces) != regex.pattern:
            raise _Unsupported("split")

    def _for(self, ch: str) -> _Edge | None:
        chosen = [(t, gates) for t, cls, gates in self.pieces if cls is None or cls.fullmatch(ch)]
        if not chosen:
            return None
        # a class the edge character itself satisfies tells nothing
        gates = [tuple(g for g in gs if not g.fullmatch(ch)) for _, gs in chosen]
        return _Edge(re.compile("|".join(t for t, _ in chosen), self.regex.flags), gates)

    def for_char(self, ch: str) -> _Edge | None:
        """The pieces that can start (end) with ``ch``; None when none can."""
        try:
            return self.by_char[ch]
        except KeyError:
            e = self.by_char[ch] = self._for(ch)
            return e

    def search(self, s: str):
        if not s or "\n" in s:
            return self.regex.search(s)
        ch = s[-1] if self.from_end else s[0]
        e = self.by_char.get(ch, _MISSING)
        if e is _MISSING:
            e = self.for_char(ch)
        if e is None or not (e.always or e.possible(s)):
            return None
        return e.regex.search(s)

    def untouched(self, s: str) -> bool:
        """No piece can match ``s`` (no newline in ``s``, which is not empty)."""
        e = self.for_char(s[-1] if self.from_end else s[0])
        return e is None or not e.possible(s)


def _edge_index(regex: re.Pattern | None, from_end: bool):
    if regex is None:
        return None
    try:
        return _EdgeIndex(regex, from_end)
    except (_Unsupported, re.error):
        return regex


class _InfixIndex:
    """Which pieces of the infix alternation can match somewhere in a string: a piece
    needs a character of each class it requires (consumed or looked at). ``regex_for(s)``
    is None when no piece can (then the regex has no match in ``s``), that piece alone
    when one can (its matches in ``s`` are the alternation's: the others match nowhere),
    and the whole regex otherwise. A string's classes are the union of its characters'
    (cached per character); at most one compile per piece."""

    def __init__(self, regex: re.Pattern):
        flags = _sp.parse(regex.pattern).state.flags
        if flags & (_sc.SRE_FLAG_IGNORECASE | _sc.SRE_FLAG_LOCALE):
            raise _Unsupported("flags")
        self.texts = _top_branches(regex.pattern)
        if "|".join(self.texts) != regex.pattern:
            raise _Unsupported("split")
        classes: dict[str, int] = {}
        self.piece_masks = []
        for text in self.texts:
            mask = 0
            for atoms in _mandatory_atoms(_sp.parse(text, flags)):
                cls = _class_regex(atoms)
                if cls is not None:
                    mask |= 1 << classes.setdefault(cls, len(classes))
            self.piece_masks.append(mask)
        self.gates = [_compiled_class(c, flags) for c in classes]
        self.regex = regex
        self.char_masks: dict[str, int] = {}
        self.by_mask: dict[int, re.Pattern | None] = {}
        self.single: dict[int, re.Pattern] = {}
        # ASCII characters with equal masks translate to one of them: fewer to look up
        first_of: dict[int, str] = {}
        self.ascii_class = {c: first_of.setdefault(self._mask(chr(c)), chr(c)) for c in range(128)}

    def _mask(self, ch: str) -> int:
        b = self.char_masks.get(ch)
        if b is None:
            b = self.char_masks[ch] = sum(1 << i for i, g in enumerate(self.gates) if g.fullmatch(ch))
        return b

    def regex_for(self, s: str) -> re.Pattern | None:
        masks, m = self.char_masks, 0
        for ch in set(s.translate(self.ascii_class)):
            b = masks.get(ch)
            if b is None:
                b = self._mask(ch)
            m |= b
        try:
            return self.by_mask[m]
        except KeyError:
            pass
        pieces = [i for i, pm in enumerate(self.piece_masks) if pm & m == pm]
        if not pieces:
            rx = None
        elif len(pieces) == 1:          # one piece alone: compiled once per piece
            rx = self.single.get(pieces[0])
            if rx is None:
                rx = self.single[pieces[0]] = re.compile(self.texts[pieces[0]], self.regex.flags)
        else:
            rx = self.regex
        self.by_mask[m] = rx
        return rx


def _infix_index(regex: re.Pattern | None) -> _InfixIndex | None:
    if regex is None:
        return None
    try:
        return _InfixIndex(regex)
    except (_Unsupported, re.error):
        return None


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
        self.set_indexed(True)
        # spaCy's special-case matcher: specials that contain affixes are found again after
        # the affix split, as the token sequence the split makes of them
        self.matcher: dict[str, list[tuple[str, ...]]] = {}
        for key in self.specials:
            if self._find_prefix(key) or self._find_suffix(key) or " " in key or \
                    (self.infix and self.infix.search(key)):
                pat = tuple(self._split(key, False))
                if pat:
                    self.matcher.setdefault(pat[0], []).append(pat)
        # the special-case matcher indexed by its patterns' first token (one-token
        # patterns) and first two tokens (longer ones)
        self._single = {p[0] for pats in self.matcher.values() for p in pats if len(p) == 1}
        self._starts = set(self.matcher)         # tokens a pattern can start with
        self._pairs: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for pats in self.matcher.values():
            for p in pats:
                if len(p) > 1:
                    self._pairs.setdefault(p[:2], []).append(p)

    def set_indexed(self, on: bool) -> None:
        """Search affixes through the edge indexes and the infix gate (exact; ``False``
        uses the plain regexes and spaCy's special-case loop, to compare)."""
        self._indexed = on
        if on:
            self._prefix_search = _edge_index(self.prefix, False)
            self._suffix_search = _edge_index(self.suffix, True)
            self._infix_index = _infix_index(self.infix)
        else:
            self._prefix_search, self._suffix_search = self.prefix, self.suffix
            self._infix_index = None
        # ``_split_indexed`` (the loop with the edge searches inlined) needs both affix
        # searches as edge indexes (or absent: an absent regex never matches) and, where
        # there is an infix regex, its gate
        self._plain = on and all(isinstance(x, _EdgeIndex) or x is None
                                 for x in (self._prefix_search, self._suffix_search)) \
            and (self.infix is None or self._infix_index is not None)

    def _find_prefix(self, s: str) -> int:
        m = self._prefix_search.search(s) if self.prefix else None
        return (m.end() - m.start()) if m else 0

    def _find_suffix(self, s: str) -> int:
        m = self._suffix_search.search(s) if self.suffix else None
        return (m.end() - m.start()) if m else 0

    def split(self, string: str) -> list[str]:
        """Tokens of one chunk (``Tokenizer._tokenize``: specials, affixes, infixes, then
        ``_apply_special_cases``)."""
        specials = self.specials
        if string in specials:
            return list(specials[string])
        if self._plain:
            return self._split_indexed(string)
        toks = self._split(string, True)
        if not self.matcher:
            return toks
        return self._apply_special_cases(toks) if self._indexed else self._reference_special_cases(toks)

    def _attach(self, string: str, out: list[str], specials: dict) -> None:
        """What is left of a chunk after its affixes (spaCy's ``_attach_tokens``): a
        special case, one token (no infix can match, or a token or URL match), or the
        infix split; appended to ``out``."""
        if string in specials:
            out.extend(specials[string])
        elif (infix := self.infix if self._infix_index is None
              else self._infix_index.regex_for(string)) is None:
            out.append(string)      # no infix can match: the same as a token/URL match
        elif ((self.token_match is not None and self.token_match.match(string))
              or (self.url_match is not None and self.url_match.match(string))):
            out.append(string)
        else:
            start = 0
            for m in infix.finditer(string):
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

    def _split_indexed(self, string: str) -> list[str]:
        """``_split(string, True)`` then the special cases, as one function for the indexed
        mode (the edge indexes and the infix gate): the same steps in the same order, with
        two shortcuts that change nothing: tokens are stripped only when the chunk has
        whitespace (a token is a non-empty substring of the chunk, or a special case's
        pieces of one), and the special-case matcher runs only when a token can start a
        pattern. The affix loop is ``_split``'s with the edge-index searches inlined (a
        method call per search is a twentieth of a cache miss's cost); the two loops are
        kept in step by the test that compares this mode with spaCy's loop in every
        language."""
        if "\n" in string:                 # ``$`` also matches before a final newline
            return self._apply_special_cases(self._split(string, True)) if self.matcher \
                else self._split(string, True)
        whole = string
        specials = self.specials
        token_match = self.token_match
        pre_idx, suf_idx = self._prefix_search, self._suffix_search
        pre_by = pre_idx.by_char if pre_idx is not None else None
        suf_by = suf_idx.by_char if suf_idx is not None else None
        prefixes: list[str] = []
        suffixes: list[str] = []
        last_size = 0
        while string and len(string) != last_size:
            if token_match is not None and token_match.match(string):
                break
            if string in specials:
                break
            last_size = len(string)
            pre_len = 0                     # _EdgeIndex.search, inlined
            if pre_by is not None:
                e = pre_by.get(string[0], _MISSING)
                if e is _MISSING:
                    e = pre_idx.for_char(string[0])
                if e is not None and (e.always or e.possible(string)):
                    m = e.regex.search(string)
                    if m is not None:
                        pre_len = m.end() - m.start()
            if pre_len:
                prefix, minus_pre = string[:pre_len], string[pre_len:]
                if minus_pre and minus_pre in specials:
                    string = minus_pre
                    prefixes.append(prefix)
                    break
            suf_len = 0
            if suf_by is not None:
                rest = string[pre_len:] if pre_len else string
                if rest:
                    e = suf_by.get(rest[-1], _MISSING)
                    if e is _MISSING:
                        e = suf_idx.for_char(rest[-1])
                    m = e.regex.search(rest) if e is not None and (e.always or e.possible(rest)) else None
                else:
                    m = suf_idx.search(rest)
                if m is not None:
                    suf_len = m.end() - m.start()
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
            self._attach(string, out, specials)
        if suffixes:
            out.extend(reversed(suffixes))
        if _HAS_SPACE.search(whole) is not None:
            out = [w for w in (x.strip() for x in out) if w]
        if self.matcher and not self._starts.isdisjoint(out):
            return self._apply_special_cases(out)
        return out

    def _reference_special_cases(self, toks: list[str]) -> list[str]:
        """``_apply_special_cases`` as spaCy writes it (every pattern of the first token)."""
        matches = []
        for i, t in enumerate(toks):
            for pat in self.matcher.get(t, ()):
                if tuple(toks[i:i + len(pat)]) == pat:
                    matches.append((i, i + len(pat)))
        return self._resolve_matches(toks, matches)

    def _apply_special_cases(self, toks: list[str]) -> list[str]:
        matches = []
        single, pairs, n = self._single, self._pairs, len(toks)
        for i in range(n):
            t = toks[i]
            if t in single:
                matches.append((i, i + 1))
            if i + 1 < n:
                for pat in pairs.get((t, toks[i + 1]), ()):
                    if tuple(toks[i:i + len(pat)]) == pat:
                        matches.append((i, i + len(pat)))
        return self._resolve_matches(toks, matches)

    def _resolve_matches(self, toks: list[str], matches: list[tuple[int, int]]) -> list[str]:
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
        token_match = self.token_match
        pre_search = self._prefix_search.search if self.prefix is not None else None
        suf_search = self._suffix_search.search if self.suffix is not None else None
        prefixes: list[str] = []
        suffixes: list[str] = []
        last_size = 0
        while string and len(string) != last_size:
            if token_match is not None and token_match.match(string):
                break
            if string in specials:
                break
            last_size = len(string)
            m = pre_search(string) if pre_search is not None else None
            pre_len = m.end() - m.start() if m is not None else 0
            if pre_len:
                prefix, minus_pre = string[:pre_len], string[pre_len:]
                if minus_pre and minus_pre in specials:
                    string = minus_pre
                    prefixes.append(prefix)
                    break
            m = suf_search(string[pre_len:] if pre_len else string) if suf_search is not None else None
            suf_len = m.end() - m.start() if m is not None else 0
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
            self._attach(string, out, specials)
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
        out = list(map(cache.get, chunks))         # hits at C speed, then the misses
        for i in [i for i, hit in enumerate(out) if hit is None]:
            ch = chunks[i]
            hit = cache.get(ch)                    # a chunk twice in ``chunks``
            if hit is None:
                hit = cache[ch] = tuple(map(vid, split(ch)))
            out[i] = hit
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

    def subset_docs(self, keep: np.ndarray) -> "Tokens":
        """The tokens of the documents where ``keep`` is true, renumbered 0..k-1."""
        keep = np.asarray(keep, dtype=bool)
        mask = keep[self.parent]
        new_index = np.cumsum(keep) - 1
        return Tokens(self.ids[mask], new_index[self.parent[mask]], int(keep.sum()))


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
    if len(groups) == 1:            # every dictionary entry occurs: the dictionary is the key set
        ukey, inv = np.arange(len(dictionary), dtype=np.int64), cidx
    else:
        ukey, inv = np.unique(g_of_doc[parent] * len(dictionary) + cidx, return_inverse=True)
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
