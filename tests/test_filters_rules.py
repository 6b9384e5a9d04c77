"""Heuristic filter rules on crafted documents, on both sides of each published threshold.

These pin the papers' literal definitions (``semantics: paper``); the datatrove-reference
semantics (the default) are checked against datatrove itself in test_datatrove_oracle.py."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.filters.badwords import BadWordsConfig, BadWordsFilter
from pipeline.filters.c4 import C4Config, C4Filter
from pipeline.filters.fineweb import FineWebConfig, FineWebFilter
from pipeline.filters.gopher_quality import GopherQualityConfig, GopherQualityFilter
from pipeline.filters.gopher_repetition import GopherRepetitionConfig, GopherRepetitionFilter
from pipeline.filters.text import TextBatch
from pipeline.filters.url_blocklist import URLBlocklistConfig, URLBlocklistFilter
from tests.conftest import shared_path

RNG = random.Random(7)
VOCAB = sorted({"".join(RNG.choice("bcdfghklmnprstvz") + RNG.choice("aeiou") for _ in range(RNG.randint(2, 3)))
                for _ in range(3000)})


def words(n: int, rng: random.Random | None = None) -> list[str]:
    """n distinct-looking pseudo-words (length 4-6): no accidental repetition."""
    rng = rng or random.Random(n)
    return [rng.choice(VOCAB) for _ in range(n)]


def run(flt, docs, urls=None):
    table = pa.table({"url": urls}) if urls is not None else None
    res = flt.apply(TextBatch(pa.array(docs, pa.string()), table))
    return res


def assert_decisions(flt, keep_doc, drop_doc, rule):
    res = run(flt, [keep_doc, drop_doc])
    assert res.keep.tolist() == [True, False], (res.detail, {k: v for k, v in res.scores.items()})
    assert res.detail[1].startswith(rule + "="), res.detail[1]
    return res


# ---------------------------------------------------------------------------- Gopher quality
GQ_ONLY = dict(min_words=None, max_words=None, min_avg_word_length=None, max_avg_word_length=None,
               max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
               min_alpha_words_ratio=None, min_stop_words=0)


def gq(**over):
    return GopherQualityFilter(GopherQualityConfig(**{"semantics": "paper", **GQ_ONLY, **over}))


def test_gopher_quality_word_count_bounds():
    f = GopherQualityFilter(GopherQualityConfig(semantics="paper"))         # all published defaults
    base = ["the", "of"] + words(48)
    assert_decisions(f, " ".join(base), " ".join(base[:-1]), "n_words")
    # symbol-only tokens are not words: 49 words + 5 "--" tokens still fails
    res = run(f, [" ".join(base[:-1] + ["--", "…", "##", "!!", "&"])])
    assert not res.keep[0]
    assert res.scores["n_words"][0] == 49
    assert_decisions(gq(max_words=100), " ".join(words(100)), " ".join(words(101)), "n_words")


def test_gopher_quality_avg_word_length():
    assert_decisions(gq(min_avg_word_length=3), " ".join(["abc"] * 60), " ".join(["ab"] * 60),
                     "avg_word_length")
    # punctuation at the ends is stripped before measuring: "abc," has length 3
    assert run(gq(min_avg_word_length=3), [" ".join(["abc,"] * 60)]).keep[0]
    assert_decisions(gq(max_avg_word_length=10), " ".join(["a" * 10] * 60), " ".join(["a" * 11] * 60),
                     "avg_word_length")


def test_gopher_quality_symbol_ratios():
    w = words(100)
    keep = " ".join(f"#{x}" if i < 10 else x for i, x in enumerate(w))
    drop = " ".join(f"#{x}" if i < 11 else x for i, x in enumerate(w))
    assert_decisions(gq(max_symbol_word_ratio=0.1), keep, drop, "hash_ratio")
    keep = " ".join(f"{x}..." if i < 10 else x for i, x in enumerate(w))
    drop = " ".join(f"{x}…" if i < 11 else x for i, x in enumerate(w))
    assert_decisions(gq(max_symbol_word_ratio=0.1), keep, drop, "ellipsis_ratio")


def test_gopher_quality_line_ratios():
    lines = [" ".join(words(8, random.Random(i))) for i in range(10)]
    keep = "\n".join(("- " + l) if i < 9 else l for i, l in enumerate(lines))
    drop = "\n".join("• " + l for l in lines)
    assert_decisions(gq(max_bullet_lines_ratio=0.9), keep, drop, "bullet_lines_ratio")
    keep = "\n".join((l + " ...") if i < 3 else l for i, l in enumerate(lines))
    drop = "\n".join((l + "…") if i < 4 else l for i, l in enumerate(lines))
    assert_decisions(gq(max_ellipsis_lines_ratio=0.3), keep, drop, "ellipsis_lines_ratio")


def test_gopher_quality_alpha_and_stop_words():
    w = words(100)
    keep = " ".join("12345" if i < 20 else x for i, x in enumerate(w))
    drop = " ".join("12345" if i < 21 else x for i, x in enumerate(w))
    assert_decisions(gq(min_alpha_words_ratio=0.8), keep, drop, "alpha_words_ratio")
    w = words(60)
    assert_decisions(gq(min_stop_words=2), " ".join(["The"] + w + ["and."]), " ".join(["the"] + w),
                     "stop_words")


# ---------------------------------------------------------------------------- Gopher repetition
def rep(**over):
    base = dict(max_dup_line_fraction=None, max_dup_para_fraction=None, max_dup_line_char_fraction=None,
                max_dup_para_char_fraction=None, top_ngram_max={}, dup_ngram_max={})
    return GopherRepetitionFilter(GopherRepetitionConfig(**{"semantics": "paper", **base, **over}))


def test_gopher_repetition_duplicate_lines_and_paragraphs():
    lines = [" ".join(words(6, random.Random(i))) for i in range(10)]
    keep = "\n".join(lines[:7] + [lines[0]] * 3)            # 3/10 duplicate lines
    drop = "\n".join(lines[:6] + [lines[0]] * 4)            # 4/10
    assert_decisions(rep(max_dup_line_fraction=0.3), keep, drop, "dup_line_frac")
    assert_decisions(rep(max_dup_para_fraction=0.3), keep.replace("\n", "\n\n"),
                     drop.replace("\n", "\n\n"), "dup_para_frac")
    # character fractions: one long line repeated vs. short ones
    long, short = "x" * 200, [f"line {i} " + "y" * 90 for i in range(8)]
    keep = "\n".join(short + [long])                         # no duplicates
    drop = "\n".join(short + [long, long])
    res = run(rep(max_dup_line_char_fraction=0.2), [keep, drop])
    frac = res.scores["dup_line_char_frac"][1]
    assert res.scores["dup_line_char_frac"][0] == 0
    assert abs(frac - 200 / len(drop)) < 1e-9
    assert res.keep[1] == (frac <= 0.2)


def test_gopher_repetition_char_fraction_thresholds():
    pad = " ".join(words(150))
    line = "z" * 100
    # duplicate chars = 100 (second copy); total = len(doc). Pick pad so fraction straddles 0.2
    keep = pad[: 400] + "\n" + line + "\n" + line          # 100 / 602 < 0.2
    drop = pad[: 290] + "\n" + line + "\n" + line          # 100 / 492 = 0.203
    res = assert_decisions(rep(max_dup_line_char_fraction=0.2), keep, drop, "dup_line_char_frac")
    assert res.scores["dup_line_char_frac"][0] == pytest.approx(100 / len(keep))
    assert_decisions(rep(max_dup_para_char_fraction=0.2), keep.replace("\n", "\n\n"),
                     drop.replace("\n", "\n\n"), "dup_para_char_frac")


def test_gopher_repetition_top_ngram():
    # "ab cd" x k inside otherwise distinct words; top 2-gram chars = 5 * count
    w = words(200)
    def doc(k):
        return " ".join(w[:100] + ["ab cd"] * k + w[100:])
    f = rep(top_ngram_max={2: 0.20})
    res = run(f, [doc(10), doc(100)])
    for i, k in enumerate((10, 100)):
        assert res.scores["top_2gram_char_frac"][i] == pytest.approx(5 * k / len(doc(k)))
    assert res.keep.tolist() == [True, False]
    assert res.detail[1].startswith("top_2gram_char_frac=")


def test_gopher_repetition_duplicate_ngrams():
    w = words(300)
    block = w[:20]                      # a 20-word passage repeated once
    keep = " ".join(w[20:] + block)                         # no repeat
    drop = " ".join(block + w[20:120] + block)              # 40 of 140 words covered
    f = rep(dup_ngram_max={5: 0.15, 10: 0.10})
    res = run(f, [keep, drop])
    assert res.scores["dup_5gram_char_frac"][0] == 0
    covered = sum(map(len, block)) * 2
    total = sum(map(len, block + w[20:120] + block))
    assert res.scores["dup_5gram_char_frac"][1] == pytest.approx(covered / total)
    assert res.keep.tolist() == [True, False]


def test_ngram_statistics_respect_document_boundaries():
    # the same 5-gram once in each of two documents is not a duplicate in either
    f = rep(dup_ngram_max={5: 0.15})
    five = "aa bb cc dd ee"
    res = run(f, [five + " " + " ".join(words(20)), five + " " + " ".join(words(20, random.Random(9)))])
    assert res.scores["dup_5gram_char_frac"].tolist() == [0, 0]


# ---------------------------------------------------------------------------- FineWeb
def fw(**over):
    base = dict(min_line_punct_ratio=None, max_short_line_ratio=None, max_dup_line_char_ratio=None,
                max_newline_per_word=None)
    return FineWebFilter(FineWebConfig(**{"semantics": "paper", **base, **over}))


def test_fineweb_rules():
    lines = [" ".join(words(12, random.Random(i))) for i in range(100)]
    keep = "\n".join((l + ".") if i < 12 else l for i, l in enumerate(lines))   # 0.12
    drop = "\n".join((l + ".") if i < 11 else l for i, l in enumerate(lines))   # 0.11
    assert_decisions(fw(min_line_punct_ratio=0.12), keep, drop, "line_punct_ratio")
    short = [f"s{i:02d} " + "q" * 20 for i in range(100)]                     # 24 chars
    keep = "\n".join(short[:67] + lines[:33])
    drop = "\n".join(short[:68] + lines[:32])
    assert_decisions(fw(max_short_line_ratio=0.67), keep, drop, "short_line_ratio")
    dup = lines[0]
    keep = "\n".join(lines[:99] + [lines[0][:5]])            # no duplicate line
    drop = "\n".join(lines[:99] + [dup])
    res = assert_decisions(fw(max_dup_line_char_ratio=0.01), keep, drop, "dup_line_char_ratio")
    assert res.scores["dup_line_char_ratio"][1] == pytest.approx(len(dup) / len(drop.replace("\n", "")))
    # newlines per word: 30 newlines / 100 words = 0.3 keeps, 31 drops
    w = words(100)
    keep = " ".join(w[:70]) + "\n" + "\n".join(w[70:100])     # 30 newlines
    drop = "\n".join(w[:32]) + " " + " ".join(w[32:100])      # 31 newlines
    assert_decisions(fw(max_newline_per_word=0.3), keep, drop, "newline_per_word")


def test_fineweb_empty_document_is_removed_as_empty():
    res = run(FineWebFilter(FineWebConfig(semantics="paper")), ["\n \n", "word " * 10 + "."])
    assert res.keep[0] == False  # noqa: E712
    assert res.detail[0].startswith("n_lines=0")


# ---------------------------------------------------------------------------- C4
def sentence(i: int) -> str:
    return " ".join(words(8, random.Random(1000 + i))).capitalize() + "."


def test_c4_line_cleaning_modifies_text():
    good = [sentence(i) for i in range(6)]
    doc = "\n".join([good[0], "Menu", "Enable javascript to see this page.", good[1],
                     "This site uses cookies for analytics.", "no punctuation at the end here",
                     good[2] + " [1]", "Read more...", "x" * 1001 + " is long.", good[3], good[4], good[5]])
    res = run(C4Filter(C4Config(semantics="paper")), [doc])
    assert res.keep[0]
    assert res.new_text[0].as_py() == "\n".join([good[0], good[1], good[2], *good[3:]])
    assert res.scores["lines_dropped"][0] == 6


def test_c4_document_rules():
    good = "\n".join(sentence(i) for i in range(5))
    four = "\n".join(sentence(i) for i in range(4))
    assert_decisions(C4Filter(C4Config(semantics="paper")), good, four, "n_sentences")
    # several sentences on one line count separately
    assert run(C4Filter(C4Config(semantics="paper")), [" ".join(sentence(i) for i in range(5))]).keep[0]
    assert_decisions(C4Filter(C4Config(semantics="paper")), good, good + "\nLorem ipsum dolor sit amet, consectetur.",
                     "lorem_ipsum")
    assert_decisions(C4Filter(C4Config(semantics="paper")), good, good + "\nThe function f { returns } zero.",
                     "curly_bracket")


def test_c4_badwords_rule_with_ldnoobw_en():
    path = shared_path("badwords", "en")
    f = C4Filter(C4Config(semantics="paper", badwords_paths=[str(path)]))
    good = "\n".join(sentence(i) for i in range(5))
    res = assert_decisions(f, good, good + "\nWhat a load of bullshit this whole thing is.", "badwords")
    # substrings of listed words inside other words do not match ("scunthorpe problem")
    assert run(f, [good + "\nWe visited Scunthorpe and Essex in the spring."]).keep[0]
    # multi-word entries match as phrases
    assert not run(f, [good + "\nThey once ordered an Alabama hot pocket, sadly."]).keep[0]
    assert res.scores["badwords"][1] >= 1


def test_badwords_fraction_filter():
    path = shared_path("badwords", "en")
    f = BadWordsFilter(BadWordsConfig(paths=[str(path)], max_fraction=0.01))
    w = words(199)
    keep = " ".join(w[:100] + ["shit"] + w[100:])          # 1/200 = 0.005
    drop = " ".join(w[:50] + ["shit"] + w[50:150] + ["fuck"] + w[150:197])   # 2/199 > 0.01
    assert_decisions(f, keep, drop, "fraction")


# ---------------------------------------------------------------------------- URLs
def test_url_blocklist(tmp_path):
    (tmp_path / "domains.txt").write_text("# adult\nbad.example\n")
    (tmp_path / "kw.txt").write_text("casino\n")
    f = URLBlocklistFilter(URLBlocklistConfig(domain_paths=[str(tmp_path / "domains.txt")],
                                              keyword_paths=[str(tmp_path / "kw.txt")]))
    urls = ["https://good.example/a", "http://cdn.bad.example:8080/x", "https://ok.org/online-CASINO",
            None, "https://notbad.example/"]
    res = run(f, ["t"] * 5, urls)
    assert res.keep.tolist() == [True, False, False, True, True]
    assert res.detail[1] == "url=domain:bad.example"
    assert res.detail[2] == "url=keyword:casino"


# ---------------------------------------------------------------------------- word splitting
def test_words_without_spaces_are_split_per_character():
    b = TextBatch(pa.array(["今日は良い天気です", "hello  world ", "", "ภาษาไทย"]))
    assert b.words.count.tolist() == [9, 2, 0, 7]
    f = GopherQualityFilter(GopherQualityConfig(semantics="paper", min_stop_words=0))
    res = run(f, ["日本語の文章です。" * 10])
    assert res.scores["n_words"][0] == 80   # 8 characters a sentence (the full stop is a symbol)


def test_scores_are_numpy_aligned_per_document():
    f = GopherQualityFilter(GopherQualityConfig(semantics="paper"))
    docs = ["", " ".join(words(60)), "\n\n", "a"]
    res = run(f, docs)
    assert len(res.keep) == 4 and all(len(np.asarray(v)) == 4 for v in res.scores.values())
    assert res.scores["n_words"].tolist() == [0, 60, 0, 1]


# ------------------------------------------------------------- exact speed-ups (vs the loops)
def _find_all_duplicate(ids: list[int], lengths: list[int], n: int) -> int:
    """datatrove's ``find_all_duplicate`` over word ids (``lengths`` = characters)."""
    unique, chars, i = set(), 0, 0
    while i < len(ids) - n + 1:
        g = tuple(ids[i:i + n])
        if g in unique:
            chars += sum(lengths[i:i + n])
            i += n
        else:
            unique.add(g)
            i += 1
    return chars


def test_group_first_equals_numpy_unique():
    """Counts and first indices from one sort of ``key | index`` equal np.unique's, for
    small exact keys, random 64-bit hashes, and hashes that share their top bits but
    differ below (the prefix groups that must be redone exactly)."""
    from pipeline.filters.text import group_first

    rng = np.random.default_rng(0)
    redone = 0
    for trial in range(240):
        k = int(rng.integers(1, 4000))
        kind = trial % 3
        if kind == 0:
            keys = rng.integers(0, 50, k).astype(np.uint64)
        elif kind == 1:
            keys = rng.integers(0, 2**63, k, dtype=np.int64).astype(np.uint64) * np.uint64(2)
            keys[rng.integers(0, k, k // 3)] = keys[rng.integers(0, k, k // 3)]
        else:
            top = rng.integers(0, 2**13, 6).astype(np.uint64) << np.uint64(51)
            keys = (top[rng.integers(0, 6, k)] | rng.integers(0, 5, k).astype(np.uint64)
                    | np.uint64(1 << 63))
            redone += 1
        count, first = group_first(keys)
        _, fi, inv, cnt = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        assert count.tolist() == cnt[inv].tolist(), trial
        assert first.tolist() == fi[inv].tolist(), trial
    assert redone == 80
    assert group_first(np.zeros(0, np.uint64))[0].shape == (0,)


def _find_top_duplicate(ids: list[int], lengths: list[int], n: int) -> float:
    """datatrove's ``find_top_duplicate`` over word ids: the most common n-gram (ties to
    the first seen) x its count, its length its words joined by spaces; NaN without one."""
    counter: dict = {}
    for i in range(len(ids) - n + 1):
        g = tuple(ids[i:i + n])
        if g not in counter:
            counter[g] = [0, sum(lengths[i:i + n]) + n - 1]
        counter[g][0] += 1
    if not counter:
        return float("nan")
    count, length = max(counter.values(), key=lambda v: v[0])
    return float(count * length)


def _paper_ngram_stats(ids: list[int], lengths: list[int], n: int) -> tuple[float, float]:
    """The paper's definitions: (count x length of the most frequent repeated n-gram, ties
    to the longest; characters of the words covered by any repeated n-gram)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    counts: dict = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    top, covered = 0, set()
    for i, g in enumerate(grams):
        if counts[g] > 1:
            top = max(top, (counts[g] << 32) + sum(lengths[i:i + n]) + n - 1)
            covered.update(range(i, i + n))
    return float((top >> 32) * (top & 0xFFFFFFFF)), float(sum(lengths[i] for i in covered))


def test_ngram_statistics_equal_the_loops():
    """The n-gram statistics computed from the repeated windows only (``NGrams``'s
    ``Repeats``) equal the loops they replace: datatrove's ``find_all_duplicate`` (the
    greedy walk) and ``find_top_duplicate``, and the paper's top and duplicated n-gram
    characters, on documents from nearly all-repeat (2-word vocabulary) to nearly
    repeat-free, empty and shorter than n."""
    from pipeline.filters.text import (NGrams, duplicate_ngram_chars, greedy_duplicate_ngram_chars,
                                       top_ngram_chars, top_ngram_chars_first)

    class Words:
        def __init__(self, ids, parent, n_docs, length):
            self.ids, self.parent, self.n_docs, self.length = ids, parent, n_docs, length
            self.count = np.bincount(parent, minlength=n_docs)

        def per_doc(self, weights=None):
            return np.bincount(self.parent, weights=weights, minlength=self.n_docs)

    rng = np.random.default_rng(0)
    checked = nonzero = 0
    for _ in range(60):
        n_docs = int(rng.integers(1, 12))
        docs = []
        for _ in range(n_docs):
            vocab = int(rng.choice([2, 3, 5, 30, 10_000]))
            size = int(rng.choice([0, int(rng.integers(1, 6)), int(rng.integers(0, 300))], p=[.1, .2, .7]))
            doc = rng.integers(0, vocab, size).tolist()
            if doc and rng.random() < 0.5:        # a copied passage
                a = int(rng.integers(0, len(doc)))
                doc += doc[a:a + int(rng.integers(1, 60))]
            docs.append(doc)
        ids = np.array([w for d in docs for w in d], dtype=np.int64)
        parent = np.repeat(np.arange(n_docs), [len(d) for d in docs]).astype(np.int64)
        length = (ids % 7 + 1).astype(np.int64)
        w = Words(ids, parent, n_docs, length)
        lens = [[x % 7 + 1 for x in d] for d in docs]
        for n, rep in NGrams(w).iter([2, 3, 4, 5, 6, 7, 8, 9, 10]):
            if n <= 4:
                got = top_ngram_chars_first(w, rep, n)
                want = [_find_top_duplicate(d, ln, n) for d, ln in zip(docs, lens)]
                np.testing.assert_array_equal(got, np.array(want), err_msg=f"top {n}")
            got = greedy_duplicate_ngram_chars(w, rep, n)
            want = [_find_all_duplicate(d, ln, n) for d, ln in zip(docs, lens)]
            assert got.tolist() == want, n
            paper = [_paper_ngram_stats(d, ln, n) for d, ln in zip(docs, lens)]
            assert top_ngram_chars(w, rep, n).tolist() == [p[0] for p in paper], n
            assert duplicate_ngram_chars(w, rep, n).tolist() == [p[1] for p in paper], n
            checked += n_docs
            nonzero += sum(x > 0 for x in want)
    assert nonzero > 100 and checked - nonzero > 100


def test_indexed_affix_search_equals_spacy_loop_in_every_language():
    """``SpacyRules`` with its edge indexes, infix gate and indexed special cases tokenizes
    exactly as the plain regexes and spaCy's loop, for every language it ships, on chunks
    of code, prose, and random strings of letters, digits, punctuation and symbols."""
    from pipeline.filters.fidelity import build_corpus
    from pipeline.filters.wordtok import SpacyRules, rules_data

    rng = random.Random(0)
    corpus = sorted({c for d in build_corpus(200, seed=1) for c in d["text"].split()})
    chunks = set(rng.sample(corpus, min(3000, len(corpus))))
    pool = list("abcXYZéßçøДжλ日本ไทย0123456789.,;:!?'\"()[]{}<>-–—_/\\@#$%^&*+=~`|…’“”«»¿¡°©®™€£¥§¶•·") \
        + ["km", "n't", "'s", "http://", "www.", ".com", "e.g.", "U.S.", "don", "'ll"]
    chunks |= {"".join(rng.choice(pool) for _ in range(rng.randint(1, 8))) for _ in range(2000)}
    chunks = sorted(chunks)
    indexed_langs = 0
    for code in rules_data()["languages"]:
        fast, slow = SpacyRules(code), SpacyRules(code)
        slow.set_indexed(False)
        diff = [(c, a, b) for c in chunks if (a := fast.split(c)) != (b := slow.split(c))]
        assert not diff, (code, diff[:5])
        indexed_langs += fast._plain
    assert indexed_langs >= 50          # the indexes apply almost everywhere


def test_edge_index_on_patterns_it_can_and_cannot_analyse():
    import re

    from pipeline.filters.wordtok import _edge_index, _EdgeIndex
    suffix = re.compile(r"(?<=[0-9])(?:km|m)$|'s$|\.\.+$|[\u2600-\u26FF]$")
    idx = _edge_index(suffix, True)
    assert isinstance(idx, _EdgeIndex)
    for s in ["5km", "akm", "John's", "Johns", "wait...", "a.", "sun☀", "x", "7m", "m", "km\n"]:
        want, got = suffix.search(s), idx.search(s)
        assert (want and want.span()) == (got and got.span()), s
    assert idx.untouched("akm") and not idx.untouched("5km")    # the look-behind's digit
    # a case-insensitive piece or an unanchored one: the plain regex is kept
    assert not isinstance(_edge_index(re.compile(r"(?i:ab)c$|x$"), True), _EdgeIndex)
    assert not isinstance(_edge_index(re.compile(r"ab|x$"), True), _EdgeIndex)


def test_chain_reuses_tokens_of_kept_documents_with_the_same_results(monkeypatch):
    """A filter sees the previous filter's tokenization of the documents it kept (unless
    text was rewritten or languages changed); the chain's output is the same as with every
    filter tokenizing afresh, and fewer chunks are looked up."""
    from pipeline.filters.chain import FilterChain
    from pipeline.filters.config import FiltersConfig
    from pipeline.filters.fidelity import build_corpus
    from pipeline.filters.text import TextBatch
    from pipeline.filters.wordtok import ChunkTokenizer

    docs = [d["text"] for d in build_corpus(120, seed=3)]
    table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs,
                      "source": ["web"] * len(docs), "url": [None] * len(docs)})
    steps = [{"type": "gopher_repetition"}, {"type": "gopher_quality"}, {"type": "c4"},
             {"type": "fineweb"}]
    calls = []
    real_lookup = ChunkTokenizer.lookup
    monkeypatch.setattr(ChunkTokenizer, "lookup",
                        lambda self, chunks: calls.append(len(chunks)) or real_lookup(self, chunks))
    reused = FilterChain(FiltersConfig(steps=steps)).process(table)
    n_reused = sum(calls)
    calls.clear()
    monkeypatch.setattr(TextBatch, "token_cache", lambda self: {})
    fresh = FilterChain(FiltersConfig(steps=steps)).process(table)
    assert reused.equals(fresh)
    reasons = reused.column("reason").to_pylist()
    assert reasons.count("gopher_repetition") > 0 and reasons.count(None) > 0
    assert n_reused < sum(calls)


def test_line_splits_equal_python_on_every_break():
    """``py_lines`` (a literal split where the batch has only "\\n" breaks) equals
    ``str.splitlines()`` and ``line_runs`` equals ``re.split("\\n+")``, on random texts of
    every line break, empty texts and texts that start or end with breaks."""
    import random
    import re

    from pipeline.filters.text import TextBatch

    rnd = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "\n", "\r", "\r\n", "\x0b", "\x85", "\u2028", "é", "\x1c"]
    for trial in range(1500):
        docs = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
                for _ in range(rnd.randint(0, 6))]
        if trial % 2:                               # only "\n" breaks: the literal split
            docs = [re.sub("[\r\x0b\x85\u2028\x1c]", "", d) for d in docs]
        b = TextBatch(pa.array(docs, pa.string()))
        want = [d.splitlines() for d in docs]
        assert b.py_lines.values.to_pylist() == [x for w in want for x in w], docs
        assert b.py_lines.count.tolist() == [len(w) for w in want], docs
        runs = [re.split("\n+", d) for d in docs]
        assert b.line_runs.values.to_pylist() == [x for w in runs for x in w], docs
        assert b.line_runs.count.tolist() == [len(w) for w in runs], docs
        assert b.line_runs.length.tolist() == [len(x) for w in runs for x in w], docs
