"""Fuzzing the readers, HTML extraction and the tokenizer with broken and hostile input.

The property everywhere: the run never crashes (``ingest_file`` returns counts), bad
records are counted and quarantined with a reason, and every record the damage did not
touch is kept exactly as an intact read keeps it."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.config import ExtractConfig
from pipeline.ingest.stage import ingest_file
from tests.fuzz_util import fuzz_settings

OPTS = {"text_field": "text", "id_field": "id", "url_field": "url", "text_unit": "paragraph"}
CFG = ExtractConfig(min_text_chars=10, max_record_bytes=4000)
WORDS = "river stone bridge night star quiet morning bread window garden letter city".split()


def _text(i: int, n: int = 30) -> str:
    return " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n)) + f" doc {i}."


KIND = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text", ".warc": "warc", ".gz": "warc"}


def _ingest(tmp: Path, path: Path, cfg: ExtractConfig = CFG):
    kind = KIND[path.suffix]
    out = tmp / f"out-{path.name}"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True)
    res = ingest_file(0, str(path), path.name, kind, "src", cfg.model_dump(mode="json"), str(out), OPTS)
    docs = {r["id"]: r["text"] for f in sorted(out.glob("data/*.parquet")) for r in pq.read_table(f).to_pylist()}
    rejected = [r for f in sorted(out.glob("rejected/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert all(r["reason"] for r in rejected)
    stats = res["stats"]
    assert stats.get("docs_out", 0) == len(docs)
    assert stats.get("rejected", 0) == len(rejected)
    return docs, rejected, stats


def _scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---- JSONL: per-line damage -----------------------------------------------------------------

DAMAGE = st.sampled_from(["flip", "truncate", "latin1", "huge", "nul", "surrogate"])


@fuzz_settings(40)
@given(st.lists(st.tuples(st.integers(0, 19), DAMAGE, st.integers(0, 10**6)), max_size=6))
def test_jsonl_damaged_lines_are_quarantined_the_rest_kept(tmp_path_factory, damage):
    tmp = _scratch(tmp_path_factory)
    lines = [json.dumps({"id": f"d{i}", "text": _text(i) + " café ü", "url": f"http://e.org/{i}"},
                        ensure_ascii=False).encode() for i in range(20)]
    clean = tmp / "clean.jsonl"
    clean.write_bytes(b"\n".join(lines) + b"\n")
    base_docs, _, _ = _ingest(tmp, clean)
    assert len(base_docs) == 20
    damaged = set()
    for idx, kind, r in damage:
        line = lines[idx]
        if kind == "flip":
            pos = r % len(line)
            line = line[:pos] + bytes([line[pos] ^ (1 << (r % 8))]) + line[pos + 1:]
        elif kind == "truncate":
            line = line[:r % len(line)]
        elif kind == "latin1":
            line = line.decode("utf-8", "replace").encode("latin-1", "replace")
        elif kind == "huge":
            line = line[:-2] + b" " * 5000 + line[-2:]
        elif kind == "nul":
            line = line[:10] + b"\x00" + line[10:]
        else:
            line = line[:-2] + b"\xed\xa0\x80" + line[-2:]          # a UTF-8-encoded surrogate
        lines[idx] = line
        damaged.add(idx)
    path = tmp / "damaged.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, rejected, stats = _ingest(tmp, path)
    for key, text in base_docs.items():
        i = list(base_docs).index(key)
        if i not in damaged:
            assert docs.get(key) == text, f"line {i + 1} was not damaged but was lost"
    assert stats.get("file_errors", 0) == 0


# ---- whole files: random truncation and bit flips ---------------------------------------------

def _mutate(data: bytes, cut: int | None, flips: list[int]) -> bytes:
    b = bytearray(data)
    for f in flips:
        b[f % len(b)] ^= 1 << (f % 8)
    return bytes(b[:cut % (len(b) + 1)] if cut is not None else b)


MUTATION = st.tuples(st.one_of(st.none(), st.integers(0, 10**9)), st.lists(st.integers(0, 10**9), max_size=5))


@pytest.fixture(scope="module")
def parquet_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("pq") / "docs.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(300)], "text": [_text(i) for i in range(300)],
                             "url": [f"http://e.org/{i}" for i in range(300)]}), p, row_group_size=50)
    return p.read_bytes()


@fuzz_settings(30)
@given(MUTATION)
def test_parquet_truncated_or_flipped_never_crashes(tmp_path_factory, parquet_bytes, mutation):
    tmp = _scratch(tmp_path_factory)
    path = tmp / "docs.parquet"
    path.write_bytes(_mutate(parquet_bytes, *mutation))
    docs, rejected, stats = _ingest(tmp, path)
    if mutation == (None, []):
        assert len(docs) == 300
    elif len(docs) < 300:
        assert rejected, "documents were lost without a quarantined reason"
    for key, text in docs.items():          # whatever is kept is well-formed text
        assert isinstance(text, str) and text


@fuzz_settings(30)
@given(st.binary(max_size=3000), MUTATION)
def test_text_reader_any_bytes(tmp_path_factory, data, mutation):
    tmp = _scratch(tmp_path_factory)
    path = tmp / "t.txt"
    path.write_bytes(_mutate(("\n\n".join(_text(i) for i in range(5))).encode() + data, *mutation))
    docs, rejected, stats = _ingest(tmp, path)
    assert all("\x00" not in t for t in docs.values())
    assert all(r["reason"] in ("binary", "too_short", "empty_text", "too_large") for r in rejected)


def test_utf16_and_binary_text_units_are_quarantined_not_kept(tmp_path):
    """Regression (fuzz): a UTF-16 file or a binary file read as text became documents full of
    NUL characters; now each such unit is rejected as 'binary' with the offset, the rest kept."""
    good = "\n\n".join(_text(i) for i in range(3))
    path = tmp_path / "mixed.txt"
    path.write_bytes(good.encode() + b"\n\n" + "caf\u00e9 in utf-16 text here".encode("utf-16")
                     + b"\n\n" + _text(9).encode())
    docs, rejected, stats = _ingest(tmp_path, path)
    assert len(docs) == 4 and all("\x00" not in t for t in docs.values())
    assert [r["reason"] for r in rejected] == ["binary"]
    assert "NUL bytes at offset" in rejected[0]["detail"] and "paragraph 3" in rejected[0]["detail"]


def _warc(gzip: bool) -> tuple[bytes, list[int]]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gzip)
    ends = []
    for i in range(8):
        body = (f"<html><head><title>t{i}</title></head><body><article><h1>Page {i}</h1>"
                f"<p>{_text(i, 60)}</p><p>{_text(i + 50, 60)}</p></article></body></html>").encode()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        rec = writer.create_warc_record(f"http://site.example/{i}.html", "response", payload=io.BytesIO(body),
                                        http_headers=headers,
                                        warc_headers_dict={"WARC-Date": "2024-01-01T00:00:00Z"})
        writer.write_record(rec)
        ends.append(buf.tell())
    return buf.getvalue(), ends


@pytest.fixture(scope="module")
def warcs():
    return {gz: _warc(gz) for gz in (False, True)}


@fuzz_settings(25)
@given(st.booleans(), st.integers(0, 10**9), st.lists(st.integers(0, 10**9), max_size=3))
def test_warc_damage_keeps_every_record_before_it(tmp_path_factory, warcs, gz, cut, flips):
    tmp = _scratch(tmp_path_factory)
    data, ends = warcs[gz]
    clean = tmp / ("clean.warc.gz" if gz else "clean.warc")
    clean.write_bytes(data)
    base, _, _ = _ingest(tmp, clean)
    assert len(base) == 8
    cut = cut % (len(data) + 1)
    damaged = bytearray(data[:cut])
    first_damage = cut
    for f in flips:
        if damaged:
            pos = f % len(damaged)
            damaged[pos] ^= 1 << (f % 8)
            first_damage = min(first_damage, pos)
    path = tmp / ("d.warc.gz" if gz else "d.warc")
    path.write_bytes(bytes(damaged))
    docs, rejected, stats = _ingest(tmp, path)
    intact = sum(1 for e in ends if e <= first_damage)
    base_items = list(base.items())
    for key, text in base_items[:intact]:
        assert docs.get(key) == text, f"record before the damage at byte {first_damage} was lost"


# ---- HTML extraction and the tokenizer --------------------------------------------------------

HTML_BITS = st.sampled_from(["<html>", "<body>", "<p>", "</p>", "<div class='x'>", "</div>", "<script>",
                             "</script>", "<!--", "-->", "<![CDATA[", "]]>", "&amp;", "&#0;", "&#xD800;",
                             "<meta charset='utf-16'>", "<meta http-equiv='content-type' content='text/html; charset=x-bogus'>",
                             "<table><tr><td>", "\x00", "\ufeff", "é", "日本語", "<a href='javascript:x'>"])


@fuzz_settings(40)
@given(st.lists(st.one_of(HTML_BITS, st.text(max_size=40)), max_size=40), st.sampled_from([None, "utf-8", "latin-1", "bogus", "utf-16"]))
def test_html_extraction_never_raises(parts, charset):
    from pipeline.ingest.extract import decode_html, html_to_text
    html = "".join(parts)
    for raw in (html.encode("utf-8", "surrogatepass"), html.encode("utf-16", "surrogatepass")):
        text, used = decode_html(raw, charset)
        assert isinstance(text, str) and isinstance(used, str)
        out = html_to_text(raw, "http://e.org/", CFG, header_charset=charset)
        assert out is None or isinstance(out, str)


@pytest.fixture(scope="module")
def tokenizer():
    from pipeline.tokenize.config import TokenizerConfig
    from pipeline.tokenize.tokenizer import train_bpe
    tok = train_bpe([_text(i, 80) for i in range(50)] + ["def f(x):\n\treturn x  # é 日本"] * 5,
                    TokenizerConfig(vocab_size=400))
    tok.encode_special_tokens = True        # as the tokenize stage encodes
    return tok


@fuzz_settings(60)
@given(st.text(max_size=300) | st.sampled_from(["<|endoftext|>", "a<|pad|>b", "\r\n\t ", "  lead", "\x00\x01",
                                                  "\U0001F600" * 5, "e\u0301", "\ufeffBOM"]))
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    specials = {tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|pad|>")}
    assert not specials & set(ids), "text produced a special token (a forged document boundary)"
