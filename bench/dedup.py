"""Dedup benchmark: forgeflow MinHash dedup vs datasketch one document at a time and
datatrove's MinHash pipeline.

    .venv/bin/python bench/dedup.py                 # real-text speed + quality, 10k/100k scaling
    .venv/bin/python bench/dedup.py --million       # also the 1M-document scaling point
    .venv/bin/python bench/dedup.py --docs 20000 --baseline-docs 5000 --scales 10000   # quick

1. Speed and quality on real prose: documents cut from the docstrings (then source) of
   the installed Python stdlib and site-packages, exact copies of normalised text
   dropped, then ~10% of them get planted duplicates (an exact copy, a copy with 2% of
   the words replaced, or a copy with a short boilerplate paragraph added).
   * forgeflow: ``run_dedup`` end to end (signatures -> LSH on Ray Data -> union-find ->
     writing kept/rejected Parquet), 2 CPUs, on a Ray started beforehand. Run three
     times: cold (the first Ray Data job of the session, whose workers import Ray Data),
     warm (as in a pipeline, where earlier stages used the same Ray: the headline), and
     warm with ``shingle_hash: sha1`` (datasketch's own hash function on both sides).
   * baseline: ``datasketch.MinHash`` (same shingles, seed, num_perm, scheme, default
     sha1 hash) + ``MinHashLSH`` (same bands x rows), one document at a time in one
     process: query, then insert if nothing matched (the usual streaming dedup loop).
   * datatrove 0.10.1's MinHash pipeline (the dev extra; FineWeb's reference): its four
     local stages (signatures, buckets, clusters, filter) with the same bands x rows.
   Recall/precision are counted per planted cluster: a cluster of k copies needs k-1
   removals. A removal is right when the removed doc is in the same planted group as
   its kept doc, or (natural duplicates of the base corpus) their exact 5-gram Jaccard
   is >= 0.5.
2. Scaling on synthetic documents (Zipf words, 10% planted near-duplicates): time and
   peak RSS of the driver and peak USS of the largest Ray worker at 10k, 100k (and 1M)
   docs, and which task each worker peak was seen under (keys = ``_map_units``,
   buckets = ``_reduce_parts``, ``write_unit``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))

import argparse
import os
import random
import re
import shutil
import sysconfig
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedup.config import DedupConfig                      # noqa: E402
from pipeline.dedup.minhash import doc_hashes, jaccard, normalize, shingles  # noqa: E402
from pipeline.dedup.stage import run_dedup                         # noqa: E402
from pipeline.engine import ensure_ray, write_table                # noqa: E402
from pipeline.stage import StageContext                            # noqa: E402

WORK = Path(os.environ.get("FORGEFLOW_BENCH_DIR", "/tmp/forgeflow_bench_dedup"))
BOILERPLATE = ("Copyright notice: this page is provided as is, without warranty of any kind. "
               "Subscribe to our newsletter to receive updates about new releases.")
_DOCSTRING = re.compile(r'"""(.*?)"""', re.S)


# ---------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------
def real_prose(n: int, min_words: int = 80, max_words: int = 400) -> list[str]:
    """``n`` distinct documents of real text from installed Python files: the docstrings
    of each file packed into documents, then source code cut into chunks.

    Installed packages contain natural near-duplicates (vendored copies, generated
    code); they would blur the planted ground truth, so the base corpus is cleaned first:
    forgeflow dedup with an aggressive 28 x 4 banding (P(candidate | Jaccard 0.5) = 0.83)
    and every document of every cluster found is dropped, not just the copies.
    """
    cache = WORK / f"prose-{n}.parquet"
    if cache.exists():
        return pq.read_table(cache)["text"].to_pylist()
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    files = [p for r in roots for p in sorted(r.rglob("*.py"))]
    docs, seen, want = [], set(), int(n * 1.6)

    def add(words: list[str]) -> None:
        text = " ".join(words)
        key = normalize(text)
        if len(words) >= min_words and key not in seen:
            seen.add(key)
            docs.append(text)

    for mode in ("docstrings", "source"):
        for p in files:
            if len(docs) >= want:
                break
            try:
                src = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            body = " ".join(_DOCSTRING.findall(src)) if mode == "docstrings" else _DOCSTRING.sub(" ", src)
            words = body.split()
            for i in range(0, len(words), max_words):
                add(words[i:i + max_words])
    raw_dir = write_corpus(docs, "raw")
    out = WORK / "out" / "clean"
    shutil.rmtree(out, ignore_errors=True)
    ctx = StageContext.for_testing(out, name="clean", num_cpus=2, show_progress=False)
    run_dedup(DedupConfig(bands=28, rows=4), raw_dir, ctx)
    kept = pq.read_table(out / "data", columns=["text", "cluster_size"]).to_pydict()
    clean = [t for t, c in zip(kept["text"], kept["cluster_size"]) if c == 1]
    print(f"(base corpus: {len(docs):,} raw docs, {len(clean):,} after dropping natural duplicate clusters)")
    if len(clean) < n:
        print(f"(only {len(clean):,} clean documents available; using all of them)")
    docs = clean[:n]
    pq.write_table(pa.table({"text": docs}), cache)
    return docs


def synthetic(n: int, seed: int = 0, words: int = 200) -> list[str]:
    """Zipf-distributed words over a 50k vocabulary (shifted per document): distinct
    documents; 200 words is about the median web page after extraction."""
    rng = np.random.default_rng(seed)
    # letters only: digits are normalised to 0 before shingling
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = np.array(["".join(letters[(i // 26 ** k) % 26] for k in range(4)) for i in range(50_000)])
    ids = np.minimum(rng.zipf(1.2, size=(n, words)), 50_000) - 1
    ids = (ids + rng.integers(0, 50_000, size=(n, 1))) % 50_000       # per-doc shift: distinct
    return [" ".join(vocab[row]) for row in ids]


def plant(base: list[str], frac: float, seed: int) -> tuple[list[str], list[int]]:
    """Append planted duplicates of a ``frac`` of the base docs; returns texts and each
    text's group (= index of its original). Copies are interleaved at random positions
    after nothing: order = base docs, then shuffled copies."""
    rng = random.Random(seed)
    texts, group = list(base), list(range(len(base)))
    for i in rng.sample(range(len(base)), int(frac * len(base))):
        for _ in range(rng.choice((1, 1, 2))):
            kind = rng.choice(("exact", "words", "boilerplate"))
            if kind == "exact":
                t = base[i]
            elif kind == "words":
                w = base[i].split()
                for j in rng.sample(range(len(w)), max(1, round(0.02 * len(w)))):
                    w[j] = f"zq{rng.randrange(10**6)}"
                t = " ".join(w)
            else:
                t = base[i] + "\n\n" + BOILERPLATE
            texts.append(t)
            group.append(i)
    order = list(range(len(base))) + rng.sample(range(len(base), len(texts)), len(texts) - len(base))
    return [texts[k] for k in order], [group[k] for k in order]


def write_corpus(texts: list[str], name: str, files: int = 4) -> Path:
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    step = -(-len(texts) // files)
    for f in range(files):
        chunk = texts[f * step:(f + 1) * step]
        ids = [f"doc{f * step + i:08d}" for i in range(len(chunk))]
        write_table(pa.table({"id": ids, "text": chunk, "source": ["bench"] * len(chunk),
                              "url": [""] * len(chunk)}), d, "data", f)
    return d


# ---------------------------------------------------------------------------------------
# memory sampling (driver and every process of the local Ray it started)
# ---------------------------------------------------------------------------------------
class PeakRSS:
    """Samples RSS (peak of the driver, of the largest Ray worker, of all together) and
    CPU seconds (user + system) of the driver and every process of the local Ray it
    started; CPU time is what a loaded shared machine cannot distort."""

    def __init__(self, interval: float = 0.2):
        import psutil
        self.proc, self.interval = psutil.Process(), interval
        self.driver = self.worker = self.total = 0
        self.worker_name = ""
        self.by_task: dict[str, int] = {}      # peak USS seen while a worker ran that task
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()

    def _procs(self):
        import psutil
        out = [(self.proc, True)]
        for c in self.proc.children(recursive=True):
            try:
                out.append((c, c.name().startswith("ray::") or "default_worker" in " ".join(c.cmdline()[:3])))
            except psutil.Error:
                pass
        return out

    def _sample(self, first: bool = False) -> None:
        import psutil
        total, worker, wname = 0, 0, ""
        for p, is_worker in self._procs():
            try:
                # workers: USS (private memory). RSS would also count the pages of Ray's
                # shared-memory object store that a worker has read, again in every worker.
                rss = p.memory_info().rss if p.pid == self.proc.pid else p.memory_full_info().uss
                t = p.cpu_times()
                cpu = t.user + t.system
            except psutil.Error:
                continue
            if first:
                self._cpu_start[p.pid] = cpu
            self._cpu_start.setdefault(p.pid, 0.0)
            self._cpu_last[p.pid] = cpu
            total += rss
            if p.pid == self.proc.pid:
                self.driver = max(self.driver, rss)
            elif is_worker:
                try:
                    name = p.name().removeprefix("ray::")
                except psutil.Error:
                    name = "?"
                self.by_task[name] = max(self.by_task.get(name, 0), rss)
                if rss > worker:
                    worker, wname = rss, name
        if worker > self.worker:
            self.worker, self.worker_name = worker, wname
        self.total = max(self.total, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu_last[p] - self._cpu_start.get(p, 0.0) for p in self._cpu_last)

    def __enter__(self):
        self._sample(first=True)
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def run_forgeflow(docs_dir: Path, cfg: DedupConfig, name: str):
    out = WORK / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    ctx = StageContext.for_testing(out, name=name, num_cpus=2, show_progress=False)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        metrics = run_dedup(cfg, docs_dir, ctx)
        dt = time.perf_counter() - t0
    rej = pq.read_table(out / "rejected").to_pylist() if (out / "rejected").exists() else []
    return dt, metrics, rej, mem


def run_datasketch(texts: list[str], cfg: DedupConfig) -> tuple[float, float, dict[int, int]]:
    """The per-document loop as usually written (string shingles of the normalised text,
    ``update_batch``, query then insert); returns time and {removed index: its match}."""
    from datasketch import MinHash, MinHashLSH

    bands, rows = cfg.lsh_params()
    t0, c0 = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    removed = {}
    for i, text in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme)
        m.update_batch([s.encode("utf-8") for s in shingles(normalize(text), cfg.ngram)])
        hit = lsh.query(m)
        if hit:
            removed[i] = min(hit)
        else:
            lsh.insert(i, m, check_duplication=False)
    return time.perf_counter() - t0, time.process_time() - c0, removed


def run_datatrove(texts: list[str], cfg: DedupConfig) -> tuple[float, dict[int, int]]:
    """datatrove 0.10.1's MinHash pipeline (signatures -> buckets -> clusters -> filter),
    one task, same bands x rows and n-gram size (its own English word tokenizer and 64-bit
    hashes); returns wall seconds and {removed index: the index its cluster kept} (the
    cluster stage saves cluster ids, so removals can be scored like the others')."""
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    bands, rows = cfg.lsh_params()
    # sha1, not datatrove's default xxhash: its xxhash64 passes str to xxhash, which 4.x
    # refuses ("Strings must be encoded before hashing"); the pinned stack has xxhash 4.1.0
    mc = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"), num_buckets=bands,
                       hashes_per_bucket=rows, n_grams=cfg.ngram)
    root = WORK / "datatrove"
    shutil.rmtree(root, ignore_errors=True)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    kept: list[str] = []

    def collect(data, rank: int = 0, world_size: int = 1):
        for d in data:
            kept.append(d.id)
            yield d

    t0 = time.perf_counter()
    for name, steps in [
        ("sig", [docs, MinhashDedupSignature(output_folder=str(root / "sigs"), config=mc)]),
        ("buckets", [MinhashDedupBuckets(input_folder=str(root / "sigs"),
                                         output_folder=str(root / "buckets"), config=mc)]),
        ("cluster", [MinhashDedupCluster(input_folder=str(root / "buckets"),
                                         output_folder=str(root / "remove"), config=mc,
                                         save_cluster_id=True)]),
        ("filter", [docs, MinhashDedupFilter(input_folder=str(root / "remove")), collect])]:
        tasks = bands if name == "buckets" else 1
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=1,
                              logging_dir=str(root / "logs" / name)).run()
    dt = time.perf_counter() - t0
    removed = set(range(len(texts))) - {int(i) for i in kept}
    members: dict[int, list[int]] = {}
    raw = (root / "remove" / "000000.clusters").read_bytes() \
        if (root / "remove" / "000000.clusters").exists() else b""
    pairs = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
    for doc, cluster in pairs.tolist():
        members.setdefault(cluster, []).append(doc)
    to_kept: dict[int, int] = {}
    for docs_ in members.values():
        keep = [d for d in docs_ if d not in removed]
        for d in docs_:
            if d in removed and keep:
                to_kept[d] = keep[0]
    return dt, to_kept


def quality(texts, group, removed: dict[int, int], ngram: int) -> dict:
    """Per planted cluster: a group of k copies needs k-1 removals (recall counts at most
    k-1 per group). A removal is wrong when the removed doc and its kept doc are from
    different groups and their exact 5-gram Jaccard is below 0.5."""
    sizes = np.bincount(group)
    expected = int((sizes - 1).sum())
    removed_per_group = np.bincount([group[d] for d in removed], minlength=len(sizes))
    found = int(np.minimum(removed_per_group, sizes - 1).sum())
    wrong, natural = 0, 0
    for d, k in removed.items():
        if group[d] != group[k]:
            h = doc_hashes([texts[d], texts[k]], ngram)
            if jaccard(np.unique(h[0]), np.unique(h[1])) >= 0.5:
                natural += 1
            else:
                wrong += 1
    return {"planted_removals": expected, "recall": found / max(1, expected),
            "precision": 1 - wrong / max(1, len(removed)), "natural_dups": natural,
            "false_removals": wrong}


def scale_point(n: int) -> dict:
    """One scaling point in this (fresh) process: synthetic corpus, run, time, peak RSS."""
    import subprocess

    cfg = DedupConfig()
    # the corpus is generated by another process, so the driver's RSS is the stage's own
    subprocess.run([sys.executable, __file__, "--make-synthetic", str(n)], check=True)
    docs_dir = WORK / f"syn{n}"
    ensure_ray(num_cpus=2)
    dt, m, _, mem = run_forgeflow(docs_dir, cfg, f"syn{n}")
    shutil.rmtree(docs_dir, ignore_errors=True)
    shutil.rmtree(WORK / "out" / f"syn{n}", ignore_errors=True)
    return {"docs": m["docs_in"], "seconds": dt, "removed": m["removed"],
            "driver": mem.driver, "worker": mem.worker, "total": mem.total, "cpu": mem.cpu_seconds,
            "by_task": mem.by_task,
            "lsh": m["seconds_lsh"], "write": m["seconds_write"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000, help="real-text base documents")
    ap.add_argument("--baseline-docs", type=int, default=0,
                    help="run the datasketch loop on the first N docs only (0 = all)")
    ap.add_argument("--scales", default="10000,100000", help="synthetic scaling points")
    ap.add_argument("--million", action="store_true", help="add the 1,000,000-doc point")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--no-datatrove", action="store_true", help="skip datatrove's MinHash pipeline")
    ap.add_argument("--scale-one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--make-synthetic", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_synthetic:
        n = args.make_synthetic
        write_corpus(plant(synthetic(n), 0.10, seed=1)[0], f"syn{n}", files=max(4, n // 50_000))
        return
    if args.scale_one:
        import json
        print(json.dumps(scale_point(args.scale_one)))
        return
    cfg = DedupConfig()
    bands, rows = cfg.lsh_params()
    ensure_ray(num_cpus=2)
    print(f"# dedup bench: {cfg.num_perm} perms = {bands} bands x {rows} rows, {cfg.ngram}-gram words, "
          f"scheme {cfg.scheme}, 2 CPUs")

    if not args.skip_real:
        t0 = time.perf_counter()
        base = real_prose(args.docs)
        texts, group = plant(base, 0.10, seed=0)
        print(f"\n## real prose: {len(base):,} base docs from installed .py files + "
              f"{len(texts) - len(base):,} planted copies = {len(texts):,} docs "
              f"(mean {np.mean([len(t.split()) for t in texts[:20000]]):.0f} words; built in "
              f"{time.perf_counter() - t0:.0f}s)")
        docs_dir = write_corpus(texts, "real")
        # 1st run: cold (the first Ray Data job of this Ray: workers import Ray Data etc.);
        # 2nd: warm, as the stage runs in a pipeline after other stages used the same Ray
        dt_cold, _, _, _ = run_forgeflow(docs_dir, cfg, "real")
        dt, m, rej, mem = run_forgeflow(docs_dir, cfg, "real")
        idx = {f"doc{i:08d}": i for i in range(len(texts))}
        ff_removed = {idx[r["id"]]: idx[r["duplicate_of"]] for r in rej}
        q = quality(texts, group, ff_removed, cfg.ngram)
        print(f"forgeflow : {len(texts):,} docs in {dt:.1f}s = {len(texts) / dt:,.0f} docs/s "
              f"(cold, first Ray Data job of the session: {dt_cold:.1f}s = {len(texts) / dt_cold:,.0f} docs/s); "
              f"removed {m['exact_removed']:,} exact + {m['near_removed']:,} near; "
              f"recall {q['recall']:.4f} precision {q['precision']:.4f} "
              f"(natural dups {q['natural_dups']}, false {q['false_removals']}); "
              f"peak RSS driver {mem.driver / 2**20:.0f} MiB, largest worker {mem.worker / 2**20:.0f} MiB; "
              f"{mem.cpu_seconds:.1f} CPU-s = {len(texts) / mem.cpu_seconds:,.0f} docs per CPU-s")
        cfg_sha1 = cfg.model_copy(update={"shingle_hash": "sha1"})
        dt_sha1, m_sha1, _, _ = run_forgeflow(docs_dir, cfg_sha1, "real_sha1")
        print(f"forgeflow shingle_hash=sha1 (datasketch's own hash function): {dt_sha1:.1f}s = "
              f"{len(texts) / dt_sha1:,.0f} docs/s; removed {m_sha1['removed']:,}")

        nb = args.baseline_docs or len(texts)
        if nb < len(texts):
            sub_dir = write_corpus(texts[:nb], "real_subset")
            dts, ms, _, mem = run_forgeflow(sub_dir, cfg, "real_subset")
            print(f"forgeflow : subset of {nb:,} docs in {dts:.1f}s = {nb / dts:,.0f} docs/s "
                  "(for the ratio against the baseline on the same subset)")
        else:
            dts = dt
        dtb, cpub, b_removed = run_datasketch(texts[:nb], cfg)
        t0 = time.perf_counter()
        for t in texts[:nb]:
            [s.encode("utf-8") for s in shingles(normalize(t), cfg.ngram)]
        dt_sh = time.perf_counter() - t0
        qb = quality(texts[:nb], group[:nb], b_removed, cfg.ngram) if nb == len(texts) else None
        print(f"datasketch: {nb:,} docs in {dtb:.1f}s = {nb / dtb:,.0f} docs/s "
              f"(of which {dt_sh:.1f}s building the shingles); {cpub:.1f} CPU-s = "
              f"{nb / cpub:,.0f} docs per CPU-s"
              + (f"; recall {qb['recall']:.4f} precision {qb['precision']:.4f}" if qb else
                 f" (subset of the first {nb:,} docs)"))
        print(f"RATIO forgeflow/datasketch documents/s = {dtb / dts:.1f}x wall-clock "
              f"(machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); "
              f"{cpub / mem.cpu_seconds:.1f}x per CPU-second, so {min(2, os.cpu_count()) * cpub / mem.cpu_seconds:.1f}x "
              "on 2 otherwise idle cores")
        if nb == len(texts):
            print(f"RATIO cold (first Ray Data job) = {dtb / dt_cold:.1f}x; with datasketch's sha1 "
                  f"shingle hash in both = {dtb / dt_sha1:.1f}x")
        if not args.no_datatrove:
            try:
                dtt, dt_removed = run_datatrove(texts[:nb], cfg)
            except ImportError as e:
                print(f"datatrove: not installed ({e}); pip install -e .[dev]")
            else:
                qd = quality(texts[:nb], group[:nb], dt_removed, cfg.ngram)
                print(f"datatrove MinHash (4 local stages, 1 task each): {nb:,} docs in {dtt:.1f}s = "
                      f"{nb / dtt:,.0f} docs/s; removed {len(dt_removed):,}; recall {qd['recall']:.4f} "
                      f"precision {qd['precision']:.4f} (natural dups {qd['natural_dups']}, "
                      f"false {qd['false_removals']})")
                print(f"RATIO forgeflow/datatrove documents/s = {dtt / dts:.1f}x wall-clock; "
                      f"datasketch/datatrove = {dtt / dtb:.1f}x")

    scales = [int(s) for s in args.scales.split(",") if s] + ([1_000_000] if args.million else [])
    if scales:
        import json
        import subprocess

        print("\n## scaling (synthetic 200-word docs, +10% planted copies; one fresh driver per point)")
        print(f"{'docs':>10} {'seconds':>8} {'docs/s':>8} {'us/doc':>7} {'CPU us/doc':>10} {'driver MiB':>11} "
              f"{'max worker USS':>15} {'all procs MiB':>14} {'removed':>8}")
        prev = None
        for n in scales:
            res = subprocess.run([sys.executable, __file__, "--scale-one", str(n)],
                                 capture_output=True, text=True)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not line:
                print(f"{n:>10,} failed: {res.stderr[-2000:]}")
                continue
            r = json.loads(line[-1])
            grow = (f"  (time x{r['seconds'] / prev['seconds']:.1f}, CPU x{r['cpu'] / prev['cpu']:.1f} "
                    f"for docs x{r['docs'] / prev['docs']:.0f})"
                    if prev else "")
            print(f"{r['docs']:>10,} {r['seconds']:>8.1f} {r['docs'] / r['seconds']:>8,.0f} "
                  f"{r['seconds'] / r['docs'] * 1e6:>7.0f} {r['cpu'] / r['docs'] * 1e6:>10.0f} "
                  f"{r['driver'] / 2**20:>11.0f} "
                  f"{r['worker'] / 2**20:>15.0f} {r['total'] / 2**20:>14.0f} {r['removed']:>8,}{grow}")
            tasks = {k.split("(")[-1].rstrip(")"): v for k, v in r["by_task"].items()}
            print(" " * 11 + "worker peak USS while running: " + ", ".join(
                f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(tasks.items(), key=lambda kv: -kv[1])[:5]))
            prev = r


if __name__ == "__main__":
    main()
