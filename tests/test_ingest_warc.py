"""Ingest of real WARC / WET captures (../shared/data/warc, see its SOURCES.md)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from pipeline.engine import count_rows
from pipeline.ingest import ExtractConfig, decode_html, html_to_text, run_ingest
from pipeline.stage import StageContext


def _ctx(tmp_path: Path, name: str = "out") -> StageContext:
    return StageContext.for_testing(tmp_path / name, show_progress=False)


def _docs(ctx: StageContext) -> list[dict]:
    return pq.read_table(ctx.out_dir / "data").to_pylist()


def _rejected(ctx: StageContext) -> list[dict]:
    d = ctx.out_dir / "rejected"
    return pq.read_table(d).to_pylist() if d.is_dir() else []


def test_dolma_sample_gives_english_documents_with_urls(tmp_path):
    files = [shared_path("warc", f"dolma-sample-000{i}.warc.gz") for i in (0, 1)]
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", files, ExtractConfig(), ctx, use_ray=False)
    docs = _docs(ctx)
    # 37 HTML responses (22 + 15), all HTTP 200 with real prose
    assert m["docs_out"] == len(docs) == 37
    assert m["skipped_request"] == 37 and m["skipped_warcinfo"] == 2
    # wget's own log/arguments are `metadata://` resources, not documents
    assert m["skipped_resource_not_web"] == 4
    assert all(d["url"].startswith("https://") for d in docs)
    assert all(d["source"] == "web" for d in docs)
    assert all(d["content_type"].startswith("text/html") for d in docs)
    assert all(d["warc_date"].startswith("2024-04-25") for d in docs)
    # ids come from URL + content: the one page captured twice with the same content
    # (allenai.org, captured three seconds apart) is one document id
    by_id = {}
    for d in docs:
        by_id.setdefault(d["id"], []).append(d)
    assert len(by_id) == 36
    [twice] = [v for v in by_id.values() if len(v) == 2]
    assert {d["url"] for d in twice} == {"https://allenai.org/"} and twice[0]["text"] == twice[1]["text"]
    assert twice[0]["warc_date"] != twice[1]["warc_date"]
    stop = {"the", "and", "of", "to", "a", "in", "is"}
    for d in docs:
        words = d["text"].lower().split()
        assert len(d["text"]) >= 200, d["url"]
        assert sum(w in stop for w in words) / len(words) > 0.05, d["url"]
        assert "<div" not in d["text"] and "<script" not in d["text"]
    by_url = {d["url"]: d["text"] for d in docs}
    assert "Creative Commons" in by_url["https://creativecommons.org/mission/"]
    assert "Common Crawl" in by_url["https://commoncrawl.org/ccbot"]
    assert m["bytes_in"] == sum(f.stat().st_size for f in files)
    assert m["chars_out"] == sum(len(d["text"]) for d in docs)


def test_revisit_record_is_skipped_and_counted(tmp_path):
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [shared_path("warc", "example.warc.gz")],
                   ExtractConfig(), ctx)
    assert m["skipped_revisit"] == 1
    assert m["skipped_request"] == 2 and m["skipped_warcinfo"] == 2
    docs = _docs(ctx)
    assert [d["url"] for d in docs] == ["http://example.com/"]
    assert "Example Domain" in docs[0]["text"] or "illustrative examples" in docs[0]["text"]
    assert m["records_read"] == 6


def test_chunked_transfer_encoding_is_decoded(tmp_path):
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [shared_path("warc", "example-iana.org-chunked.warc")],
                   ExtractConfig(), ctx)
    assert m["docs_out"] == 1
    text = _docs(ctx)[0]["text"]
    # words of the iana.org home page; the chunk-size line ("001c37") must not leak in
    assert text.startswith("Management of the DNS Root Zone")
    assert "KSK Rollover" in text and "customer satisfaction survey" in text
    assert "001c37" not in text
    assert m["rejected"] == 0


def test_wet_conversion_text_is_taken_as_is(tmp_path):
    wet = shared_path("warc", "whirlwind.warc.wet.gz")
    ctx = _ctx(tmp_path)
    m = run_ingest("cc", "warc", [wet], ExtractConfig(), ctx)
    assert m["docs_out"] == 1 and m["skipped_warcinfo"] == 1
    doc = _docs(ctx)[0]
    from warcio.archiveiterator import ArchiveIterator
    with open(wet, "rb") as fh:
        conv = [r.content_stream().read() for r in ArchiveIterator(fh)
                if r.rec_type == "conversion"][0]
    assert doc["text"] == conv.decode("utf-8").strip()
    assert doc["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert doc["text"].startswith("Escopete")


def test_whirlwind_warc_response_matches_wet_text(tmp_path):
    """Our trafilatura extraction of the same capture shares most words with Common
    Crawl's own WET text (different extractors, same article)."""
    ctx = _ctx(tmp_path, "warc")
    run_ingest("cc", "warc", [shared_path("warc", "whirlwind.warc.gz")], ExtractConfig(), ctx)
    ours = set(_docs(ctx)[0]["text"].split())
    ctx2 = _ctx(tmp_path, "wet")
    run_ingest("cc", "warc", [shared_path("warc", "whirlwind.warc.wet.gz")],
               ExtractConfig(), ctx2)
    theirs = set(_docs(ctx2)[0]["text"].split())
    assert "Escopete" in ours
    assert len(ours & theirs) / len(ours) > 0.6


@pytest.mark.parametrize("fraction", [0.5, 0.47])
def test_truncated_warc_gz_keeps_records_before_the_cut(tmp_path, fraction):
    src = shared_path("warc", "dolma-sample-0000.warc.gz")
    data = src.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    ctx = _ctx(tmp_path, "cut")
    m = run_ingest("web", "warc", [cut], ExtractConfig(), ctx)
    full_ctx = _ctx(tmp_path, "full")
    run_ingest("web", "warc", [src], ExtractConfig(), full_ctx)
    full, part = _docs(full_ctx), _docs(ctx)
    assert 5 <= len(part) < len(full)
    # the kept documents are exactly the first ones of the complete file
    assert part == full[: len(part)]
    assert m["rejected_warc_truncated"] == 1 and m["file_errors"] == 1
    rej = [r for r in _rejected(ctx) if r["reason"] == "warc_truncated"]
    assert len(rej) == 1 and "cut.warc.gz" in rej[0]["detail"]
    assert "offset" in rej[0]["detail"]
    assert any("could not be read to the end" in line for line in ctx.summary)


def test_truncated_uncompressed_warc_and_garbage_input(tmp_path):
    raw = gzip.decompress(shared_path("warc", "dolma-sample-0001.warc.gz").read_bytes())
    cut = tmp_path / "cut.warc"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    notwarc = tmp_path / "notes.warc"
    notwarc.write_bytes(shared_path("docs", "cc_en_head-0091.jsonl").read_bytes())
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [cut, notwarc], ExtractConfig(), ctx, use_ray=False)
    assert m["docs_out"] >= 5
    assert m["rejected_warc_truncated"] == 1 and m["rejected_warc_unreadable"] == 1
    details = {r["reason"]: r["detail"] for r in _rejected(ctx)}
    assert "notes.warc" in details["warc_unreadable"] and "not a WARC" in details["warc_unreadable"]
    assert "cut.warc" in details["warc_truncated"]


def _write_warc(path: Path, records: list[tuple[str, bytes, str, str]]) -> None:
    """records: (url, http body, content type, status line)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for url, body, ctype, status in records:
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                http_headers=http))


def test_charsets_status_and_content_types(tmp_path):
    """A real page re-encoded as windows-1252 / Shift-JIS, a 404, an image, a bare
    text/plain response and an HTML page with nothing in it."""
    from warcio.archiveiterator import ArchiveIterator

    mission = "https://creativecommons.org/mission/"
    with open(shared_path("warc", "dolma-sample-0001.warc.gz"), "rb") as fh:
        page = next(r.content_stream().read() for r in ArchiveIterator(fh)
                    if r.rec_type == "response"
                    and r.rec_headers.get_header("WARC-Target-URI") == mission)
    html = page.decode("utf-8")
    latin = (html.replace("Creative Commons (CC)", "Créative Cömmons (CC)")
             .encode("cp1252", errors="replace"))
    sjis = ("<html><head><meta charset='shift_jis'></head><body><article><p>"
            + "日本語の文章です。" * 20 + "</p></article></body></html>")
    sjis = sjis.encode("shift_jis")
    w = tmp_path / "mixed.warc.gz"
    _write_warc(w, [
        ("https://a.example/latin", latin, "text/html; charset=windows-1252", "200 OK"),
        ("https://a.example/sjis", sjis, "text/html", "200 OK"),
        ("https://a.example/missing", b"<html><body>Not found</body></html>",
         "text/html", "404 Not Found"),
        ("https://a.example/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png", "200 OK"),
        ("https://a.example/robots.txt", b"User-agent: *\nDisallow: /private/\n" * 3,
         "text/plain", "200 OK"),
        ("https://a.example/empty", b"<html><body><script>var x=1;</script></body></html>",
         "text/html", "200 OK"),
    ])
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [w], ExtractConfig(), ctx)
    docs = {d["url"]: d["text"] for d in _docs(ctx)}
    assert "Créative Cömmons" in docs["https://a.example/latin"]
    assert "日本語の文章です" in docs["https://a.example/sjis"]
    assert docs["https://a.example/robots.txt"].startswith("User-agent: *")
    rej = {r["url"]: r for r in _rejected(ctx)}
    assert rej["https://a.example/missing"]["reason"] == "http_status"
    assert "404" in rej["https://a.example/missing"]["detail"]
    assert rej["https://a.example/logo.png"]["reason"] == "not_html"
    assert "image/png" in rej["https://a.example/logo.png"]["detail"]
    assert rej["https://a.example/empty"]["reason"] == "extract_empty"
    assert m["docs_out"] == 3 and m["rejected"] == 3
    assert m["charset_header"] >= 1 and m["charset_meta"] >= 1
    samples = ctx.tables["rejected_samples.json"]
    assert {s["reason"] for s in samples} == {"http_status", "not_html", "extract_empty"}


def _write_encoded(path: Path, records: list[tuple[str, bytes]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for url, body in records:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html"),
                                               ("Content-Encoding", "gzip")],
                                    protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                http_headers=http))


def test_gzip_content_encoding_decoded_and_broken_one_rejected(tmp_path):
    html = ("<html><body><article><p>" + "Compressed bodies are common on the web and "
            "must be decoded before extraction. " * 5 + "</p></article></body></html>")
    body = gzip.compress(html.encode())
    w = tmp_path / "ce.warc.gz"
    _write_encoded(w, [("https://c.example/gz", body),
                       ("https://c.example/broken", body[:40] + b"garbage" * 10)])
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [w], ExtractConfig(), ctx)
    assert [d["url"] for d in _docs(ctx)] == ["https://c.example/gz"]
    assert _docs(ctx)[0]["text"].startswith("Compressed bodies are common")
    rej = _rejected(ctx)
    assert m["rejected_decode_error"] == 1 and rej[0]["url"] == "https://c.example/broken"
    assert "still gzip data" in rej[0]["detail"]


def test_too_large_and_too_short(tmp_path):
    big = b"<html><body><p>" + b"word " * 3000 + b"</p></body></html>"
    w = tmp_path / "sizes.warc.gz"
    _write_warc(w, [("https://b.example/big", big, "text/html", "200 OK"),
                    ("https://b.example/short", b"<html><body><article><p>Just a few words "
                     b"here.</p></article></body></html>", "text/html", "200 OK")])
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [w], ExtractConfig(max_record_bytes=10_000), ctx)
    rej = {r["url"]: r for r in _rejected(ctx)}
    assert rej["https://b.example/big"]["reason"] == "too_large"
    assert rej["https://b.example/short"]["reason"] == "too_short"
    assert "min_text_chars 50" in rej["https://b.example/short"]["detail"]
    assert rej["https://b.example/short"]["text"] == "Just a few words here."
    assert m["docs_out"] == 0
    assert count_rows(ctx.out_dir) == 0        # an empty but readable dataset


def test_html_to_text_and_decode_helpers():
    cfg = ExtractConfig()
    html = ("<html><head><title>t</title></head><body><nav>Home | About</nav><article>"
            "<h1>Ingest</h1><p>" + "The quick brown fox jumps over the lazy dog. " * 8
            + "</p></article><footer>Copyright</footer></body></html>")
    text = html_to_text(html.encode("utf-8"), "https://x.example/", cfg)
    assert "quick brown fox" in text and "<p>" not in text
    assert html_to_text(b"", None, cfg) is None
    assert decode_html("café".encode("cp1252"), "iso-8859-1") == ("café", "header")
    assert decode_html(b"\xef\xbb\xbfhi", None) == ("hi", "bom")
    text, how = decode_html(b"caf\xe9 \xff\xfe broken", None)   # never raises
    assert how in ("detected", "fallback") and text.startswith("caf")
    with pytest.raises(ValueError, match="mutually exclusive"):
        ExtractConfig(favor_precision=True, favor_recall=True)


def test_corrupt_gzip_member_mid_file_is_skipped_and_reading_resumes(tmp_path):
    """Garble 64 bytes inside one record's gzip member: that record is quarantined,
    the reader finds the next member and keeps every other page."""
    src = shared_path("warc", "dolma-sample-0000.warc.gz")
    data = bytearray(src.read_bytes())
    for i in range(50_000, 50_064):          # inside the member of record 14 (offset 44678)
        data[i] ^= 0x5A
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(bytes(data))
    ctx = _ctx(tmp_path, "bad")
    m = run_ingest("web", "warc", [bad], ExtractConfig(), ctx)
    full_ctx = _ctx(tmp_path, "full")
    run_ingest("web", "warc", [src], ExtractConfig(), full_ctx)
    full = _docs(full_ctx)
    lost = "https://kyleclo.com/research/"
    assert _docs(ctx) == [d for d in full if d["url"] != lost]
    assert m["rejected_warc_unreadable"] == 1 and m["warc_resyncs"] == 1
    rej = _rejected(ctx)[0]
    assert rej["url"] == lost and "bad.warc.gz: cannot read at offset 44678" in rej["detail"]
    assert "skipped to the next record at offset 50126" in rej["detail"]


def _crawl_like_warcs(warc_dir: Path, pages: list[tuple[str, str]], max_bytes: int,
                      t0: float) -> list[Path]:
    """WARC files the way the crawler writes them (WarcRoller), pages in the given order."""
    from pipeline.crawl.warc import WarcRoller
    roller = WarcRoller(warc_dir, max_bytes, 0, {"software": "test"})
    for i, (url, html) in enumerate(pages):
        roller.write_pair(url, [("User-Agent", "t")], 200, "OK", "HTTP/1.1",
                          [("Content-Type", "text/html; charset=utf-8")], html.encode(),
                          "127.0.0.1", fetched_at=t0 + i)
        if roller.full():
            roller.publish(roller.close())
    if (name := roller.close()) is not None:
        roller.publish(name)
    return sorted(warc_dir.glob("*.warc.gz"))


def test_crawl_order_does_not_change_the_documents(tmp_path):
    """Two crawls of one site fetch the same pages in a different order, into a different
    number of WARC files at different times: with order="id" ingest writes the same
    documents in the same parts in the same order (input order would not)."""
    import random
    words = "river stone garden window paper silver morning harbour letter music".split()
    rng = random.Random(0)
    pages = []
    for i in range(60):
        body = " ".join(" ".join(rng.choice(words) for _ in range(12)).capitalize() + "."
                        for _ in range(6))
        pages.append((f"http://127.0.0.1:8000/p{i}.html",
                      f"<html><head><title>Page {i}</title></head><body><p>{body}</p></body></html>"))
    shuffled = pages[:]
    rng.shuffle(shuffled)
    a = _crawl_like_warcs(tmp_path / "a", pages, 6_000, 1.7e9)
    b = _crawl_like_warcs(tmp_path / "b", shuffled, 20_000, 1.8e9)
    assert len(a) != len(b)
    cfg = ExtractConfig(batch_rows=16)       # 60 documents -> 4 partitions
    out = {}
    for name, files, order in (("a", a, "id"), ("b", b, "id"), ("a_in", a, "input"), ("b_in", b, "input")):
        ctx = _ctx(tmp_path, f"out_{name}")
        m = run_ingest("web", "warc", files, cfg, ctx, order=order, use_ray=False)
        assert m["docs_out"] == 60
        parts = sorted((ctx.out_dir / "data").glob("*.parquet"))
        out[name] = ([p.name for p in parts],
                     [pq.read_table(p).drop_columns(["warc_date"]).to_pylist() for p in parts])
    names, tables = out["a"]
    assert names == out["b"][0] and len(names) == 4
    assert tables == out["b"][1]
    for t in tables:
        assert [r["id"] for r in t] == sorted(r["id"] for r in t)
    assert sorted(r["url"] for t in tables for r in t) == sorted(u for u, _ in pages)
    # without it the two crawls' documents differ in order (what the chaos run found)
    flat = lambda o: [r["id"] for t in o[1] for r in t]   # noqa: E731
    assert flat(out["a_in"]) != flat(out["b_in"])
    assert sorted(flat(out["a_in"])) == sorted(flat(out["a"]))
    assert not (ctx.out_dir / "data" / ".order").exists()
