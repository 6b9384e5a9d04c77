"""Tokenizer training/loading, Megatron shards (read back by megatron-core), the reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.engine import DOC_SCHEMA, write_table
from pipeline.stage import StageContext
from pipeline.tokenize.config import TokenizeConfig, TokenizerConfig
from pipeline.tokenize.megatron import IndexedDatasetWriter, read_index, token_dtype
from pipeline.tokenize.reader import ShardSet, open_shards
from pipeline.tokenize.stage import run_tokenize, run_train_tokenizer, segments, split_of
from pipeline.tokenize.tokenizer import hash_unit, load_tokenizer
from tests.conftest import shared_path

HARD = [
    "emoji 🎉🚀 and a ZWJ family 👨‍👩‍👧",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "control chars \x00\x01\x07\x1b[0m\ttab\r\nCRLF \x7f end",
    "a literal <|endoftext|> inside a document stays text",
    "  leading spaces, trailing spaces  ",
]


def _corpus() -> list[dict]:
    text = shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    paras = [p for p in text.split("\n\n") if p.strip()][:900]
    rows = [{"id": f"doc-{i}", "text": p, "source": "plays" if i % 3 else "prose", "url": ""}
            for i, p in enumerate(paras)]
    rows += [{"id": f"hard-{i}", "text": t, "source": "prose", "url": ""} for i, t in enumerate(HARD)]
    # a long document (~60k characters) to exercise segmenting and max_doc_tokens
    rows.append({"id": "long-0", "text": "\n".join(paras[:400]), "source": "plays", "url": ""})
    rows += [{"id": "empty-0", "text": "", "source": "plays", "url": ""},
             {"id": "empty-1", "text": "   \n ", "source": "prose", "url": ""},
             {"id": "empty-2", "text": None, "source": "prose", "url": ""},
             {"id": "nosrc-0", "text": "a document without a source", "source": None, "url": ""}]
    return rows


def _write_docs(rows: list[dict], d: Path) -> Path:
    half = len(rows) // 2
    write_table(pa.Table.from_pylist(rows[:half], schema=DOC_SCHEMA), d, part=0)
    write_table(pa.Table.from_pylist(rows[half:], schema=DOC_SCHEMA), d, part=1)
    return d


CFG = TokenizeConfig(tokenizer=TokenizerConfig(vocab_size=600), val_fraction=0.1,
                     shard_max_bytes=64 * 1024, max_doc_tokens=4096, segment_chars=5000,
                     batch_size=128)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("tok")
    rows = _corpus()
    docs = _write_docs(rows, root / "docs")
    tm = run_train_tokenizer(CFG, docs, StageContext.for_testing(root / "tokenizer"))
    sm = run_tokenize(CFG, docs, root / "tokenizer" / "tokenizer",
                      StageContext.for_testing(root / "shards"))
    return {"root": root, "rows": rows, "docs": docs, "train_metrics": tm, "metrics": sm}


def _expected(rows, cfg=CFG):
    """{(source, split): [texts in input order]} of the documents that must be stored."""
    out: dict = {}
    for r in rows:
        if not r["text"] or not r["text"].strip() or not r["source"]:
            continue
        out.setdefault((r["source"], split_of(r["id"], r["text"], cfg.val_fraction)), []).append(r["text"])
    return out


# ---- the tokenizer ------------------------------------------------------------------------

def test_tokenizer_artifact_loads_with_autotokenizer(built):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(str(built["root"] / "tokenizer" / "tokenizer"))
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    assert len(tok) == 600 == built["train_metrics"]["vocab_size"]
    for text in HARD:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_fertility_reported_per_source(built):
    m = built["train_metrics"]
    for src in ("plays", "prose"):
        # English with a 600-token BPE: more than one token per word, 2-4 bytes per token
        assert 1.0 < m[f"fertility_tokens_per_word.{src}"] < 4.0
        assert 1.5 < m[f"bytes_per_token.{src}"] < 5.0
    assert m["sample_docs"] > 500


def test_byte_level_round_trip_of_any_bytes(built):
    tok, eos, _ = load_tokenizer(built["root"] / "tokenizer")
    tok.encode_special_tokens = True
    every = "".join(chr(c) for c in range(1, 0x800)) + "\U0001F600\U0010FFFF"
    ids = tok.encode(every, add_special_tokens=False).ids
    assert eos not in ids and tok.decode(ids) == every


def test_loading_a_tokenizer_dir_missing_files_names_them(tmp_path, built):
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text((built["root"] / "tokenizer" / "tokenizer" /
                                         "tokenizer.json").read_text())
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(path=str(bad)))
    with pytest.raises(FileNotFoundError, match="missing tokenizer_config.json"):
        run_train_tokenizer(cfg, built["docs"], StageContext.for_testing(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_loading_an_existing_tokenizer_copies_it(tmp_path, built):
    src = built["root"] / "tokenizer" / "tokenizer"
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(path=str(src)))
    m = run_train_tokenizer(cfg, built["docs"], StageContext.for_testing(tmp_path / "out"))
    assert m["trained"] == 0 and m["vocab_size"] == 600
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (src / "tokenizer.json").read_bytes()


# ---- the shards ---------------------------------------------------------------------------

def test_megatron_indexed_dataset_reads_shards_and_text_round_trips(built):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok, eos, _ = load_tokenizer(built["root"] / "tokenizer")
    shards = built["root"] / "shards"
    expected = _expected(built["rows"])
    assert set(expected) == {(s, sp) for s in ("plays", "prose") for sp in ("train", "val")}
    for (source, split), texts in expected.items():
        prefixes = sorted((shards / source / split).glob("*.idx"))
        assert prefixes and all(p.name.startswith(f"{source}_{split}_") for p in prefixes)
        seqs = []
        for idx in prefixes:
            ds = IndexedDataset(str(idx.with_suffix("")), mmap=True)
            assert ds.index.dtype == np.uint16
            seqs += [np.array(ds[i], copy=True) for i in range(len(ds))]  # copy: ds unmaps on delete
        # sequences of one document are consecutive; EOS only ends each document
        decoded, current = [], []
        for seq in seqs:
            assert len(seq) <= CFG.max_doc_tokens
            current.extend(seq.tolist())
            if seq[-1] == eos:
                decoded.append(tok.decode(current[:-1]))
                assert eos not in current[:-1]
                current = []
        assert current == []
        assert decoded == texts


def test_index_layout_is_byte_exact(tmp_path):
    prefix = tmp_path / "x"
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document(np.array([5, 6, 7]))
        w.add_document(np.array([65535]))
    raw = (tmp_path / "x.idx").read_bytes()
    expected = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 2, 3)
                + np.array([3, 1], "<i4").tobytes() + np.array([0, 6], "<i8").tobytes()
                + np.array([0, 1, 2], "<i8").tobytes())
    assert raw == expected
    assert (tmp_path / "x.bin").read_bytes() == np.array([5, 6, 7, 65535], "<u2").tobytes()
    info = read_index(tmp_path / "x.idx")
    assert info.lengths.tolist() == [3, 1] and info.pointers.tolist() == [0, 6]


def test_dtype_choice_uint16_vs_int32(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32
    with IndexedDatasetWriter(tmp_path / "big", token_dtype(100_000)) as w:
        w.add_document(np.array([99_999, 70_000, 3]))
    ds = IndexedDataset(str(tmp_path / "big"))
    assert ds.index.dtype == np.int32 and ds[0].tolist() == [99_999, 70_000, 3]
    del ds
    with IndexedDatasetWriter(tmp_path / "small", np.uint16) as w:
        with pytest.raises(ValueError, match="outside uint16"):
            w.add_document(np.array([70_000]))


def test_stats_metrics_and_reader_agree(built):
    shards = open_shards(built["root"] / "shards")
    stats = json.loads((built["root"] / "shards" / "stats.json").read_text())
    m = built["metrics"]
    expected = _expected(built["rows"])
    for (source, split), texts in expected.items():
        s, st = shards[source][split], stats[source][split]
        assert st["docs"] == len(texts) == m[f"docs.{source}.{split}"]
        assert st["tokens"] == s.n_tokens == m[f"tokens.{source}.{split}"]
        assert st["bytes"] == s.total_bytes == sum(len(t.encode()) for t in texts)
        assert st["sequences"] == len(s)
    assert m["docs_empty"] == 3 and m["docs_no_source"] == 1
    assert m["docs_chunked"] >= 1      # the long document
    assert m["tokens_total"] == sum(s.n_tokens for d in shards.values() for s in d.values())
    assert m["tokens_per_s"] > 0
    # rolled at shard_max_bytes: several shards, none much beyond the limit
    train = sorted((built["root"] / "shards" / "plays" / "train").glob("*.bin"))
    assert len(train) >= 2
    assert all(p.stat().st_size < CFG.shard_max_bytes + 2 * CFG.max_doc_tokens for p in train)
    tok_dir = built["root"] / "shards" / "tokenizer"
    assert (tok_dir / "tokenizer.json").exists() and (tok_dir / "tokenizer_config.json").exists()


def test_reader_documents_bytes_and_windows(built):
    tok, eos, _ = load_tokenizer(built["root"] / "tokenizer")
    s = open_shards(built["root"] / "shards")["prose"]["train"]
    texts = _expected(built["rows"])[("prose", "train")]
    short = [i for i in range(len(s)) if s.document(i)[-1] == eos]
    # the first stored sequences are whole documents (no long one in 'prose')
    assert len(short) == len(s) == len(texts)
    for i in (0, 1, len(s) - 1):
        doc = s.document(i)
        assert tok.decode(doc[:-1].tolist()) == texts[i]
        assert s.document_bytes(i) == len(texts[i].encode())
    stream = np.concatenate([s.document(i) for i in range(len(s))]).astype(np.int64)
    assert len(stream) == s.n_tokens
    assert np.array_equal(s.window(10, 500), stream[10:510])
    # crosses the end and wraps to the start; longer than the whole stream
    assert np.array_equal(s.window(s.n_tokens - 3, 7), np.concatenate([stream[-3:], stream[:4]]))
    assert np.array_equal(s.window(5, 2 * s.n_tokens), np.tile(np.roll(stream, -5), 2))
    assert s.window(0, 4).dtype == np.int64
    with pytest.raises(IndexError):
        s.document(len(s))
    assert len(ShardSet(built["root"] / "nowhere")) == 0


def test_split_is_stable_and_independent_of_resources(tmp_path, built, monkeypatch):
    """A second run with other batch size / encoders / seed, on Ray's encoder actors
    instead of in this process (the ~900-document corpus is small), gives
    byte-identical shards."""
    from pipeline import engine
    assert engine.in_process(len(built["rows"]))
    monkeypatch.setitem(engine._RAY_SETTINGS, "in_process_max_docs", 0)
    cfg = CFG.model_copy(update={"batch_size": 37, "encoders": 2, "threads_per_encoder": 1})
    run_tokenize(cfg, built["docs"], built["root"] / "tokenizer",
                 StageContext.for_testing(tmp_path / "again", seed=99))
    first = built["root"] / "shards"
    files = sorted(p.relative_to(first) for p in first.rglob("*")
                   if p.suffix in (".bin", ".idx", ".npy"))
    assert files
    for rel in files:
        assert (tmp_path / "again" / rel).read_bytes() == (first / rel).read_bytes(), rel
    # the split is the documented hash rule
    assert split_of("doc-1", "x", 0.1) == ("val" if hash_unit("doc-1") < 0.1 else "train")


def test_val_fraction_is_about_right(built):
    stats = json.loads((built["root"] / "shards" / "stats.json").read_text())
    val = sum(s["val"]["docs"] for s in stats.values())
    total = sum(s["val"]["docs"] + s["train"]["docs"] for s in stats.values())
    assert 0.06 < val / total < 0.14      # val_fraction 0.1 over ~900 documents


def test_segments_do_not_change_tokens(built):
    tok, _, _ = load_tokenizer(built["root"] / "tokenizer")
    text = "\n".join(r["text"] for r in built["rows"][:200] if r["text"])
    pieces = segments(text, 2000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 2000 and len(pieces) > 5
    whole = tok.encode(text, add_special_tokens=False).ids
    parts = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert parts == whole


def test_no_documents_gives_empty_outputs(tmp_path, built):
    (tmp_path / "docs" / "data").mkdir(parents=True)
    m = run_tokenize(CFG, tmp_path / "docs", built["root"] / "tokenizer",
                     StageContext.for_testing(tmp_path / "out"))
    assert m["tokens_total"] == 0 and json.loads((tmp_path / "out" / "stats.json").read_text()) == {}
    assert open_shards(tmp_path / "out") == {}


class _Cluster:
    """What ``_parallelism`` reads of a Ray cluster: its total CPUs and its nodes."""

    def __init__(self, *node_cpus: float):
        self.node_cpus = node_cpus

    def cluster_resources(self):
        return {"CPU": float(sum(self.node_cpus))}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": c}} for c in self.node_cpus] + \
            [{"Alive": False, "Resources": {"CPU": 64.0}}]          # a dead node counts for nothing


def test_encoder_actors_fit_on_one_node():
    from pipeline.tokenize.config import TokenizeConfig
    from pipeline.tokenize.stage import _parallelism
    cfg = TokenizeConfig()
    assert _parallelism(_Cluster(2), cfg) == (1, 2, 2.0)            # the local 2-CPU Ray
    assert _parallelism(_Cluster(16), cfg) == (8, 2, 2.0)
    # two 1-CPU nodes: a 2-CPU encoder could never be placed (the stage hung); two 1-CPU ones
    assert _parallelism(_Cluster(1, 1), cfg) == (2, 1, 1.0)
    for nodes in [(1, 1), (1, 3), (3, 1), (4, 4, 4), (2,), (1, 1, 1, 1, 1), (2, 3), (8, 1)]:
        encoders, threads, share = _parallelism(_Cluster(*nodes), cfg)
        free = sorted(nodes, reverse=True)            # place the pool first-fit, as Ray must
        for _ in range(encoders):
            i = next((i for i, c in enumerate(free) if c >= share), None)
            assert i is not None, f"{nodes}: {encoders} encoders x {share} CPU do not fit"
            free[i] -= share
