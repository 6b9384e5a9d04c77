"""Tiny real-text token shards for the train and evaluate tests.

``make_shards(dir)`` writes a tokenize-style artifact with the tokenize stage's own
pieces (byte-level BPE + Megatron shard writer): three sources of real text from
../shared/data — Shakespeare, English web text (Dolma CC sample) and German sentences —
each split into train/val. Imported by tests/test_train*.py and tests/test_evaluate*.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import shared_path


def _docs() -> dict[str, list[str]]:
    shakes = shared_path("text", "tinyshakespeare.txt").read_text()[:120_000]
    lines = shakes.splitlines()
    shakespeare = ["\n".join(lines[i:i + 40]) for i in range(0, len(lines), 40)]
    web = [json.loads(ln)["text"] for ln in
           shared_path("docs", "cc_en_head-0091.jsonl").read_text().splitlines() if ln.strip()]
    en = shared_path("langid", "sentences_head50", "en.txt").read_text().splitlines()
    web += [" ".join(en[i:i + 5]) for i in range(0, len(en), 5)]
    de = shared_path("langid", "sentences_head50", "de.txt").read_text().splitlines()
    german = [" ".join(de[i:i + 5]) for i in range(0, len(de), 5)]
    return {"shakespeare": [d for d in shakespeare if d.strip()],
            "web": [d for d in web if d.strip()], "german": german}


def make_shards(out: Path, vocab_size: int = 512) -> Path:
    """Write ``<out>/<source>/{train,val}/`` shards + ``tokenizer/`` + ``stats.json``."""
    from pipeline.tokenize.config import TokenizerConfig
    from pipeline.tokenize.megatron import RollingShardWriter, token_dtype
    from pipeline.tokenize.tokenizer import load_tokenizer, save_hf, train_bpe

    out = Path(out)
    if (out / "stats.json").exists():
        return out
    docs = _docs()
    tcfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=2)
    tok = train_bpe((d for ds in docs.values() for d in ds), tcfg)
    save_hf(tok, out / "tokenizer", tcfg)
    tok, eos, vocab = load_tokenizer(out / "tokenizer")
    stats = {}
    for src, texts in docs.items():
        writers = {s: RollingShardWriter(out / src / s, src, token_dtype(vocab), 1 << 30)
                   for s in ("train", "val")}
        for i, text in enumerate(texts):
            ids = np.asarray(tok.encode(text).ids + [eos], dtype=np.int64)
            writers["val" if i % 5 == 2 else "train"].add_document(ids, len(text.encode("utf-8")))
        for w in writers.values():
            w.close()
        stats[src] = {s: {"documents": w.n_documents, "tokens": w.n_tokens}
                      for s, w in writers.items()}
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def test_fixture_shards_read_back(tmp_path):
    from pipeline.tokenize.reader import open_shards
    from pipeline.tokenize.tokenizer import load_tokenizer

    d = make_shards(tmp_path / "tok")
    shards = open_shards(d)
    assert set(shards) == {"shakespeare", "web", "german"}
    tok, eos, _ = load_tokenizer(d / "tokenizer")
    val = shards["german"]["val"]
    assert len(val) >= 1 and val.document(0)[-1] == eos
    text = tok.decode(val.document(0)[:-1].tolist())
    assert len(text.encode("utf-8")) == val.document_bytes(0)
