"""Fidelity to the reference: a mixed corpus built from this machine, and datatrove's decisions.

Used by ``tests/test_datatrove_oracle.py`` and ``bench/filters.py``. ``build_corpus`` makes
documents of six kinds from what an installed Python has (no download): prose (stdlib
docstrings), code comments, verse-like short lines (docstring sentences cut into lines of
3-8 words), short messages (one or two sentences), multilingual text (the translated
strings of the gettext catalogs installed packages ship, with their language), and the web
documents in ``../shared/data/docs`` when present. ``datatrove_decisions`` runs datatrove
0.10.1's own filters (a dev dependency) on the same documents.
"""

from __future__ import annotations

import ast
import glob
import json
import random
import re
import sysconfig
from pathlib import Path

HEURISTICS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
SHARED_DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "docs"


def _stdlib_texts(rng: random.Random, limit_files: int = 150) -> tuple[list[str], list[str]]:
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/**/*.py", recursive=True))
    rng.shuffle(files)
    docstrings, comments = [], []
    for path in files[:limit_files]:
        try:
            src = Path(path).read_text(encoding="utf-8", errors="replace")
            tree = ast.parse(src)
        except (SyntaxError, ValueError, RecursionError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d.split()) >= 5:
                    docstrings.append(d)
        block: list[str] = []
        for line in src.splitlines():
            s = line.strip()
            if s.startswith("#") and not s.startswith("#!"):
                block.append(s.lstrip("#").strip())
            elif block:
                if sum(len(b.split()) for b in block) >= 6:
                    comments.append("\n".join(block))
                block = []
    return docstrings, comments


def build_corpus(n_docs: int = 600, seed: int = 0) -> list[dict]:
    """[{"text", "kind", "lang"}] of ``n_docs`` documents, kinds interleaved."""
    from pipeline.crawl.localweb import _other_language_texts

    rng = random.Random(seed)
    docstrings, comments = _stdlib_texts(rng)
    sentences = [s for d in docstrings for s in re.split(r"(?<=[.!?])\s+", " ".join(d.split()))
                 if 3 <= len(s.split()) <= 40]
    foreign = {lang.split("_")[0]: v for lang, v in _other_language_texts().items()}
    web = []
    if SHARED_DOCS.is_dir():
        for p in sorted(SHARED_DOCS.glob("*.jsonl")):
            web += [json.loads(line)["text"] for line in p.read_text(encoding="utf-8").splitlines() if line]
    out: list[dict] = []
    kinds = ["prose", "comments", "verse", "messages", "multilingual"]
    while len(out) < n_docs:
        kind = kinds[len(out) % len(kinds)]
        if kind == "prose":
            k = rng.randint(1, 6)
            text = "\n\n".join(rng.choice(docstrings) for _ in range(k))
            out.append({"text": text, "kind": kind, "lang": "en"})
        elif kind == "comments":
            text = "\n".join(rng.choice(comments) for _ in range(rng.randint(1, 8)))
            out.append({"text": text, "kind": kind, "lang": "en"})
        elif kind == "verse":
            words = " ".join(rng.choice(sentences) for _ in range(rng.randint(4, 30))).split()
            lines, i = [], 0
            while i < len(words):
                j = i + rng.randint(3, 8)
                lines.append(" ".join(words[i:j]))
                i = j
            stanzas = ["\n".join(lines[a:a + 4]) for a in range(0, len(lines), 4)]
            out.append({"text": "\n\n".join(stanzas), "kind": kind, "lang": "en"})
        elif kind == "messages":
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.3:
                text = text.lower().rstrip(".") + rng.choice(["!!", " :)", "?", " lol", "..."])
            out.append({"text": text, "kind": kind, "lang": "en"})
        elif foreign:
            lang = rng.choice(sorted(foreign))
            pool = foreign[lang]
            sep = rng.choice(["\n", " ", "\n\n"])
            text = sep.join(rng.choice(pool) for _ in range(rng.randint(3, 40)))
            out.append({"text": text, "kind": kind, "lang": lang})
        if web and rng.random() < 0.05:
            out.append({"text": rng.choice(web), "kind": "web", "lang": "en"})
    return out[:n_docs]


def datatrove_filters(step: str, language: str = "en", **kwargs):
    """datatrove's filter for one of ``HEURISTICS`` (its defaults unless ``kwargs``)."""
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter,
                                            GopherQualityFilter, GopherRepetitionFilter)
    cls = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter,
           "c4": C4QualityFilter, "fineweb": FineWebQualityFilter}[step]
    return cls(language=language, **kwargs)


def datatrove_decisions(docs: list[dict], step: str, kwargs_for=None) -> list[bool | None]:
    """datatrove's keep (True) / remove (False) for each document; None where datatrove
    cannot run (its tokenizer for that language needs a package that is not installed)."""
    from datatrove.data import Document

    filters: dict = {}
    out: list[bool | None] = []
    for i, d in enumerate(docs):
        lang = d.get("lang") or "en"
        kw = kwargs_for(lang) if kwargs_for else {}
        key = (lang, json.dumps(kw, sort_keys=True, default=str))
        if key not in filters:
            filters[key] = datatrove_filters(step, lang, **kw)
        try:
            res = filters[key].filter(Document(text=d["text"], id=str(i)))
        except (ImportError, ValueError, ModuleNotFoundError, ZeroDivisionError):
            out.append(None)
            continue
        out.append(bool(res is True or (isinstance(res, tuple) and res[0]) or res is True))
    return out


def forgeflow_decisions(docs: list[dict], step: str, **cfg) -> list[bool]:
    """forgeflow's keep/remove for each document with one heuristic step."""
    import pyarrow as pa

    from pipeline.filters.config import FiltersConfig
    from pipeline.filters.registry import build
    from pipeline.filters.text import TextBatch

    step_cfg = FiltersConfig(steps=[{"type": step, **cfg}]).steps[0]
    flt = build(step_cfg)
    keep: list[bool] = []
    for a in range(0, len(docs), 1000):
        part = docs[a:a + 1000]
        table = pa.table({"lang": [d.get("lang") or "en" for d in part]})
        res = flt.apply(TextBatch(pa.array([d["text"] for d in part], pa.string()), table))
        keep += res.keep.tolist()
    return keep


def agreement(ours: list[bool], theirs: list[bool | None]) -> tuple[float, int, list[int]]:
    """(fraction agreeing, documents compared, indices that disagree), skipping None."""
    idx = [i for i, t in enumerate(theirs) if t is not None]
    bad = [i for i in idx if ours[i] != theirs[i]]
    return (1 - len(bad) / len(idx)) if idx else 1.0, len(idx), bad
