"""Dedup stage: exact + MinHash LSH near-duplicate removal, distributed on Ray.

    run_dedup(cfg, docs_dir, ctx) -> metrics

Data flow (every document-sized step runs on Ray workers, one *unit* of rows at a time):

 1. plan     the input files are cut into units (file, row group, row range) with a
             global row offset, so every document has a stable index = its input order.
 2. keys     Ray Data ``map_batches`` over units: per document an exact key (sha1 of the
             normalised text; of the URL too with ``exact_url``) and one LSH key per band
             (hash of the band's MinHash rows). Signatures are computed vectorised per
             batch and dropped right after banding: no process ever holds all signatures.
             The map side of the shuffle: each unit's key rows (17 bytes each), sorted by
             LSH partition, go to ``_shuffle/keys-<unit>.npy`` + partition offsets.
 3. buckets  Ray Data ``map_batches`` over partitions (the reduce side): a partition's
             slice of every unit's key file is read (memory-mapped), sorted by key, and
             every bucket (run of equal keys) emits star edges (smallest doc, other doc).
             Partitions hold at most ~``rows_per_partition`` rows, so their number grows
             with the corpus and their size does not. (A file shuffle rather than Ray
             Data's ``groupby``: no all-to-all through the object store, and a memory
             bound per task that is a function of two settings; the shuffle files live
             in the stage's partial directory, i.e. on the store's shared filesystem.)
 4. clusters the edges (only duplicates) meet on the driver: optional exact-Jaccard
             verification, union-find, one keeper per cluster by the keep policy.
 5. write    Ray tasks per unit re-read their rows and split them into kept
             (``data/part-<unit>.parquet`` with ``cluster_id``/``cluster_size``) and removed
             (``rejected/part-<unit>.parquet`` with ``reason``/``detail``/``duplicate_of``).

Up to ``run.in_process_max_docs`` input documents every step runs in the driver process
instead (the same functions, one unit or partition after the other; same outputs): a
local Ray and its first workers cost more than the work.

Memory: see the README, Dedup section, "Where it runs and what grows with what".
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedup.components import connected_components
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.minhash import (band_keys, doc_features, doc_hashes, jaccard, p_candidate,
                                    signatures_from_hashes)
from pipeline.engine import ROW_GROUP_ROWS, ensure_ray, in_process, parquet_files, write_table
from pipeline.stage import StageContext

KIND_TEXT, KIND_URL, KIND_BAND = 0, 1, 2
REASON_EXACT, REASON_NEAR = "exact_duplicate", "near_duplicate"
ADDED_COLUMNS = ("cluster_id", "cluster_size", "sampling_weight", "reason", "detail", "duplicate_of")
S_CURVE_POINTS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
_HAS_WORD = re.compile(r"[^\W_]", re.UNICODE)


# ---------------------------------------------------------------------------------------
# 1. plan: units of rows with global offsets
# ---------------------------------------------------------------------------------------
def plan_units(files: list[str], unit_rows: int) -> list[dict]:
    """Cut the input into units of at most ``unit_rows`` rows, never across row groups.
    ``offset`` is the global index of the unit's first row (input order)."""
    units, offset = [], 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            k = max(1, math.ceil(n / unit_rows))          # equal-sized pieces balance workers
            for j in range(k):
                start, stop = j * n // k, (j + 1) * n // k
                if stop == start:
                    continue
                units.append(dict(unit=len(units), path=path, rg=rg, start=start,
                                  stop=stop, offset=offset))
                offset += stop - start
    return units


def read_unit(unit: dict, columns: list[str] | None = None) -> pa.Table:
    pf = pq.ParquetFile(unit["path"])
    names = set(pf.schema_arrow.names)
    cols = None if columns is None else [c for c in columns if c in names]
    table = pf.read_row_group(unit["rg"], columns=cols)
    return table.slice(unit["start"], unit["stop"] - unit["start"])


def iter_unit(unit: dict, columns: list[str], batch_rows: int):
    """The unit's rows as (table of at most ``batch_rows`` rows, its first row's index in
    the unit), streamed from its row group: memory holds one batch, not the unit."""
    pf = pq.ParquetFile(unit["path"])
    names = set(pf.schema_arrow.names)
    pos = 0                                   # row index within the row group
    for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[unit["rg"]],
                              columns=[c for c in columns if c in names]):
        lo, hi = max(unit["start"], pos), min(unit["stop"], pos + rb.num_rows)
        if hi > lo:
            yield pa.Table.from_batches([rb.slice(lo - pos, hi - lo)]), lo - unit["start"]
        pos += rb.num_rows
        if pos >= unit["stop"]:
            break


# ---------------------------------------------------------------------------------------
# 2. keys: exact and LSH band keys per document (Ray Data map_batches over units)
# ---------------------------------------------------------------------------------------
def _sha64(data: bytes) -> int:
    """Exact-dedup key: the first 8 bytes of sha1 (a false match needs a 64-bit collision)."""
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "little")


def _scores(table: pa.Table, keep: str, quality_column: str) -> np.ndarray:
    """Keep-policy score per row: larger wins, ties go to the first in input order."""
    n = table.num_rows
    if keep == "longest":
        return np.asarray(pa.compute.utf8_length(table["text"]).fill_null(0), dtype=np.float64)
    if keep == "quality" and quality_column in table.column_names:
        q = np.asarray(table[quality_column].cast(pa.float64()).to_numpy(zero_copy_only=False),
                       dtype=np.float64)
        return np.where(np.isnan(q), -np.inf, q)      # missing score loses to any score
    return np.zeros(n, dtype=np.float64)


SHUFFLE_DTYPE = np.dtype([("key", "<u8"), ("doc", "<i8"), ("kind", "i1")])   # 17 bytes a row


def _partition_of(key: np.ndarray, num_parts: int) -> np.ndarray:
    """LSH partition of a key row (bits 40.. of the key: independent of the band salt)."""
    return ((key >> np.uint64(40)) % np.uint64(num_parts)).astype(np.int64)


def _save(path: Path, arr: np.ndarray) -> None:
    """np.save via a temporary name: a retried task never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    tmp.replace(path)


def unit_keys(unit: dict, cfg: DedupConfig, bands: int, rows: int, keep: str, num_parts: int,
              shuffle_dir: Path) -> int:
    """Map side of the LSH shuffle, one unit of documents: its key rows (exact key of
    the normalised text, of the URL with ``exact_url``, one LSH key per band) sorted by
    partition into ``keys-<unit>.npy`` with the partition offsets in ``index-<unit>.npy``;
    the keep-policy score of each document in ``score-<unit>.npy``. Signatures are
    computed per ``batch_size`` documents and dropped after banding. Returns the row count."""
    out_key, out_doc, out_kind, scores = [], [], [], []
    for table, start in iter_unit(unit, ["text", "url", "lang", cfg.quality_column], cfg.batch_size):
        n = table.num_rows
        bdocs = unit["offset"] + start + np.arange(n, dtype=np.int64)
        if keep != "first":
            scores.append(_scores(table, keep, cfg.quality_column))
        langs = table["lang"].to_pylist() if "lang" in table.column_names else None
        norms, hashes = doc_features(table["text"].to_pylist(), cfg.ngram, langs,
                                     cfg.char_ngrams, cfg.shingle_hash)
        ok = np.array([len(x) > 0 for x in norms], dtype=bool)   # empty: no dedup
        if cfg.exact:
            out_key.append(np.array([_sha64(x) for x in norms if x], dtype=np.uint64))
            out_doc.append(bdocs[ok])
            out_kind.append(np.full(int(ok.sum()), KIND_TEXT, dtype=np.int8))
        if cfg.minhash and ok.any():
            sigs = signatures_from_hashes([h for x, h in zip(norms, hashes) if x], cfg.num_perm,
                                          cfg.seed, cfg.scheme)
            keys = band_keys(sigs, bands, rows)                 # [docs, bands]
            out_key.append(keys.reshape(-1))
            out_doc.append(np.repeat(bdocs[ok], bands))
            out_kind.append(np.full(keys.size, KIND_BAND, dtype=np.int8))
        if cfg.exact_url and "url" in table.column_names:
            urls = table["url"].to_pylist()
            ok = np.array([bool(u) for u in urls], dtype=bool)
            out_key.append(np.array([_sha64(b"url:" + u.encode("utf-8")) for u in urls if u],
                                    dtype=np.uint64))
            out_doc.append(bdocs[ok])
            out_kind.append(np.full(int(ok.sum()), KIND_URL, dtype=np.int8))
    if keep != "first":
        _save(shuffle_dir / f"score-{unit['unit']:06d}.npy",
              np.concatenate(scores) if scores else np.empty(0, np.float64))
    rec = np.empty(sum(len(k) for k in out_key), dtype=SHUFFLE_DTYPE)
    if len(rec):
        rec["key"] = np.concatenate(out_key)
        rec["doc"] = np.concatenate(out_doc)
        rec["kind"] = np.concatenate(out_kind)
    part = _partition_of(rec["key"], num_parts)
    order = np.argsort(part, kind="stable")
    _save(shuffle_dir / f"keys-{unit['unit']:06d}.npy", rec[order])
    _save(shuffle_dir / f"index-{unit['unit']:06d}.npy",
          np.searchsorted(part[order], np.arange(num_parts + 1)).astype(np.int64))
    return len(rec)


def _map_units(batch: dict, **kw) -> dict:
    """Ray Data map_batches fn: a batch of unit descriptions -> their key-row counts."""
    cfg = DedupConfig(**kw.pop("cfg"))
    shuffle_dir = Path(kw.pop("shuffle_dir"))
    units = [dict(zip(batch, vals)) for vals in zip(*(batch[k].tolist() for k in batch))]
    return {"unit": np.array([u["unit"] for u in units], dtype=np.int64),
            "rows": np.array([unit_keys(u, cfg, shuffle_dir=shuffle_dir, **kw) for u in units],
                             dtype=np.int64)}


# ---------------------------------------------------------------------------------------
# 3. buckets: edges within each bucket, one LSH partition at a time
# ---------------------------------------------------------------------------------------
def read_partition(shuffle_dir: Path, part: int, units: list[int]) -> np.ndarray:
    """All key rows of one partition: its slice of every unit's key file (memory-mapped,
    only the slice is read)."""
    pieces = []
    for u in units:
        idx = np.load(shuffle_dir / f"index-{u:06d}.npy")
        lo, hi = int(idx[part]), int(idx[part + 1])
        if hi > lo:
            pieces.append(np.array(np.load(shuffle_dir / f"keys-{u:06d}.npy", mmap_mode="r")[lo:hi]))
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=SHUFFLE_DTYPE)


def bucket_edges(rec: np.ndarray) -> dict:
    """Key rows of one partition -> star edges (first doc of a bucket, each other doc).
    A bucket = rows with equal (kind, key); k docs give k-1 edges, not k*(k-1)/2."""
    if len(rec) < 2:
        return _edges_empty()
    order = np.lexsort((rec["doc"], rec["key"], rec["kind"]))
    key, doc, kind = rec["key"][order], rec["doc"][order], rec["kind"][order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (kind[1:] != kind[:-1])
    head = np.maximum.accumulate(np.where(new, np.arange(len(key)), 0))   # bucket's first row
    m = ~new & (doc != doc[head])            # same doc twice in a bucket cannot happen, but be safe
    return {"u": doc[head][m], "v": doc[m], "kind": kind[m]}


def _reduce_parts(batch: dict, shuffle_dir: str, units: list[int]) -> dict:
    """Ray Data map_batches fn: a batch of partition numbers -> their bucket edges."""
    out = [bucket_edges(read_partition(Path(shuffle_dir), int(p), units)) for p in batch["part"]]
    return {k: np.concatenate([o[k] for o in out]) for k in ("u", "v", "kind")}


def _edges_empty() -> dict:
    return {"u": np.empty(0, np.int64), "v": np.empty(0, np.int64), "kind": np.empty(0, np.int8)}


def _as_batch(item: dict) -> dict:
    """One item as the one-row numpy batch Ray Data's ``map_batches(batch_size=1)`` gives."""
    return {k: np.array([v]) for k, v in item.items()}


def candidate_edges(units: list[dict], cfg: DedupConfig, bands: int, rows: int, keep: str,
                    num_cpus: int, ctx: StageContext, shuffle_dir: Path, ray=None) -> dict:
    """Steps 2-3 on Ray Data (in this process when ``ray`` is None): map over units (key
    rows to partitioned files), then over partitions (buckets to edges); returns the
    distinct edges, collected on the driver."""
    n_docs = sum(u["stop"] - u["start"] for u in units)
    rows_per_doc = (bands if cfg.minhash else 0) + int(cfg.exact) + int(cfg.exact_url)
    num_parts = max(num_cpus, math.ceil(n_docs * rows_per_doc / cfg.rows_per_partition))
    shuffle_dir.mkdir(parents=True, exist_ok=True)
    map_kw = dict(cfg=cfg.model_dump(), bands=bands, rows=rows, keep=keep,
                  num_parts=num_parts, shuffle_dir=str(shuffle_dir))
    if ray is None:
        ds = (_map_units(_as_batch(u), **map_kw) for u in units)
    else:
        ds = ray.data.from_items(units, override_num_blocks=len(units))
        ds = ds.map_batches(_map_units, batch_size=1, batch_format="numpy",
                            fn_kwargs=map_kw).iter_batches(batch_format="numpy", batch_size=None)
    key_rows = 0
    prog = ctx.progress(total=n_docs, unit="docs", desc=f"{ctx.name}:keys")
    done = {u["unit"]: u["stop"] - u["start"] for u in units}
    for b in ds:
        key_rows += int(b["rows"].sum())
        prog.update(sum(done[int(u)] for u in b["unit"]))
    prog.close()
    unit_ids = [u["unit"] for u in units]
    reduce_kw = dict(shuffle_dir=str(shuffle_dir), units=unit_ids)
    if ray is None:
        eds = (_reduce_parts(_as_batch({"part": p}), **reduce_kw) for p in range(num_parts))
    else:
        eds = ray.data.from_items([{"part": p} for p in range(num_parts)],
                                  override_num_blocks=num_parts)
        eds = eds.map_batches(_reduce_parts, batch_size=1, batch_format="numpy",
                              fn_kwargs=reduce_kw).iter_batches(batch_format="numpy", batch_size=None)
    parts = {k: [] for k in ("u", "v", "kind")}
    for b in eds:
        for k in parts:
            parts[k].append(b[k])
    e = {k: (np.concatenate(v) if v else _edges_empty()[k]) for k, v in parts.items()}
    ctx.log(f"{key_rows:,} key rows from {n_docs:,} docs in {num_parts} LSH partitions -> "
            f"{len(e['u']):,} bucket edges")
    return _distinct_edges(e)


def _distinct_edges(e: dict) -> dict:
    """One row per (u, v, kind) with u < v, sorted: the same pair is found by several bands."""
    if len(e["u"]) == 0:
        return e
    u, v = np.minimum(e["u"], e["v"]), np.maximum(e["u"], e["v"])
    order = np.lexsort((v, u, e["kind"]))
    u, v, kind = u[order], v[order], e["kind"][order]
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1]) | (kind[1:] != kind[:-1])
    return {"u": u[keep], "v": v[keep], "kind": kind[keep]}


def node_scores(nodes: np.ndarray, units: list[dict], keep: str, shuffle_dir: Path) -> np.ndarray:
    """Keep-policy score of each cluster member, read from the units' score files."""
    score = np.zeros(len(nodes), dtype=np.float64)
    if keep == "first" or not len(nodes):
        return score
    uid = _unit_of(nodes, units)
    for i in np.unique(uid):
        m = uid == i
        s = np.load(shuffle_dir / f"score-{units[i]['unit']:06d}.npy", mmap_mode="r")
        score[m] = s[nodes[m] - units[i]["offset"]]
    return score


# ---------------------------------------------------------------------------------------
# 4. verification and clusters (driver; sized by duplicates)
# ---------------------------------------------------------------------------------------
def _unit_of(docs: np.ndarray, units: list[dict]) -> np.ndarray:
    offsets = np.array([u["offset"] for u in units], dtype=np.int64)
    return np.searchsorted(offsets, docs, side="right") - 1


def _unit_shingle_hashes(unit: dict, wanted: np.ndarray, cfg: dict) -> tuple[np.ndarray, list]:
    cfg = DedupConfig(**cfg)
    table = read_unit(unit, ["text", "lang"])
    local = wanted - unit["offset"]
    texts = table["text"].take(pa.array(local)).to_pylist()
    langs = (table["lang"].take(pa.array(local)).to_pylist() if "lang" in table.column_names
             else None)
    return wanted, [np.unique(h) for h in doc_hashes(texts, cfg.ngram, cfg.char_ngrams, langs,
                                                      cfg.shingle_hash)]


def verify_edges(e: dict, units: list[dict], cfg: DedupConfig, ray=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact shingle Jaccard of every near-duplicate candidate pair; returns (keep mask,
    jaccard). Shingle hashes of the docs in candidate pairs are computed by Ray tasks
    per unit (in this process when ``ray`` is None) and held on the driver while the
    pairs are checked."""
    near = e["kind"] == KIND_BAND
    jac = np.ones(len(e["u"]), dtype=np.float64)
    if not near.any():
        return np.ones(len(e["u"]), dtype=bool), jac
    need = np.unique(np.concatenate([e["u"][near], e["v"][near]]))
    uid = _unit_of(need, units)
    args = [(units[i], need[uid == i], cfg.model_dump()) for i in np.unique(uid)]
    if ray is None:
        got = [_unit_shingle_hashes(*a) for a in args]
    else:
        task = ray.remote(_unit_shingle_hashes)
        got = ray.get([task.remote(*a) for a in args])
    hashes: dict[int, np.ndarray] = {}
    for docs, hs in got:
        hashes.update(zip(docs.tolist(), hs))
    for i in np.flatnonzero(near):
        jac[i] = jaccard(hashes[int(e["u"][i])], hashes[int(e["v"][i])])
    return ~near | (jac >= cfg.threshold), jac


def clusters(e: dict, scores=None) -> dict:
    """Union-find over all edges, then one keeper per cluster (highest score, then first
    in input order). ``scores(nodes)`` gives the members' keep-policy scores (default:
    all equal, so the first document wins). Returns per member doc: root, keeper, size,
    exact-group root."""
    nodes, root = connected_components(e["u"], e["v"])
    score = scores(nodes) if scores is not None else np.zeros(len(nodes), dtype=np.float64)
    # keeper: sort by (root, -score, doc) and take the first row of every root
    order = np.lexsort((nodes, -score, root))
    first = np.ones(len(order), dtype=bool)
    first[1:] = root[order][1:] != root[order][:-1]
    roots_sorted, keepers = root[order][first], nodes[order][first]
    ri = np.searchsorted(roots_sorted, root)
    keeper = keepers[ri]
    sizes = np.bincount(ri, minlength=len(roots_sorted))
    # exact groups (same normalised text or URL): decides the removal reason
    ex = e["kind"] != KIND_BAND
    ex_nodes, ex_root = connected_components(e["u"][ex], e["v"][ex])
    exact_root = nodes.copy()
    if len(ex_nodes):
        exact_root[np.searchsorted(nodes, ex_nodes)] = ex_root
    return {"doc": nodes, "root": root, "keeper": keeper, "size": sizes[ri],
            "exact_root": exact_root, "exact_of_keeper": exact_root[np.searchsorted(nodes, keeper)]}


# ---------------------------------------------------------------------------------------
# 5. write: per unit, kept and removed rows (Ray tasks)
# ---------------------------------------------------------------------------------------
def _unit_ids(unit: dict, wanted: np.ndarray) -> tuple[np.ndarray, list]:
    table = read_unit(unit, ["id"])
    return wanted, table["id"].take(pa.array(wanted - unit["offset"])).to_pylist()


class _PartWriter:
    """``<out_dir>/<sub>/part-<unit>.parquet`` written batch by batch; rows are buffered
    into row groups of at most ``ROW_GROUP_ROWS`` rows / 32 MiB, so memory holds one
    row group, not the unit."""

    def __init__(self, out_dir: Path, sub: str, unit: int, max_bytes: int = 32 << 20):
        self.path = Path(out_dir) / sub / f"part-{unit:05d}.parquet"
        self.max_bytes, self.buf, self.writer = max_bytes, [], None

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buf.append(table)
            if (sum(t.num_rows for t in self.buf) >= ROW_GROUP_ROWS
                    or sum(t.nbytes for t in self.buf) >= self.max_bytes):
                self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        table = pa.concat_tables(self.buf)
        self.buf = []
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table, row_group_size=table.num_rows)

    def close(self, empty_schema: pa.Schema | None = None) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        elif empty_schema is not None:          # keep one (empty) part per unit
            write_table(empty_schema.empty_table(), self.path.parent.parent, self.path.parent.name,
                        int(self.path.stem.split("-")[1]))


def write_unit(unit: dict, info: dict, out_dir: str, sample_docs: np.ndarray,
               batch_rows: int = 1024, weights=None) -> dict:
    """Split one unit into kept/removed rows and write both parts, streaming the unit in
    batches; return counts and text snippets of the requested sample docs (for the
    cluster examples table)."""
    pf = pq.ParquetFile(unit["path"])
    columns = [c for c in pf.schema_arrow.names if c not in ADDED_COLUMNS]
    member = {int(d): j for j, d in enumerate(info["doc"].tolist())}
    samples = set(sample_docs.tolist())
    kept_w, rej_w = _PartWriter(out_dir, "data", unit["unit"]), _PartWriter(out_dir, "rejected", unit["unit"])
    counts = {"docs_in": 0, "docs_out": 0, "exact_removed": 0, "near_removed": 0, "empty_docs": 0}
    snippets, schema = {}, None
    for table, start in iter_unit(unit, columns, batch_rows):
        n = table.num_rows
        first = unit["offset"] + start
        ids = table["id"].to_pylist()
        cluster_id, size = list(ids), np.ones(n, dtype=np.int64)
        removed = np.zeros(n, dtype=bool)
        reason: list = [None] * n
        dup_of: list = [None] * n
        for li in range(n):
            j = member.get(first + li)
            if j is None:
                continue
            cluster_id[li], size[li] = info["keeper_id"][j], info["size"][j]
            if info["doc"][j] != info["keeper"][j]:
                removed[li] = True
                reason[li] = REASON_EXACT if info["exact"][j] else REASON_NEAR
                dup_of[li] = info["keeper_id"][j]
        table = table.append_column("cluster_id", pa.array(cluster_id, pa.string()))
        table = table.append_column("cluster_size", pa.array(size, pa.int64()))
        if weights is not None:
            table = table.append_column("sampling_weight", pa.array(weights(size), pa.int64()))
        schema = table.schema
        kept_w.add(table.filter(pa.array(~removed)))
        if removed.any():
            rsel = np.flatnonzero(removed)
            rej = table.filter(pa.array(removed))
            rej = rej.append_column("reason", pa.array([reason[i] for i in rsel], pa.string()))
            rej = rej.append_column("detail", pa.array([dup_of[i] for i in rsel], pa.string()))
            rej = rej.append_column("duplicate_of", pa.array([dup_of[i] for i in rsel], pa.string()))
            rej_w.add(rej)
        texts = table["text"].to_pylist()
        counts["docs_in"] += n
        counts["docs_out"] += int(n - removed.sum())
        counts["exact_removed"] += sum(r == REASON_EXACT for r in reason)
        counts["near_removed"] += sum(r == REASON_NEAR for r in reason)
        counts["empty_docs"] += sum(1 for t in texts if not t or not _HAS_WORD.search(t))
        for li in range(n):
            if first + li in samples:
                snippets[first + li] = (ids[li], (texts[li] or "")[:200])
    kept_w.close(empty_schema=schema)
    rej_w.close()
    return {"unit": unit["unit"], **counts, "snippets": snippets}


def _bounded_map(ray, fn, args_list: list[tuple], max_in_flight: int):
    """Run ray tasks with at most ``max_in_flight`` pending; results in input order
    (``ray`` None: one after the other in this process)."""
    if ray is None:
        return [fn(*args) for args in args_list]
    task = ray.remote(fn)
    refs, results = [], {}
    for i, args in enumerate(args_list):
        if len(refs) - len(results) >= max_in_flight:
            pending = [r for j, r in enumerate(refs) if j not in results]
            ready, _ = ray.wait(pending, num_returns=1)
            for j, r in enumerate(refs):
                if j not in results and r in ready:
                    results[j] = ray.get(r)
        refs.append(task.remote(*args))
    for j, r in enumerate(refs):
        if j not in results:
            results[j] = ray.get(r)
    return [results[j] for j in range(len(refs))]


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def run_dedup(cfg: DedupConfig, docs_dir: Path, ctx: StageContext) -> dict:
    """Deduplicate ``<docs_dir>/data/*.parquet`` into ``ctx.out_dir/{data,rejected}``."""
    from pipeline.dedup.report import report

    files = parquet_files(Path(docs_dir), "data")
    units = plan_units(files, cfg.unit_rows)
    n_docs = sum(u["stop"] - u["start"] for u in units)
    # small inputs: every step in this process, no Ray to start (same outputs)
    ray = None if in_process(n_docs) else ensure_ray(num_cpus=ctx.num_cpus)
    bands, rows = cfg.lsh_params()
    keep = cfg.keep
    if keep == "quality" and files:
        have = all(cfg.quality_column in pq.ParquetFile(f).schema_arrow.names for f in files)
        if not have:
            keep = "longest"
            ctx.note(f"- keep='quality' but column `{cfg.quality_column}` is missing from the "
                     "input: fell back to keep='longest'")
    s_curve = {s: p_candidate(s, bands, rows) for s in S_CURVE_POINTS}
    if cfg.minhash:
        ctx.log(f"MinHash LSH {bands} bands x {rows} rows ({cfg.num_perm} perms, {cfg.scheme}); "
                "P(candidate | Jaccard s): " + ", ".join(f"{s}: {p:.3f}" for s, p in s_curve.items()))

    # 2-3: keys -> buckets -> edges (Ray Data)
    t0 = time.perf_counter()
    shuffle_dir = Path(ctx.out_dir) / "_shuffle"
    e = (candidate_edges(units, cfg, bands, rows, keep, ctx.num_cpus, ctx, shuffle_dir, ray)
         if units and (cfg.exact or cfg.exact_url or cfg.minhash) else _edges_empty())
    t_lsh = time.perf_counter() - t0
    near = e["kind"] == KIND_BAND
    candidate_pairs, exact_pairs = int(near.sum()), int((~near).sum())

    # 4: verification, clusters, keepers
    jac = None
    if cfg.verify_jaccard and candidate_pairs:
        ok, jac = verify_edges(e, units, cfg, ray)
        jac = jac[near]
        e = {k: v[ok] for k, v in e.items()}
    verified_pairs = int((e["kind"] == KIND_BAND).sum())
    cl = clusters(e, lambda nodes: node_scores(nodes, units, keep, shuffle_dir))
    shutil.rmtree(shuffle_dir, ignore_errors=True)
    uid = _unit_of(cl["keeper"], units) if len(cl["doc"]) else np.empty(0, np.int64)
    keeper_ids: dict[int, str] = {}
    for docs, ids in _bounded_map(ray, _unit_ids,
                                  [(units[i], np.unique(cl["keeper"][uid == i])) for i in np.unique(uid)],
                                  2 * ctx.num_cpus):
        keeper_ids.update(zip(docs.tolist(), ids))

    # examples for the report: the largest clusters (members' snippets)
    roots, first_idx, sizes = np.unique(cl["root"], return_index=True, return_counts=True)
    top = roots[np.argsort(-sizes, kind="stable")[:5]]
    sample = np.sort(cl["doc"][np.isin(cl["root"], top)])[:200]

    t_cluster = time.perf_counter() - t0 - t_lsh

    # 5: write (Ray tasks, one per unit)
    member_unit = _unit_of(cl["doc"], units) if len(cl["doc"]) else np.empty(0, np.int64)
    sample_unit = _unit_of(sample, units) if len(sample) else np.empty(0, np.int64)
    args = []
    for i, unit in enumerate(units):
        m = member_unit == i
        info = {"doc": cl["doc"][m], "keeper": cl["keeper"][m], "size": cl["size"][m],
                "exact": cl["exact_root"][m] == cl["exact_of_keeper"][m],
                "keeper_id": [keeper_ids[int(k)] for k in cl["keeper"][m]]}
        args.append((unit, info, str(ctx.out_dir), sample[sample_unit == i], 1024,
                     cfg.sampling_weight if cfg.upsampling_weights is not None else None))
    prog = ctx.progress(total=n_docs, unit="docs", desc=f"{ctx.name}:write")
    results = _bounded_map(ray, write_unit, args, 2 * ctx.num_cpus)
    prog.update(n_docs)
    prog.close()
    if not units:   # empty input -> an empty but valid dataset
        from pipeline.engine import DOC_SCHEMA, empty_table
        write_table(empty_table(DOC_SCHEMA), ctx.out_dir, "data", 0)

    t_write = time.perf_counter() - t0 - t_lsh - t_cluster
    totals = {k: sum(r[k] for r in results) for k in
              ("docs_in", "docs_out", "exact_removed", "near_removed", "empty_docs")}
    snippets = {}
    for r in results:
        snippets.update(r["snippets"])
    cluster_sizes = sizes  # sizes of clusters with >= 2 members
    metrics = {
        **totals,
        "removed": totals["docs_in"] - totals["docs_out"],
        "duplicate_rate": (totals["docs_in"] - totals["docs_out"]) / max(1, totals["docs_in"]),
        "clusters": int(len(roots)),
        "largest_cluster": int(sizes.max()) if len(sizes) else 1,
        "exact_pairs": exact_pairs,
        "candidate_pairs": candidate_pairs,
        "verified_pairs": verified_pairs if cfg.verify_jaccard else candidate_pairs,
        "false_positive_pairs": candidate_pairs - verified_pairs if cfg.verify_jaccard else 0,
        "bands": bands, "rows": rows,
        "seconds_lsh": t_lsh, "seconds_clusters": t_cluster, "seconds_write": t_write,
        "docs_per_second": n_docs / max(1e-9, t_lsh + t_cluster + t_write),
        **{f"p_candidate_at_{s}": p for s, p in s_curve.items()},
    }
    ctx.removals(totals["docs_in"], {REASON_EXACT: totals["exact_removed"],
                                     REASON_NEAR: totals["near_removed"]})
    report(ctx, cfg, metrics, cluster_sizes, cl, top, snippets, jac, s_curve, keep)
    return metrics
