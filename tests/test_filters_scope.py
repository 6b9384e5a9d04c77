"""Filter steps scoped to sources: prose rules never touch a code source."""

import pyarrow as pa

from pipeline.filters.chain import FilterChain
from pipeline.filters.config import FiltersConfig

PROSE = ("The library reads configuration files and validates every field before the pipeline "
         "starts, so that a mistake is reported early with the name of the offending value. ") * 6
CODE = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n"


def _table():
    return pa.table({"id": ["p1", "c1", "c2", "p2"], "text": [PROSE, CODE, CODE + "# x\n", "tiny"],
                     "source": ["docs", "code", "code", "docs"], "url": [None] * 4})


def test_scoped_step_leaves_other_sources_untouched():
    cfg = FiltersConfig(steps=[{"type": "gopher_quality", "sources": ["docs"]}])
    out = FilterChain(cfg).process(_table()).to_pylist()
    by_id = {r["id"]: r for r in out}
    # code would fail gopher_quality (too few words, no stop words) but is not in scope
    assert by_id["c1"]["reason"] is None and by_id["c2"]["reason"] is None
    assert by_id["p1"]["reason"] is None
    assert by_id["p2"]["reason"] == "gopher_quality"          # 1 word < 50
    # unscoped, the same rule removes the code
    out2 = FilterChain(FiltersConfig(steps=[{"type": "gopher_quality"}])).process(_table()).to_pylist()
    assert {r["id"] for r in out2 if r["reason"] == "gopher_quality"} == {"c1", "c2", "p2"}


def test_scoped_text_rewriting_step_only_rewrites_its_sources():
    noisy = PROSE + "\nAccept cookies\n" + PROSE
    t = pa.table({"id": ["p", "c"], "text": [noisy, noisy], "source": ["docs", "code"], "url": [None, None]})
    cfg = FiltersConfig(steps=[{"type": "c4", "sources": ["docs"], "min_sentences": 1}])
    out = {r["id"]: r for r in FilterChain(cfg).process(t).to_pylist()}
    assert "Accept cookies" not in out["p"]["text"]      # C4 line cleaning applied
    assert out["c"]["text"] == noisy                     # untouched
