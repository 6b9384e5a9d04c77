"""Benchmark: the heuristic filter families, batch-vectorised vs. document-by-document.

    .venv/bin/python bench/filters.py [--docs 20000] [--ray]

Corpus: >= 20,000 real-text documents built at run time from what this machine has —
docstrings (parsed with ``ast``) and source code of the Python standard library and the
installed packages, the packages' .rst/.md/.txt documentation, and Tiny Shakespeare if
``../shared/data/text/tinyshakespeare.txt`` exists — cut into documents whose lengths
follow a log-normal (median ~450 words, clipped to 100-4,000).

Both sides run the same four families in FineWeb's order (Gopher repetition, Gopher
quality, C4 with line cleaning, FineWeb) with the published defaults, on one core:

* forgeflow: ``FilterChain.process`` over Arrow batches of 1,000 documents (what each Ray
  worker runs).
* baseline: datatrove 0.10.1 itself (the dev extra), its four filters document by
  document, each on the text the previous one left (C4 rewrites it), as its pipeline runs.

It prints documents/s for both, their ratio, and how often the two agree on keep/remove
over the whole chain; then each rule's agreement with datatrove on a mixed corpus (prose,
code comments, verse-like lines, short messages, translated strings in other languages:
``pipeline/filters/fidelity.py``). ``--ray`` also times ``run_filter`` end to end on the
local Ray (2 CPUs: read, filter, write Parquet).
"""

from __future__ import annotations

import os
import sys


import argparse  # noqa: E402
import ast  # noqa: E402
import glob  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sysconfig
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.filters.chain import FilterChain  # noqa: E402
from pipeline.filters.config import FiltersConfig  # noqa: E402
from pipeline.filters import fidelity  # noqa: E402

SHAKESPEARE = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


# =============================================================================== corpus
def _docstrings(path: str) -> list[str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node)
            if d and len(d.split()) >= 8:
                out.append(d)
    return out


def build_corpus(n_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    py = sorted(p for r in roots for p in glob.glob(r + "/**/*.py", recursive=True))
    rng.shuffle(py)
    docs_files = sorted(p for ext in ("rst", "md", "txt")
                        for p in glob.glob(roots[1] + f"/**/*.{ext}", recursive=True))
    streams: dict[str, list[str]] = {"docstring": [], "code": [], "docs": [], "play": []}
    if SHAKESPEARE.is_file():
        streams["play"] = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for p in docs_files:
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        streams["docs"] += [b for b in text.split("\n\n") if b.strip()]
    # enough words for n_docs documents of ~600 words on average, without re-use
    need = n_docs * 650
    words = {k: sum(len(x.split()) for x in v) for k, v in streams.items()}

    def add(kind: str, pieces: list[str]) -> None:
        streams[kind] += pieces
        words[kind] += sum(len(x.split()) for x in pieces)

    for p in py:
        want_doc, want_code = words["docstring"] < need * 0.4, words["code"] < need * 0.3
        if not (want_doc or want_code):
            break
        if os.path.getsize(p) > 200_000:
            continue
        if want_doc:
            add("docstring", _docstrings(p))
        if want_code:
            add("code", [b for b in Path(p).read_text(encoding="utf-8", errors="replace")
                         .split("\n\n") if b.strip()])
    weights = {"docstring": 0.4, "code": 0.25, "docs": 0.2, "play": 0.15}
    kinds = [k for k in weights if streams[k]]
    pos = {k: 0 for k in kinds}
    docs = []
    for _ in range(n_docs):
        k = rng.choices(kinds, [weights[x] for x in kinds])[0]
        target = int(min(4000, max(100, rng.lognormvariate(math.log(450), 0.7))))
        parts, words = [], 0
        s = streams[k]
        while words < target:
            piece = s[pos[k] % len(s)]
            pos[k] += 1
            parts.append(piece)
            words += len(piece.split())
        docs.append("\n\n".join(parts))
    return docs


# =============================================================================== datatrove
def datatrove_chain():
    """datatrove 0.10.1's own filters, in FineWeb's order, with their defaults."""
    from pipeline.filters.fidelity import datatrove_filters
    return [datatrove_filters(step) for step in ("gopher_repetition", "gopher_quality", "c4", "fineweb")]


def baseline(filters, docs: list[str]) -> list[bool]:
    """datatrove's pipeline over documents: each filter in turn, C4 rewriting the text."""
    from datatrove.data import Document
    out = []
    for i, text in enumerate(docs):
        doc = Document(text=text, id=str(i))
        ok = bool(text.strip())
        for f in filters if ok else ():
            res = f.filter(doc)
            if not (res is True or (isinstance(res, tuple) and res[0])):
                ok = False
                break
        out.append(ok)
    return out


# =============================================================================== run
HEURISTICS = [{"type": "gopher_repetition"}, {"type": "gopher_quality"}, {"type": "c4"}, {"type": "fineweb"}]


def make_chain() -> FilterChain:
    return FilterChain(FiltersConfig(steps=HEURISTICS))


def forgeflow(chain: FilterChain, docs: list[str]) -> list[bool]:
    """What a Ray worker does with one batch: the whole chain, vectorised."""
    out = chain.process(pa.table({"text": pa.array(docs, pa.string())}))
    return [r is None for r in out.column("reason").to_pylist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--ray", action="store_true", help="also time run_filter on local Ray")
    ap.add_argument("--agree-docs", type=int, default=1000,
                    help="documents of the mixed corpus (pipeline/filters/fidelity.py) for per-rule agreement")
    args = ap.parse_args()

    t = time.perf_counter()
    docs = build_corpus(args.docs)
    words = np.array([len(d.split()) for d in docs])
    print(f"corpus: {len(docs):,} documents, {words.sum() / 1e6:.1f}M words, words/doc median "
          f"{int(np.median(words))} (p10 {int(np.percentile(words, 10))}, p90 {int(np.percentile(words, 90))}), "
          f"{sum(map(len, docs)) / 1e6:.0f} MB, built in {time.perf_counter() - t:.1f}s")

    # Interleave the two, 1,000 documents at a time, so that both see the same machine
    # load (this machine is shared); report CPU time (robust to other processes) and wall.
    chain = make_chain()
    dt = datatrove_chain()
    ff, bl = [], []
    wall = {"ff": 0.0, "bl": 0.0}
    cpu = {"ff": 0.0, "bl": 0.0}
    for i in range(0, len(docs), 1000):
        part = docs[i:i + 1000]
        w, c = time.perf_counter(), time.process_time()
        ff += forgeflow(chain, part)
        wall["ff"] += time.perf_counter() - w; cpu["ff"] += time.process_time() - c
        w, c = time.perf_counter(), time.process_time()
        bl += baseline(dt, part)
        wall["bl"] += time.perf_counter() - w; cpu["bl"] += time.process_time() - c

    agree = np.mean(np.array(ff) == np.array(bl))
    n = len(docs)
    print(f"{'':36s} {'docs/s (CPU time)':>18s} {'docs/s (wall)':>14s}  kept")
    print(f"{'forgeflow (Arrow batches, 1 core)':36s} {n / cpu['ff']:18.1f} {n / wall['ff']:14.1f}  {sum(ff):,}")
    print(f"{'datatrove 0.10.1 (per document)':36s} {n / cpu['bl']:18.1f} {n / wall['bl']:14.1f}  {sum(bl):,}")
    print(f"speed-up: {cpu['bl'] / cpu['ff']:.2f}x by CPU time, {wall['bl'] / wall['ff']:.2f}x by wall time; "
          f"chain keep/remove agreement {100 * agree:.2f}%")

    if args.agree_docs:
        mixed = fidelity.build_corpus(args.agree_docs, seed=1)
        kinds = sorted({d["kind"] for d in mixed})
        print(f"per-rule agreement with datatrove on {len(mixed):,} mixed documents ({', '.join(kinds)}; "
              f"languages {', '.join(sorted({d['lang'] for d in mixed}))}):")
        for step in fidelity.HEURISTICS:
            theirs = fidelity.datatrove_decisions(mixed, step)
            ours = fidelity.forgeflow_decisions(mixed, step)
            rate, compared, bad = fidelity.agreement(ours, theirs)
            print(f"  {step:18s} {100 * rate:6.2f}% of {compared:,} (datatrove removes "
                  f"{sum(t is False for t in theirs):,}; {len(bad)} differ)")

    if args.ray:
        import tempfile

        from pipeline.engine import ensure_ray, write_table
        from pipeline.filters.stage import run_filter
        from pipeline.stage import StageContext
        ensure_ray(num_cpus=2)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            for k in range(0, len(docs), 5000):
                part = docs[k:k + 5000]
                write_table(pa.table({"id": [str(k + i) for i in range(len(part))], "text": part,
                                      "source": ["bench"] * len(part), "url": [""] * len(part)}),
                            src, part=k // 5000)
            cfg = FiltersConfig(steps=HEURISTICS)
            t = time.perf_counter()
            m = run_filter(cfg, {"bench": src}, {}, StageContext.for_testing(Path(tmp) / "out",
                                                                         num_cpus=2, show_progress=False))
            t_ray = time.perf_counter() - t
            print(f"run_filter on Ray (2 CPUs, read+filter+write): {len(docs) / t_ray:8.1f} docs/s "
                  f"({t_ray:.1f}s, kept {m['docs_out']:,})")


if __name__ == "__main__":
    main()
