"""Ingest of JSONL, Parquet and plain text; input checks; Ray and determinism."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from pipeline.engine import parquet_files, read_docs
from pipeline.ingest import ExtractConfig, doc_id, run_ingest
from pipeline.stage import StageContext

GOOD = ("Language models learn from large corpora of web text, books and code; the "
        "quality of that text matters as much as its quantity.")


def _ctx(tmp_path: Path, name: str = "out") -> StageContext:
    return StageContext.for_testing(tmp_path / name, show_progress=False)


def _docs(ctx) -> list[dict]:
    return pq.read_table(ctx.out_dir / "data").to_pylist()


def _rejected(ctx) -> list[dict]:
    d = ctx.out_dir / "rejected"
    return pq.read_table(d).to_pylist() if d.is_dir() else []


# ---- JSONL ---------------------------------------------------------------------------

def test_real_jsonl_documents(tmp_path):
    src = shared_path("docs", "cc_en_head-0091.jsonl")
    ctx = _ctx(tmp_path)
    m = run_ingest("cc", "jsonl", [src], ExtractConfig(), ctx, url_field="metadata.url")
    docs = _docs(ctx)
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    assert m["docs_out"] == len(docs) == 10 and m["rejected"] == 0
    assert [d["text"] for d in docs] == [r["text"] for r in rows]
    assert [d["url"] for d in docs] == [r["metadata"]["url"] for r in rows]
    # ids: hash of source + the record's own id field
    assert [d["id"] for d in docs] == [doc_id("cc", f"id:{r['id']}") for r in rows]
    assert m["chars_out"] == sum(len(r["text"]) for r in rows)


def test_bad_jsonl_lines_are_quarantined_with_file_line_and_field(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": GOOD, "url": "https://a.example/"}).encode(),
        b'{"id": "b", "text": "unterminated',                       # 2 bad_json
        json.dumps({"id": "c", "body": GOOD}).encode(),              # 3 missing_field
        json.dumps({"id": "d", "text": 42}).encode(),                # 4 bad_field
        b'{"id": "e", "text": "caf\xe9 ' + GOOD.encode() + b'"}',    # 5 invalid UTF-8
        json.dumps({"id": "f", "text": "   "}).encode(),             # 6 empty_text
        b"",                                                         # 7 blank: skipped
        json.dumps({"id": "g", "text": "tiny"}).encode(),            # 8 too_short
        json.dumps(["not", "an", "object"]).encode(),                # 9 bad_json
        json.dumps({"id": "h", "text": None}).encode(),              # 10 missing_field
        b'{"id": "i", "text": "lone \\ud800 surrogate. ' + GOOD.encode() + b'"}',  # 11 kept
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    ctx = _ctx(tmp_path)
    m = run_ingest("src", "jsonl", [f], ExtractConfig(), ctx)
    assert [d["url"] for d in _docs(ctx)] == ["https://a.example/", None]
    assert m["docs_out"] == 2 and m["surrogates_replaced"] == 1
    rej = {r["detail"].split(":")[0]: r for r in _rejected(ctx)}
    expect = {2: "bad_json", 3: "missing_field", 4: "bad_field", 5: "decode_error",
              6: "empty_text", 8: "too_short", 9: "bad_json", 10: "missing_field"}
    assert {k: v["reason"] for k, v in rej.items()} == \
        {f"mixed.jsonl line {n}": r for n, r in expect.items()}
    assert "field 'text' is missing" in rej["mixed.jsonl line 3"]["detail"]
    assert "field 'text' is int" in rej["mixed.jsonl line 4"]["detail"]
    assert "0xe9" in rej["mixed.jsonl line 5"]["detail"]
    assert m["blank_lines"] == 1 and m["records_read"] == 10
    assert m["rejected_bad_json"] == 2 and m["rejected_missing_field"] == 2
    assert m["keep_rate"] == pytest.approx(2 / 10)


def test_gzipped_jsonl_and_truncated_gzip(tmp_path):
    src = shared_path("docs", "cc_en_head-0091.jsonl").read_bytes()
    good = tmp_path / "a.jsonl.gz"
    good.write_bytes(gzip.compress(src))
    cut = tmp_path / "b.json.gz"
    whole = gzip.compress(src)
    cut.write_bytes(whole[: len(whole) * 3 // 5])
    ctx = _ctx(tmp_path)
    m = run_ingest("cc", "jsonl", [good, cut], ExtractConfig(), ctx, use_ray=False)
    assert m["rejected_file_truncated"] == 1 and m["file_errors"] == 1
    docs = _docs(ctx)
    assert 10 < len(docs) < 20            # all of a, the lines of b before the cut
    detail = [r for r in _rejected(ctx) if r["reason"] == "file_truncated"][0]["detail"]
    assert detail.startswith("b.json.gz: cannot read past line")


def test_zstd_jsonl(tmp_path):
    src = shared_path("docs", "cc_en_head-0091.jsonl")
    zst = tmp_path / "docs.jsonl.zst"
    with pa.output_stream(str(zst), compression="zstd") as out:
        out.write(src.read_bytes())
    ctx = _ctx(tmp_path)
    assert run_ingest("cc", "jsonl", [zst], ExtractConfig(), ctx)["docs_out"] == 10


def test_jsonl_line_over_max_record_bytes(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps({"text": "x " * 5000}) + "\n" + json.dumps({"text": GOOD}) + "\n")
    ctx = _ctx(tmp_path)
    m = run_ingest("s", "jsonl", [f], ExtractConfig(max_record_bytes=2000), ctx)
    assert m["rejected_too_large"] == 1 and m["docs_out"] == 1
    assert _docs(ctx)[0]["text"] == GOOD       # the line after the big one is intact
    assert "big.jsonl line 1" in _rejected(ctx)[0]["detail"]


# ---- Parquet -------------------------------------------------------------------------

def test_parquet_with_field_mapping_and_nulls(tmp_path):
    rows = [json.loads(line) for line in
            shared_path("docs", "cc_en_head-0091.jsonl").read_text().splitlines()]
    f = tmp_path / "docs.parquet"
    pq.write_table(pa.table({
        "content": [r["text"] for r in rows] + [None],
        "doc_id": [r["id"] for r in rows] + ["null-one"],
        "link": [r["metadata"]["url"] for r in rows] + [None],
    }), f)
    ctx = _ctx(tmp_path)
    m = run_ingest("pq", "parquet", [f], ExtractConfig(), ctx, text_field="content",
                   id_field="doc_id", url_field="link")
    docs = _docs(ctx)
    assert [d["text"] for d in docs] == [r["text"] for r in rows]
    assert docs[0]["id"] == doc_id("pq", f"id:{rows[0]['id']}")
    assert m["rejected_missing_field"] == 1
    assert "docs.parquet row 10: field 'content' is null" == _rejected(ctx)[0]["detail"]
    with pytest.raises(ValueError, match="no column 'text'"):
        run_ingest("pq", "parquet", [f], ExtractConfig(), _ctx(tmp_path, "again"))


def test_corrupt_parquet_is_quarantined(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [GOOD, GOOD + " again"]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:40])
    ctx = _ctx(tmp_path)
    m = run_ingest("pq", "parquet", [good, bad], ExtractConfig(), ctx, use_ray=False)
    assert m["docs_out"] == 2 and m["rejected_unreadable_file"] == 1
    assert _rejected(ctx)[0]["detail"].startswith("bad.parquet: cannot read")
    # without an id column the key is file + row: distinct, stable ids
    assert [d["id"] for d in _docs(ctx)] == [doc_id("pq", "good.parquet:0"),
                                             doc_id("pq", "good.parquet:1")]


# ---- plain text ----------------------------------------------------------------------

def test_text_units_on_real_text(tmp_path):
    src = shared_path("text", "tinyshakespeare.txt")
    raw = src.read_text()
    ctx = _ctx(tmp_path, "file")
    m = run_ingest("shakespeare", "text", [src], ExtractConfig(), ctx)
    assert m["docs_out"] == 1 and _docs(ctx)[0]["text"] == raw.strip()

    ctx = _ctx(tmp_path, "para")
    m = run_ingest("shakespeare", "text", [src], ExtractConfig(min_text_chars=0), ctx,
                   text_unit="paragraph")
    paras = [p.strip() for p in raw.split("\n\n") if p.strip()]
    docs = _docs(ctx)
    assert [d["text"] for d in docs] == paras
    # batch_chars bounds a part file's text: ~1.1 M chars -> 11-12 parts of <= 100 k
    ctx2 = _ctx(tmp_path, "para-small-parts")
    run_ingest("shakespeare", "text", [src], ExtractConfig(min_text_chars=0,
               batch_chars=100_000), ctx2, text_unit="paragraph")
    parts = parquet_files(ctx2.out_dir)
    assert 11 <= len(parts) <= 12 and _docs(ctx2) == docs
    assert docs[0]["text"].startswith("First Citizen:\nBefore we proceed any further")

    ctx = _ctx(tmp_path, "line")
    m = run_ingest("shakespeare", "text", [src], ExtractConfig(), ctx, text_unit="line")
    long_lines = [ln.strip() for ln in raw.splitlines() if len(ln.strip()) >= 50]
    assert [d["text"] for d in _docs(ctx)] == long_lines
    assert m["rejected_too_short"] == sum(1 for ln in raw.splitlines()
                                          if ln.strip() and len(ln.strip()) < 50)
    assert len(parquet_files(ctx.out_dir, "rejected")) == 8   # 30,573 rows / 4096 per part


def test_text_invalid_utf8_is_replaced_and_counted(tmp_path):
    f = tmp_path / "notes.txt.gz"
    f.write_bytes(gzip.compress(b"caf\xe9 au lait. " + GOOD.encode() + b"\n\n\xff\xfe\n\nok"))
    ctx = _ctx(tmp_path)
    m = run_ingest("t", "text", [f], ExtractConfig(), ctx, text_unit="paragraph")
    docs = _docs(ctx)
    assert docs[0]["text"].startswith("caf\ufffd au lait.")
    assert m["decode_replacements"] == 3 and m["units_with_bad_utf8"] == 2
    assert {r["reason"] for r in _rejected(ctx)} == {"too_short"}     # "\ufffd\ufffd", "ok"


# ---- input checks --------------------------------------------------------------------

def test_missing_file_and_empty_list_fail_before_any_work(tmp_path):
    real = shared_path("docs", "cc_en_head-0091.jsonl")
    ctx = _ctx(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_ingest("cc", "jsonl", [real, tmp_path / "nope.jsonl"], ExtractConfig(), ctx)
    assert not (ctx.out_dir / "data").exists()
    with pytest.raises(ValueError, match="'cc': no input files"):
        run_ingest("cc", "jsonl", [], ExtractConfig(), ctx)
    with pytest.raises(ValueError, match="unknown kind 'csv'"):
        run_ingest("cc", "csv", [real], ExtractConfig(), ctx)


# ---- Ray + determinism ---------------------------------------------------------------

def _digest(out_dir: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(
        pq.read_table(p).to_pandas().to_json().encode()).hexdigest()
        for sub in ("data", "rejected") for p in sorted((out_dir / sub).glob("*.parquet"))}


def test_ray_parallel_run_is_deterministic(tmp_path, ray_local):
    warc = [shared_path("warc", n) for n in ("dolma-sample-0000.warc.gz",
                                             "dolma-sample-0001.warc.gz",
                                             "example.warc.gz", "whirlwind.warc.gz")]
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(warc[0].read_bytes()[:120_000])
    files = warc + [cut]
    a, b, c = _ctx(tmp_path, "a"), _ctx(tmp_path, "b"), _ctx(tmp_path, "c")
    ma = run_ingest("web", "warc", files, ExtractConfig(batch_rows=8), a, use_ray=True)
    mb = run_ingest("web", "warc", files, ExtractConfig(batch_rows=8), b, use_ray=True)
    mc = run_ingest("web", "warc", files, ExtractConfig(batch_rows=8), c, use_ray=False)
    assert _digest(a.out_dir) == _digest(b.out_dir) == _digest(c.out_dir)
    assert sorted(_digest(a.out_dir)) == [
        "data/part-00000-0000.parquet", "data/part-00000-0001.parquet",
        "data/part-00000-0002.parquet", "data/part-00001-0000.parquet",
        "data/part-00001-0001.parquet", "data/part-00002-0000.parquet",
        "data/part-00003-0000.parquet", "data/part-00004-0000.parquet",
        "data/part-00004-0001.parquet", "rejected/part-00004-0000.parquet"]
    for k in ("docs_out", "records_read", "rejected", "chars_out"):
        assert ma[k] == mb[k] == mc[k]
    assert ma["docs_out"] == 37 + 1 + 1 + 15 and ma["rejected_warc_truncated"] == 1
    # the document order follows the input list, and Ray Data reads it back
    assert read_docs(a.out_dir).count() == ma["docs_out"]
    assert {r["file"] for r in a.tables["files.json"]} == {f.name for f in files}
