"""run_filter end to end on Ray, bad input, the inspect backend, and the config surface."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.engine import count_rows, parquet_files, write_table
from pipeline.filters.chain import FilterChain
from pipeline.filters.config import FiltersConfig
from pipeline.filters.inspect import format_rejected
from pipeline.filters.stage import required_models, run_filter
from pipeline.stage import StageContext
from tests.conftest import shared_path


def _prose(seed: int, n_par: int = 4) -> str:
    """English-like prose from Shakespeare lines turned into sentences: passes every
    default heuristic (checked below), varied enough not to repeat."""
    text = shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = [l.strip() for l in text.splitlines() if len(l.split()) >= 6 and ":" not in l]
    rng = random.Random(seed)
    pars = []
    for _ in range(n_par):
        sents = [rng.choice(lines).rstrip(",;:-") for _ in range(5)]
        sents = [s[0].upper() + s[1:] + ("" if s[-1] in ".!?" else ".") for s in sents]
        pars.append(" ".join(sents))
    return "\n".join(pars)


def _write_docs(d, rows):
    write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows],
                          "source": [d.name] * len(rows), "url": [r[2] for r in rows]}), d)
    return d


@pytest.fixture
def corpus(tmp_path):
    good = [(f"g{i}", _prose(i), f"https://site{i}.org/p") for i in range(12)]
    bad = [
        ("b-empty", "", "u"),
        ("b-short", "Too short.", "u"),
        ("b-german", "Dies ist ein ganz gewöhnlicher deutscher Text über das Wetter. " * 20, "u"),
        ("b-rep", ("The same line of text repeated again and again for the test.\n" * 40), "u"),
        ("b-lorem", _prose(99) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "u"),
        ("b-list", "\n".join(f"item {i} of the list" for i in range(80)), "u"),
    ]
    a = _write_docs(tmp_path / "a", good[:8] + bad[:3])
    b = _write_docs(tmp_path / "b", good[8:] + bad[3:])
    return {"b": b, "a": a}, good, bad


def test_run_filter_end_to_end(ray_local, tmp_path, corpus):
    dirs, good, bad = corpus
    # the crafted "good" documents are judged by the papers' definitions here; the
    # datatrove-reference semantics are tested in test_datatrove_oracle.py
    cfg = FiltersConfig(batch_size=4)
    for step in cfg.steps:
        if hasattr(step, "semantics"):
            step.semantics = "paper"
    assert required_models(cfg) == []
    ctx = StageContext.for_testing(tmp_path / "out", num_cpus=2)
    m = run_filter(cfg, dirs, {}, ctx)
    kept = pq.read_table(parquet_files(tmp_path / "out", "data"))
    rej = pq.read_table(parquet_files(tmp_path / "out", "rejected"))
    reasons = dict(zip(rej.column("id").to_pylist(), rej.column("reason").to_pylist()))
    assert set(reasons) == {r[0] for r in bad}, reasons
    assert reasons["b-empty"] == "input" and reasons["b-german"] == "langid"
    assert reasons["b-lorem"] == "c4" and reasons["b-rep"] == "gopher_repetition"
    # order: sources sorted by name (a before b), rows in file order
    assert kept.column("id").to_pylist() == [g[0] for g in good]
    assert m["docs_in"] == 18 and m["docs_out"] == 12
    names = ["input", "langid", "gopher_repetition", "gopher_quality", "c4", "fineweb"]
    for n in names:
        assert m[f"removed_{n}"] == sum(r == n for r in reasons.values()), n
    assert m["docs_in_gopher_quality"] == 18 - m["removed_input"] - m["removed_langid"] \
        - m["removed_gopher_repetition"]
    assert m["chars_in"] - m["chars_out"] == sum(m[k] for k in m if k.startswith("chars_removed_"))
    # columns: canonical + per-filter scores in kept data; reason/detail only in rejected
    assert {"lang", "lang_score", "gopher_quality_n_words", "c4_n_sentences"} <= set(kept.column_names)
    assert "reason" not in kept.column_names and "_repaired" not in kept.column_names
    assert rej.column("detail").null_count == 0
    german = rej.filter(pa.compute.equal(rej.column("id"), "b-german"))
    assert german.column("lang")[0].as_py() == "de" and german.column("gopher_quality_n_words")[0].as_py() is None
    # reports
    assert (tmp_path / "out" / "plots" / "scores_gopher_quality.png").is_file()
    samples = json.loads((tmp_path / "out" / "tables" / "filter_rejected_samples.json").read_text())
    assert {s["reason"] for s in samples} == set(reasons.values())
    summary = {r["filter"]: r for r in ctx.tables["filter_summary.json"]}
    assert summary["langid"]["removed"] == m["removed_langid"] and summary["langid"]["docs_in"] == 17

    # the inspect backend
    out = format_rejected(tmp_path / "out")
    assert "6 removed documents" in out and "langid" in out and "b-german" in out
    only = format_rejected(tmp_path / "out", reason="c4", n=1, width=40)
    assert "b-lorem" in only and "== langid" not in only and "lorem_ipsum=" in only
    assert "no documents removed with reason 'nope'" in format_rejected(tmp_path / "out", reason="nope")


@pytest.mark.slow
def test_run_filter_is_deterministic(ray_local, tmp_path, corpus):
    dirs, _, _ = corpus
    cfg = FiltersConfig(batch_size=3, rows_per_file=5)
    for out in ("o1", "o2"):
        run_filter(cfg, dirs, {}, StageContext.for_testing(tmp_path / out, num_cpus=2))
    for sub in ("data", "rejected"):
        a = parquet_files(tmp_path / "o1", sub)
        b = parquet_files(tmp_path / "o2", sub)
        assert [p.rsplit("/", 1)[1] for p in a] == [p.rsplit("/", 1)[1] for p in b]
        assert all(pq.read_table(x).equals(pq.read_table(y)) for x, y in zip(a, b))
    kept = parquet_files(tmp_path / "o1", "data")
    n = sum(pq.read_table(f).num_rows for f in kept)
    assert n > 5 and len(kept) == -(-n // 5)          # files roll at rows_per_file=5


def test_keep_scores_false_keeps_only_canonical_columns(ray_local, tmp_path, corpus):
    dirs, good, _ = corpus
    cfg = FiltersConfig(keep_scores=False)
    run_filter(cfg, dirs, {}, StageContext.for_testing(tmp_path / "o", num_cpus=2))
    kept = pq.read_table(parquet_files(tmp_path / "o", "data"))
    assert kept.column_names == ["id", "text", "source", "url", "lang", "lang_score"]
    rej = pq.read_table(parquet_files(tmp_path / "o", "rejected"))
    assert "gopher_quality_n_words" in rej.column_names


def test_run_filter_with_empty_input_writes_empty_datasets(ray_local, tmp_path):
    (tmp_path / "empty" / "data").mkdir(parents=True)
    m = run_filter(FiltersConfig(), {"x": tmp_path / "empty"}, {},
                   StageContext.for_testing(tmp_path / "o", num_cpus=2))
    assert m["docs_in"] == 0 and count_rows(tmp_path / "o") == 0
    assert parquet_files(tmp_path / "o", "data") and parquet_files(tmp_path / "o", "rejected")


def test_bad_input_never_crashes_and_is_counted():
    rng = random.Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(5000)).decode("utf-8", errors="replace")
    big = ("All work and no play makes Jack a dull boy. " * 1_200_000)          # ~53 MB
    nospace = "x" * 100_000
    texts = ["", None, garbage, big, nospace, "\ufffd\ufffd broken \ufffd", "漢字" * 3000]
    # invalid UTF-8 (e.g. an encoded lone surrogate) smuggled into a string column
    raw = pa.array([b"ok \xed\xa0\x80 surrogate", b"\xff\xfe\x00binary"], pa.binary()).view(pa.string())
    table = pa.table({"id": [str(i) for i in range(len(texts) + 2)],
                      "text": pa.concat_arrays([pa.array(texts, pa.string()), raw]),
                      "source": ["s"] * (len(texts) + 2), "url": [None] * (len(texts) + 2)})
    chain = FilterChain(FiltersConfig(max_doc_chars=60_000_000))
    out = chain.process(table)
    reasons = out.column("reason").to_pylist()
    assert all(r is not None for r in reasons)          # nothing here is a good English document
    assert reasons[0] == reasons[1] == "input"
    assert out.column("_repaired").to_pylist()[-2:] == [True, True]
    assert "\ufffd" in out.column("text")[len(texts)].as_py()
    # the 50 MB document is judged like any other (Gopher quality: too many words)
    gq = FilterChain(FiltersConfig(max_doc_chars=60_000_000, steps=[{"type": "gopher_quality"}]))
    out_big = gq.process(table.slice(3, 1))
    assert out_big.column("reason")[0].as_py() == "gopher_quality"
    assert out_big.column("detail")[0].as_py().startswith("n_words=1.2e+07, need <= 100000")
    # the default size guard removes it up front instead
    out2 = FilterChain(FiltersConfig()).process(table.slice(3, 1))
    assert out2.column("reason")[0].as_py() == "input"
    assert out2.column("detail")[0].as_py().startswith("too_long")


def test_a_filter_that_raises_only_loses_the_bad_document(monkeypatch):
    from pipeline.filters.gopher_quality import GopherQualityFilter
    orig = GopherQualityFilter.score

    def flaky(self, batch, *args, **kwargs):
        if any("POISON" in t for t in batch.text.to_pylist()):
            raise RuntimeError("boom")
        return orig(self, batch, *args, **kwargs)

    monkeypatch.setattr(GopherQualityFilter, "score", flaky)
    cfg = FiltersConfig(steps=[{"type": "gopher_quality", "min_stop_words": 0, "min_words": 1}])
    out = FilterChain(cfg).process(pa.table({"text": ["fine words here", "POISON pill", "more fine words"]}))
    assert out.column("reason").to_pylist() == [None, "gopher_quality", None]
    assert out.column("detail")[1].as_py().startswith("error: RuntimeError: boom")


def test_config_surface():
    cfg = FiltersConfig()
    assert [s.type for s in cfg.steps] == ["langid", "gopher_repetition", "gopher_quality", "c4", "fineweb"]
    cfg = FiltersConfig.model_validate({"steps": [
        {"type": "fineweb", "max_short_line_ratio": None},
        {"type": "gopher_quality", "name": "gq_strict", "min_words": 200},
        {"type": "gopher_quality", "enabled": False}]})
    assert cfg.steps[1].step_name == "gq_strict"
    assert FilterChain(cfg).names == ["fineweb", "gq_strict"]
    with pytest.raises(ValidationError, match="does not match any of the expected tags|union_tag_invalid|type"):
        FiltersConfig.model_validate({"steps": [{"type": "nope"}]})
    with pytest.raises(ValidationError, match="min_wordz"):
        FiltersConfig.model_validate({"steps": [{"type": "gopher_quality", "min_wordz": 3}]})
    with pytest.raises(ValidationError, match="unique"):
        FiltersConfig.model_validate({"steps": [{"type": "c4"}, {"type": "c4"}]})
    # batch size is a resource: not part of identity
    assert FiltersConfig(batch_size=7).identity_dict() == FiltersConfig().identity_dict()
    assert FiltersConfig(steps=[]).identity_dict() != FiltersConfig().identity_dict()


def test_small_inputs_run_in_process_with_the_ray_output(ray_local, tmp_path, corpus, monkeypatch):
    """Up to run.in_process_max_docs documents the chain runs in the driver (no Ray Data
    workers to start); the kept and rejected files, metrics and tables equal the Ray path's."""
    from pipeline import engine
    from pipeline.filters import stage as filter_stage

    dirs, _, _ = corpus
    cfg = FiltersConfig(batch_size=3, rows_per_file=5)
    def no_ray(*a, **k):
        raise AssertionError("a small input must not use Ray")

    monkeypatch.setattr(filter_stage, "ensure_ray", no_ray)
    local = StageContext.for_testing(tmp_path / "local", num_cpus=2, show_progress=False)
    m_local = run_filter(cfg, dirs, {}, local)
    monkeypatch.undo()
    monkeypatch.setitem(engine._RAY_SETTINGS, "in_process_max_docs", 0)
    ray_ctx = StageContext.for_testing(tmp_path / "ray", num_cpus=2, show_progress=False)
    m_ray = run_filter(cfg, dirs, {}, ray_ctx)
    assert m_local == m_ray and m_local["docs_in"] == 18
    for sub in ("data", "rejected"):
        a, b = parquet_files(tmp_path / "local", sub), parquet_files(tmp_path / "ray", sub)
        assert [p.rsplit("/", 1)[1] for p in a] == [p.rsplit("/", 1)[1] for p in b]
        assert all(pq.read_table(x).equals(pq.read_table(y)) for x, y in zip(a, b))
    assert local.tables == ray_ctx.tables
