"""The two tokenize stages: train (or load) the tokenizer, then write token shards.

``run_train_tokenizer`` -> ``<out>/tokenizer/`` (Hugging Face format) + fertility per source.
``run_tokenize``        -> ``<out>/<source>/<split>/<source>_<split>_NNNNN.{bin,idx,bytes.npy}``
                           + ``stats.json`` + ``meta.json`` + ``<out>/tokenizer/``.

Encoding runs on Ray Data: the work items are the Parquet row groups, each read by the
encoder actor that takes it (one block per row group streams through: the driver writes
group k while k+1 is encoded; Ray 2.60's own Parquet reader delivered a small corpus as a
single block, so nothing overlapped). An encoder turns batches of documents into token
arrays with the Rust tokenizer's ``encode_batch_fast``
(each actor runs the tokenizer's own thread pool, so large batches use several cores
without one Python process per core), and the driver appends the arrays to one rolling
shard writer per (source, split) in input order, so outputs are deterministic.

A document goes to the validation split when ``xxhash64(id) / 2**64 < val_fraction``:
stable across runs, seeds, worker counts and mixtures. Every document gets EOS appended.
"""

from __future__ import annotations

import json
import os
import re
import time
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.engine import count_rows, ensure_ray, in_process, iter_batches, parquet_files
from pipeline.stage import StageContext
from pipeline.tokenize.config import TokenizeConfig
from pipeline.tokenize.megatron import RollingShardWriter, token_dtype
from pipeline.tokenize.reader import SPLITS
from pipeline.tokenize.tokenizer import (Fertility, batched, copy_tokenizer, extend_bpe,
                                         hash_unit, load_tokenizer, resolve_tokenizer_dir,
                                         save_extended, save_hf, train_bpe)

SAMPLE_SEED = 1              # xxhash seed of the tokenizer-training sample (split uses 0)
FERTILITY_DOCS = 2000        # documents per source for the fertility report
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def split_of(doc_id: str | None, text: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the document id (of the text when there is no id)."""
    key = doc_id if doc_id else "text:" + text
    return "val" if hash_unit(key) < val_fraction else "train"


# ==== stage 1: the tokenizer ============================================================

def run_train_tokenizer(cfg: TokenizeConfig, docs_dir: Path, ctx: StageContext) -> dict:
    """Train a byte-level BPE on a hash-chosen sample of training-split documents (or
    load, validate and copy ``cfg.tokenizer.path``) into ``ctx.out_dir/tokenizer/``."""
    tcfg = cfg.tokenizer
    out = ctx.out_dir / "tokenizer"
    t0 = time.perf_counter()
    total = count_rows(docs_dir)
    metrics: dict[str, float] = {"docs_available": total}
    # Sample: documents of the training split (validation text never shapes the
    # vocabulary) whose hash falls under sample_docs / total, capped at sample_docs.
    rate = min(1.0, tcfg.sample_docs / max(1, total) * 1.05 / max(1e-9, 1 - cfg.val_fraction))

    def sample():
        n = 0
        for batch in iter_batches(docs_dir, columns=["id", "text", "source"], batch_size=1024):
            for doc_id, text, source in zip(*(batch.column(c).to_pylist()
                                              for c in ("id", "text", "source"))):
                if not text or not text.strip():
                    continue
                if split_of(doc_id, text, cfg.val_fraction) != "train":
                    continue
                if rate < 1.0 and hash_unit(doc_id or text, SAMPLE_SEED) >= rate:
                    continue
                yield text, source or "unknown"
                n += 1
                if n >= tcfg.sample_docs:
                    return

    def fertility_of(tok) -> Fertility:
        """Fertility per source, on (at most FERTILITY_DOCS per source of) the sample."""
        fert = Fertility()
        tok.encode_special_tokens = True
        per_source: dict[str, int] = {}
        for chunk in batched(sample(), 256):
            chunk = [(t, s) for t, s in chunk if per_source.get(s, 0) < FERTILITY_DOCS]
            for t, s in chunk:
                per_source[s] = per_source.get(s, 0) + 1
            encs = tok.encode_batch_fast([t for t, _ in chunk], add_special_tokens=False)
            for (t, s), e in zip(chunk, encs):
                fert.add(s, t, len(e.ids))
        return fert

    if tcfg.extend is not None and not tcfg.path:
        raise ValueError("tokenize.tokenizer.extend extends a loaded tokenizer: set "
                         "tokenize.tokenizer.path or train.init")
    if tcfg.path:
        src = Path(tcfg.path).expanduser()
        load_tokenizer(src)                       # validates, with errors naming what's wrong
        copy_tokenizer(src, out)
        ctx.note(f"Loaded tokenizer from `{src}`")
        metrics["trained"] = 0
        if tcfg.extend is not None:
            metrics.update(_extend(tcfg.extend, out, sample, fertility_of, ctx))
    else:
        sampled = [0]

        def texts():
            for text, _ in sample():
                sampled[0] += 1
                yield text

        tok = train_bpe(texts(), tcfg)
        save_hf(tok, out, tcfg)
        metrics.update(trained=1, sample_docs=sampled[0])
        ctx.note(f"Trained a byte-level BPE of {tok.get_vocab_size()} tokens on "
                 f"{sampled[0]:,} documents")
    tok, eos_id, vocab_size = load_tokenizer(out)
    metrics["vocab_size"] = vocab_size
    metrics["train_seconds"] = time.perf_counter() - t0

    fert = fertility_of(tok)
    metrics.update(fert.metrics())
    if fert.counts:
        ctx.table(fert.rows(), "fertility.json")
        ctx.note("| source | tokens/word | bytes/token |\n|---|---|---|\n" + "\n".join(
            f"| {r['source']} | {r['tokens_per_word']:.3f} | {r['bytes_per_token']:.3f} |"
            for r in fert.rows()))
    ctx.metrics(metrics)
    return metrics


def _extend(ecfg, out: Path, sample, fertility_of, ctx: StageContext) -> dict:
    """Domain extension of the tokenizer in ``out`` (ChipNeMo, ``extend_bpe``): fertility
    per source before (``<metric>.<source>.base``), the new tokens in ``extension.json``
    and a table of the top ones."""
    base_tok, _, base_vocab = load_tokenizer(out)
    before = fertility_of(base_tok).metrics()
    texts = [t for t, src in sample() if not ecfg.sources or src in ecfg.sources]
    if not texts:
        raise ValueError(f"tokenize.tokenizer.extend.sources {ecfg.sources} match no documents")
    tok, added = extend_bpe(out, texts, ecfg.domain_vocab_size, ecfg.max_new_tokens,
                            ecfg.min_frequency)
    save_extended(tok, added, out, base_vocab)
    ctx.table([{"id": a["id"], "text": a["text"], "base_pieces": len(a["base_ids"]),
                "gain": a["gain"]} for a in sorted(added, key=lambda a: -a["gain"])[:200]],
              "new_tokens.json")
    ctx.note(f"Extended the tokenizer with {len(added)} domain tokens "
             f"(vocab {base_vocab} -> {base_vocab + len(added)}), from a BPE trained on "
             f"{len(texts):,} documents of {ecfg.sources or 'every source'}")
    return {"new_tokens": len(added), "base_vocab_size": base_vocab,
            **{f"{k}.base": v for k, v in before.items()}}


# ==== stage 2: the shards ===============================================================

def token_byte_lengths(tok) -> np.ndarray | None:
    """UTF-8 bytes each token stands for, when the tokenizer is byte-level (each
    character of a byte-level token is one byte); None otherwise. Used to split a
    document's byte count exactly between its chunks."""
    from tokenizers import decoders

    if not isinstance(tok.decoder, decoders.ByteLevel):
        return None
    table = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        table[i] = 0 if token in specials else len(token)
    return table


def segments(text: str, limit: int) -> list[str]:
    """Cut a long text into pieces of at most ``limit`` characters, each ending after a
    newline (or before a space) where one exists. Byte-level BPE never merges across
    such a cut (its pre-tokenizer already splits there), so the tokens are the same as
    encoding the whole text, but the tokenizer never holds a huge document at once."""
    if len(text) <= limit:
        return [text]
    out, start = [], 0
    while len(text) - start > limit:
        end = start + limit
        cut = text.rfind("\n", start + limit // 2, end) + 1
        if cut <= 0:
            cut = text.rfind(" ", start + limit // 2, end)
        if cut <= start:
            cut = end
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


class Encoder:
    """Ray Data actor: a batch of documents in, one row per stored sequence out.

    Output columns: ``source``, ``split``, ``status`` ("ok" / "empty" / "no_source"),
    ``chunk`` (0 for a document's first sequence), ``tokens`` (list of ids, EOS ending
    the document's last chunk) and ``text_bytes`` (UTF-8 bytes of the text it covers).
    """

    def __init__(self, tokenizer_dir: str, val_fraction: float, max_doc_tokens: int | None,
                 segment_chars: int, threads: int | None, upsample_column: str | None = None) -> None:
        # The Rust thread pool does the parallel work inside one process; its size is
        # read once, on first use, from RAYON_RS_NUM_THREADS. ``threads=None`` (an encoder
        # in the driver) leaves the process's own tokenizers settings alone.
        if threads is not None:
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
            os.environ["RAYON_RS_NUM_THREADS"] = str(threads)
        tok, self.eos_id, vocab = load_tokenizer(Path(tokenizer_dir))
        tok.encode_special_tokens = True   # "<|endoftext|>" inside a text is text, not EOS
        self.tok = tok
        self.dtype = token_dtype(vocab)
        self.val_fraction = val_fraction
        self.max_doc_tokens = max_doc_tokens
        self.segment_chars = segment_chars
        self.upsample_column = upsample_column
        self.byte_table = token_byte_lengths(tok) if max_doc_tokens else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("id").to_pylist()
        texts = batch.column("text").to_pylist()
        sources = batch.column("source").to_pylist()
        # FineWeb-2 rehydration: a document is written `weight` times (dedup's sampling_weight)
        weights = (batch.column(self.upsample_column).fill_null(1).to_pylist()
                   if self.upsample_column and self.upsample_column in batch.column_names
                   else [1] * len(ids))
        keep = [i for i, (t, s) in enumerate(zip(texts, sources)) if t and t.strip() and s]
        # encode: long texts in pieces, all pieces of the batch in one call
        pieces, owner = [], []
        for i in keep:
            for piece in segments(texts[i], self.segment_chars):
                pieces.append(piece)
                owner.append(i)
        encs = self.tok.encode_batch_fast(pieces, add_special_tokens=False) if pieces else []
        per_doc: dict[int, list[list[int]]] = {}
        for i, e in zip(owner, encs):
            per_doc.setdefault(i, []).append(e.ids)

        out_src, out_split, out_status, out_chunk, out_bytes, lengths, flat = [], [], [], [], [], [], []
        out_copy = []
        for i, (doc_id, text, source) in enumerate(zip(ids, texts, sources)):
            if i not in per_doc or weights[i] < 1:
                out_src.append(source or "")
                out_split.append("")
                out_status.append("zero_weight" if i in per_doc else
                                  "no_source" if (text and text.strip()) else "empty")
                out_chunk.append(0)
                out_copy.append(0)
                out_bytes.append(0)
                lengths.append(0)
                continue
            parts = per_doc[i]
            parts.append([self.eos_id])
            n_bytes = len(text.encode("utf-8", "surrogatepass"))
            split = split_of(doc_id, text, self.val_fraction)
            n_tok = sum(len(p) for p in parts)
            doc = chain.from_iterable(parts)
            if self.max_doc_tokens is None or n_tok <= self.max_doc_tokens:
                chunks = [(n_tok, n_bytes)]
            else:
                chunks = self._chunks(np.fromiter(chain.from_iterable(parts), dtype=np.int64,
                                                  count=n_tok), n_bytes)
            if weights[i] > 1:
                doc = list(doc)
            for copy in range(weights[i]):
                flat.append(doc)
                for c, (n, b) in enumerate(chunks):
                    out_src.append(source)
                    out_split.append(split)
                    out_status.append("ok")
                    out_chunk.append(c)
                    out_copy.append(copy)
                    out_bytes.append(b)
                    lengths.append(n)
        n_total = int(sum(lengths))
        values = np.fromiter(chain.from_iterable(flat), dtype=self.dtype, count=n_total)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
        return pa.table({
            "source": pa.array(out_src, pa.string()),
            "split": pa.array(out_split, pa.string()),
            "status": pa.array(out_status, pa.string()),
            "chunk": pa.array(out_chunk, pa.int32()),
            "copy": pa.array(out_copy, pa.int32()),
            "tokens": tokens,
            "text_bytes": pa.array(out_bytes, pa.int64()),
        })

    def _chunks(self, doc: np.ndarray, n_bytes: int) -> list[tuple[int, int]]:
        """(tokens, bytes) of each chunk of at most max_doc_tokens; the bytes add up to
        the document's exactly (per token for byte-level tokenizers, else by share)."""
        m = self.max_doc_tokens
        sizes = [min(m, len(doc) - s) for s in range(0, len(doc), m)]
        if self.byte_table is not None:
            per = [int(self.byte_table[doc[s:s + m]].sum()) for s in range(0, len(doc), m)]
        else:
            per = [n_bytes * n // len(doc) for n in sizes]
        per[-1] = n_bytes - sum(per[:-1])
        return list(zip(sizes, per))


class RowGroupEncoder(Encoder):
    """Ray Data actor over work items ``{path, row_group}``: reads its Parquet row group
    itself and encodes it ``batch_size`` documents at a time. One block per row group
    streams through the pipeline (the driver writes group k while group k+1 is encoded)
    and needs no separate read tasks competing for the CPUs."""

    def __init__(self, batch_size: int, **kw) -> None:
        super().__init__(**kw)
        self.batch_size = batch_size

    def __call__(self, items: dict) -> pa.Table:
        import pyarrow.parquet as pq

        outs = []
        for path, rg in zip(items["path"], items["row_group"]):
            pf = pq.ParquetFile(str(path))
            cols = ["id", "text", "source"] + ([self.upsample_column] if self.upsample_column
                                               in pf.schema_arrow.names else [])
            table = pf.read_row_group(int(rg), columns=cols)
            for start in range(0, table.num_rows, self.batch_size):
                outs.append(Encoder.__call__(self, table.slice(start, self.batch_size)))
        return pa.concat_tables(outs) if outs else Encoder.__call__(self, pa.table(
            {"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
             "source": pa.array([], pa.string())}))


def _parallelism(ray, cfg: TokenizeConfig) -> tuple[int, int, float]:
    """(encoder actors, Rust threads each, logical CPUs each). The encoders read their
    own row groups, so they may take every CPU. An encoder asks for at most the CPUs of the
    smallest node, so every actor of the pool can be placed (on two 1-CPU nodes one 2-CPU
    encoder never could: the stage waited forever)."""
    cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    nodes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    nodes = [c for c in nodes if c > 0] or [cpus]
    unit = max(1, min(2, int(min(nodes))))          # CPUs per encoder: 2 where every node has 2
    encoders = cfg.encoders or max(1, sum(int(c) // unit for c in nodes))
    threads = cfg.threads_per_encoder or max(1, int(cpus) // encoders)
    share = min(float(threads), cpus / encoders, min(nodes))
    return encoders, threads, share


def run_tokenize(cfg: TokenizeConfig, docs_dir: Path, tokenizer_dir: Path,
                 ctx: StageContext) -> dict:
    """Encode ``<docs_dir>/data/*.parquet`` into Megatron shards per source and split."""
    t0 = time.perf_counter()
    tokenizer_dir = resolve_tokenizer_dir(Path(tokenizer_dir))
    _, eos_id, vocab_size = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(vocab_size)
    copy_tokenizer(tokenizer_dir, ctx.out_dir / "tokenizer")

    n_docs = count_rows(docs_dir)
    writers: dict[tuple[str, str], RollingShardWriter] = {}
    counts = {"docs_in": 0, "docs_empty": 0, "docs_no_source": 0, "docs_chunked": 0}
    docs: dict[tuple[str, str], int] = {}
    renamed: dict[str, str] = {}
    progress = ctx.progress(total=n_docs, unit="docs", desc=f"{ctx.name} tokenize")
    n_tokens = 0
    first_batch_s = write_s = 0.0     # start-up latency; driver time spent writing shards
    if parquet_files(docs_dir):
        import pyarrow.parquet as pq
        items = [{"path": f, "row_group": rg} for f in parquet_files(docs_dir)
                 for rg in range(pq.ParquetFile(f).metadata.num_row_groups)]
        enc_kw = dict(batch_size=cfg.batch_size, tokenizer_dir=str(tokenizer_dir),
                      val_fraction=cfg.val_fraction, max_doc_tokens=cfg.max_doc_tokens,
                      segment_chars=cfg.segment_chars, upsample_column=cfg.upsample_column)
        if in_process(n_docs):
            # a small input: one encoder in this process, no Ray and no encoder actors to
            # start; the same batches in the same order
            encoder = RowGroupEncoder(threads=None, **enc_kw)
            batches = (encoder({"path": [it["path"]], "row_group": [it["row_group"]]})
                       for it in items)
        else:
            ray = ensure_ray(ctx.num_cpus)
            encoders, threads, share = _parallelism(ray, cfg)
            ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            ds = ds.map_batches(
                RowGroupEncoder, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=encoders),
                num_cpus=share,   # logical share; the actor runs `threads` Rust threads
                fn_constructor_kwargs=dict(threads=threads, **enc_kw))
            batches = ds.iter_batches(batch_size=None, batch_format="pyarrow") if items else []
        for batch in batches:
            t_batch = time.perf_counter()
            first_batch_s = first_batch_s or t_batch - t0
            batch = batch.combine_chunks()
            col = batch.column("tokens").chunk(0) if batch.num_rows else None
            if col is None:
                continue
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=False)
            rows = zip(batch.column("source").to_pylist(), batch.column("split").to_pylist(),
                       batch.column("status").to_pylist(), batch.column("chunk").to_pylist(),
                       batch.column("text_bytes").to_pylist(), batch.column("copy").to_pylist())
            done = 0
            for r, (source, split, status, chunk, n_bytes, copy) in enumerate(rows):
                if status != "ok":
                    counts["docs_" + status] = counts.get("docs_" + status, 0) + 1
                    done += 1
                    continue
                if chunk == 0 and copy:
                    counts["docs_upsampled_copies"] = counts.get("docs_upsampled_copies", 0) + 1
                elif chunk == 0:
                    done += 1
                elif chunk == 1 and not copy:
                    counts["docs_chunked"] += 1
                name = renamed.get(source) or renamed.setdefault(source, _SAFE_NAME.sub("_", source))
                key = (name, split)
                w = writers.get(key)
                if w is None:
                    w = writers[key] = RollingShardWriter(ctx.out_dir / name / split,
                                                          f"{name}_{split}", dtype,
                                                          cfg.shard_max_bytes)
                w.add_document(values[offsets[r]:offsets[r + 1]], n_bytes)
                if chunk == 0:
                    docs[key] = docs.get(key, 0) + 1
                n_tokens += int(offsets[r + 1] - offsets[r])
            counts["docs_in"] += done
            write_s += time.perf_counter() - t_batch
            progress.update(done, tokens=n_tokens,
                            tok_s=n_tokens / max(time.perf_counter() - t0, 1e-9))
    for w in writers.values():
        w.close()
    progress.close()
    seconds = time.perf_counter() - t0

    # ---- stats, metrics, report ---------------------------------------------------------
    stats: dict[str, dict[str, dict]] = {}
    for name in sorted({s for s, _ in writers}):
        stats[name] = {}
        for split in SPLITS:
            (ctx.out_dir / name / split).mkdir(parents=True, exist_ok=True)
            w = writers.get((name, split))
            stats[name][split] = {"docs": docs.get((name, split), 0),
                                  "sequences": w.n_documents if w else 0,
                                  "tokens": w.n_tokens if w else 0,
                                  "bytes": w.n_text_bytes if w else 0,
                                  "shards": len(w.shards) if w else 0}
    (ctx.out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    meta = {"vocab_size": vocab_size, "eos_id": eos_id, "dtype": dtype.name,
            "tokenizer": "tokenizer", "val_fraction": cfg.val_fraction,
            "split_rule": "xxh64(id, seed=0) / 2**64 < val_fraction -> val",
            "max_doc_tokens": cfg.max_doc_tokens, "format": "megatron-indexed-dataset v1",
            "renamed_sources": {k: v for k, v in renamed.items() if k != v}}
    (ctx.out_dir / "meta.json").write_text(json.dumps(meta, indent=1))

    metrics: dict[str, float] = {
        "tokens_total": n_tokens, "docs_in": counts["docs_in"],
        "docs_total": sum(docs.values()),    # stored documents (EOS count)
        "docs_empty": counts["docs_empty"], "docs_no_source": counts["docs_no_source"],
        "docs_chunked": counts["docs_chunked"], "vocab_size": vocab_size,
        "shards": sum(len(w.shards) for w in writers.values()),
        "seconds": seconds, "seconds_to_first_batch": first_batch_s,
        "seconds_writing": write_s, "tokens_per_s": n_tokens / max(seconds, 1e-9),
        "docs_per_s": counts["docs_in"] / max(seconds, 1e-9),
    }
    rows = []
    for name, splits in stats.items():
        src_tokens = src_bytes = src_docs = 0
        for split, s in splits.items():
            metrics[f"tokens.{name}.{split}"] = s["tokens"]
            metrics[f"docs.{name}.{split}"] = s["docs"]
            rows.append({"source": name, "split": split, **s})
            src_tokens += s["tokens"]
            src_bytes += s["bytes"]
            src_docs += s["docs"]
        # EOS carries no text: bytes per token over the text tokens only
        metrics[f"bytes_per_token.{name}"] = src_bytes / max(src_tokens - src_docs, 1)
    ctx.table(rows, "token_counts.json")
    ctx.metrics(metrics)
    ctx.note(f"Tokenized {counts['docs_in']:,} documents into {n_tokens:,} tokens "
             f"({metrics['tokens_per_s']:,.0f} tokens/s, {dtype.name}, vocab {vocab_size}); "
             f"skipped {counts['docs_empty']} empty and {counts['docs_no_source']} without a source; "
             f"{counts['docs_chunked']} split at max_doc_tokens")
    _plot(stats, ctx)
    return metrics


def _plot(stats: dict, ctx: StageContext) -> None:
    if not stats:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3))
    bottom = np.zeros(len(names))
    for split in SPLITS:
        vals = np.array([stats[n][split]["tokens"] for n in names], dtype=float)
        ax.bar(names, vals, bottom=bottom, label=split)
        bottom += vals
    ax.set_ylabel("tokens")
    ax.set_title("tokens per source and split")
    ax.legend()
    ctx.figure(fig, "tokens_per_source.png")
