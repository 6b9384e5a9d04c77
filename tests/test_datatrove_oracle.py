"""The heuristic filters against their reference implementation, datatrove 0.10.1 (a dev
dependency; skipped with a message where it is not installed).

Corpora are built here from what the machine holds (``pipeline.filters.fidelity``): stdlib
docstrings, code comments, verse-like short lines, short messages, translated strings of
installed gettext catalogs, and ../shared/data/docs when present.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.filters import fidelity
from pipeline.filters.c4 import sentence_counts
from pipeline.filters.gopher_quality import GopherQualityConfig, GopherQualityFilter
from pipeline.filters.languages import TABLE_PATH, fineweb2_key, fineweb2_table, fineweb2_thresholds
from pipeline.filters.text import TextBatch
from pipeline.filters.wordtok import tokenizer_for

try:
    import datatrove  # noqa: F401
    import spacy  # noqa: F401
    HAVE_DT = True
except ImportError:                                   # pragma: no cover - dev extra missing
    HAVE_DT = False
needs_dt = pytest.mark.skipif(not HAVE_DT, reason="datatrove==0.10.1 and spacy (the dev extra) "
                                                  "are not installed: pip install -e .[dev]")


@pytest.fixture(scope="module")
def corpus():
    return fidelity.build_corpus(300, seed=11)


@needs_dt
@pytest.mark.slow
def test_word_tokenizer_matches_datatrove_token_for_token(corpus):
    from datatrove.utils.word_tokenizers import load_word_tokenizer
    checked = same = 0
    for d in corpus[:160]:
        if d["lang"] in ("ja", "zh"):                 # datatrove needs SudachiPy / jieba there
            continue
        ref = load_word_tokenizer(d["lang"]).word_tokenize(d["text"])
        ours = tokenizer_for(d["lang"]).tokens(d["text"])
        checked += 1
        same += ref == ours
    assert checked > 100
    assert same / checked >= 0.99, f"{same}/{checked} documents tokenized exactly as datatrove does"


@needs_dt
def test_sentence_counts_match_datatrove(corpus):
    from datatrove.utils.text import split_into_sentences
    lines = [line.strip() for d in corpus if d["lang"] == "en" for line in d["text"].splitlines()
             if line.strip()][:1500]
    ours = sentence_counts(pa.array(lines)).tolist()
    ref = [len(split_into_sentences(line, "en")) for line in lines]
    agree = np.mean(np.array(ours) == np.array(ref))
    assert agree >= 0.995, [(l, o, r) for l, o, r in zip(lines, ours, ref) if o != r][:5]


@needs_dt
@pytest.mark.slow
@pytest.mark.parametrize("step", fidelity.HEURISTICS)
def test_keep_remove_decisions_agree_with_datatrove(corpus, step):
    docs = corpus[:240]
    theirs = fidelity.datatrove_decisions(docs, step)
    ours = fidelity.forgeflow_decisions(docs, step)
    rate, n, bad = fidelity.agreement(ours, theirs)
    assert n >= 200
    # the corpus has documents on both sides of the rules, so agreement is not trivial
    assert 0 < sum(t for t in theirs if t is not None) < n
    assert rate >= 0.99, [(docs[i]["kind"], ours[i], docs[i]["text"][:200]) for i in bad[:5]]
    # the paper-literal variant is a different rule set: it must disagree somewhere
    if step in ("gopher_quality", "gopher_repetition"):
        paper = fidelity.forgeflow_decisions(docs, step, semantics="paper")
        assert fidelity.agreement(paper, theirs)[0] < rate


def _fineweb2_kwargs(step: str, lang: str) -> dict:
    """What fineweb-2-pipeline.py passes datatrove for ``lang`` (read from the shipped table)."""
    row = fineweb2_table()["languages"][fineweb2_key(lang)]
    if step == "gopher_repetition":
        return {"dup_para_frac": 0, "dup_line_char_frac": 0, "dup_para_char_frac": 0,
                "dup_line_frac": row["dup_line_frac"],
                "top_n_grams": [(int(n), v) for n, v in row["top_n_grams"].items()],
                "dup_n_grams": [(int(n), v) for n, v in row["dup_n_grams"].items()]}
    if step == "fineweb":
        return {"short_line_thr": 999, "char_duplicates_ratio": 0.1,
                "line_punct_thr": row["line_punct_thr"], "new_line_ratio": row["new_line_ratio"]}
    return {"max_avg_word_length": row["max_avg_word_length"],
            "min_avg_word_length": row["min_avg_word_length"], "stop_words": row["stopwords"],
            "max_non_alpha_words_ratio": row["max_non_alpha_words_ratio"], "min_stop_words": 2}


@needs_dt
@pytest.mark.slow
@pytest.mark.parametrize("step", ["gopher_repetition", "gopher_quality", "fineweb"])
def test_fineweb2_per_language_thresholds_agree_with_datatrove(step):
    docs = [d for d in fidelity.build_corpus(700, seed=5)
            if d["lang"] not in ("en", "ja", "zh") and fineweb2_key(d["lang"])][:100]
    assert len({d["lang"] for d in docs}) >= 2
    theirs = fidelity.datatrove_decisions(docs, step, kwargs_for=lambda lang: _fineweb2_kwargs(step, lang))
    ours = fidelity.forgeflow_decisions(docs, step, language_thresholds="fineweb2")
    rate, n, bad = fidelity.agreement(ours, theirs)
    assert n >= 60 and rate >= 0.99, [(docs[i]["lang"], ours[i], docs[i]["text"][:200]) for i in bad[:5]]


def test_fineweb2_table_has_the_published_languages():
    t = fineweb2_table()
    assert len(t["languages"]) > 1900
    with gzip.open(TABLE_PATH, "rt") as f:
        assert json.load(f)["source"].startswith("huggingface/fineweb-2")
    for code, key in [("de", "deu_Latn"), ("fr", "fra_Latn"), ("zh", "cmn_Hani"), ("ja", "jpn_Jpan"),
                      ("ru", "rus_Cyrl"), ("deu", "deu_Latn"), ("deu_Latn", "deu_Latn")]:
        assert fineweb2_key(code) == key
    assert fineweb2_key("en") is None and fineweb2_key("xx-not-a-language") is None
    de = fineweb2_thresholds("gopher_quality", "de")
    assert de["max_avg_word_length"] == 15 and "der" in de["stop_words"] and de["min_stop_words"] == 2
    rep = fineweb2_thresholds("gopher_repetition", "de")
    assert rep["max_dup_line_fraction"] == pytest.approx(0.263)
    assert rep["top_ngram_max"][2] == pytest.approx(0.169) and rep["max_dup_para_fraction"] is None
    fw = fineweb2_thresholds("fineweb", "de")
    assert fw["max_short_line_ratio"] is None and fw["max_dup_line_char_ratio"] == 0.1


def _long_word_german(n=80):
    words = ["der", "die", "und", "Bundesverfassungsgericht", "Donaudampfschifffahrt",
             "Rechtsschutzversicherung", "mit", "Haftpflichtversicherungen"]
    return " ".join(words[i % len(words)] for i in range(n)) + "."


def test_thresholds_follow_each_documents_language_and_spec_overrides():
    text = _long_word_german()                        # mean word length ~11: > 10 (English), < 15 (de)
    batch = lambda: TextBatch(pa.array([text, text]), pa.table({"lang": ["de", "en"]}))  # noqa: E731
    fixed = GopherQualityFilter(GopherQualityConfig()).apply(batch())
    assert fixed.keep.tolist() == [False, False]
    fw2 = GopherQualityFilter(GopherQualityConfig(language_thresholds="fineweb2")).apply(batch())
    assert fw2.keep.tolist() == [True, False], fw2.detail
    over = GopherQualityConfig(language_thresholds="fineweb2", per_language={"de": {"max_avg_word_length": 9}})
    res = GopherQualityFilter(over).apply(batch())
    assert res.keep.tolist() == [False, False] and "avg_word_length" in res.detail[0]
    with pytest.raises(ValueError, match="unknown field"):
        GopherQualityConfig(per_language={"de": {"max_avg_word_lenght": 9}})


def test_languages_without_spaces_are_split_per_character():
    toks = tokenizer_for("zh").tokens("数据处理管道，很好。Data pipeline")
    assert toks[:4] == ["数", "据", "处", "理"] and toks[-2:] == ["Data", "pipeline"]
    assert tokenizer_for("ja").tokens("日本語のテキスト") == list("日本語のテキスト")
    assert tokenizer_for("th").tokens("ภาษาไทย") == list("ภาษาไทย")
    # English: spaCy's rules (punctuation and contractions split off, abbreviations kept)
    assert tokenizer_for("en").tokens("Don't stop (e.g. now), U.S. data-sets!") == \
        ["Do", "n't", "stop", "(", "e.g.", "now", ")", ",", "U.S.", "data", "-", "sets", "!"]
