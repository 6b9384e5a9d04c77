"""Trained fastText classifiers: DCLM-style quality and Jigsaw-style toxicity.

Both are binary fastText models the pipeline trains as their own stage (artifact dir with
``model.bin`` and ``eval.json``), evaluated on a held-out split (precision/recall/F1 of the
positive class, balanced accuracy, and the majority-class baseline).

* **quality** (Li et al. 2024, DCLM): positives are reference documents — sources of the
  corpus named in ``reference_sources`` and/or files in ``reference_paths`` (``.txt``: one
  document per blank-line-separated paragraph; ``.jsonl``: a ``text`` field; ``.parquet``:
  a ``text`` column) — negatives are sampled from the corpus being filtered, excluding the
  reference sources. DCLM uses a bigram model and keeps about the top 10%; here
  ``keep_top_fraction`` sets a threshold at that quantile of the scores of a corpus sample
  (computed at training time, stored in ``eval.json``), or ``min_score`` keeps by
  probability. Column ``quality_score`` = P(reference-like).
* **toxicity**: trained from a labelled CSV/JSONL/Parquet file (Jigsaw format by default:
  ``comment_text`` and a 0/1 ``toxic`` column; other label shapes are mapped with
  ``positive_labels`` / ``negative_labels``, e.g. classes 0/1/2 = hate/offensive/neither ->
  ``positive_labels: [0, 1]``). Positives are oversampled to balance the classes during
  training. Column ``toxicity_score`` = P(toxic); removed above ``max_score``.
  Labelled quality reference files use the same mapping (``reference_label_field``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.engine import parquet_files
from pipeline.filters import fasttext_util as ft
from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.text import TextBatch


# ---------------------------------------------------------------------------- reading
LabelValue = str | int | float | bool


def _rows(p: Path):
    """``(where, record)`` of a CSV, JSONL or Parquet file; a bad JSON line is reported
    and skipped (``record`` None)."""
    if p.suffix == ".parquet":
        n = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield f"{p} row {n}", row
    elif p.suffix in (".jsonl", ".json"):
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"skipping {p}:{i + 1}: bad JSON record ({e})", file=sys.stderr)
                row = None
            yield f"{p}:{i + 1}", row if isinstance(row, dict) else None
    else:
        csv.field_size_limit(1 << 30)
        with open(p, newline="", encoding="utf-8", errors="replace") as f:
            for i, row in enumerate(csv.DictReader(f)):
                yield f"{p} row {i + 1}", row


def read_text_files(paths: list[str], text_field: str = "text") -> list[str]:
    """Documents from .txt (blank-line separated), .jsonl, .csv and .parquet files."""
    docs: list[str] = []
    for p in map(Path, paths):
        if p.suffix in (".parquet", ".jsonl", ".json", ".csv"):
            for _, row in _rows(p):
                t = row.get(text_field) if row else None
                if isinstance(t, str) and t.strip():
                    docs.append(t)
        else:
            text = p.read_text(encoding="utf-8", errors="replace")
            docs += [d.strip() for d in text.split("\n\n") if d.strip()]
    return docs


def norm_label(value) -> str | None:
    """A label value as text, the same whether it came from CSV ("1", "1.0"), JSON (1,
    true) or the spec (1, "yes"): lower case, integral numbers without a fraction."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    v = str(value).strip().lower()
    try:
        f = float(v)
    except ValueError:
        return v or None
    return str(int(f)) if f.is_integer() else repr(f)


_DEFAULT_POS, _DEFAULT_NEG = {"1", "true", "yes", "toxic"}, {"0", "false", "no", "clean"}


def label_to_int(value: str, positive: set[str] | None, negative: set[str] | None) -> int | None:
    """1 / 0 for a normalised label value, None when the mapping has no place for it.

    Without ``positive``: 0/1, true/false, or a probability in [0, 1] (>= 0.5 is positive,
    as in Jigsaw's rater fractions); anything else has no place."""
    if positive is not None:
        if value in positive:
            return 1
        if negative is None or value in negative:
            return 0
        return None
    if value in _DEFAULT_POS:
        return 1
    if value in _DEFAULT_NEG:
        return 0
    try:
        f = float(value)
    except ValueError:
        return None
    return (1 if f >= 0.5 else 0) if 0.0 <= f <= 1.0 else None


def _values_found(counts: dict[str, int], limit: int = 20) -> str:
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    more = f", ... ({len(counts)} distinct)" if len(counts) > limit else ""
    return ", ".join(f"{v!r} x{n}" for v, n in top) + more


def read_labelled(path: str, text_field: str, label_field: str,
                  positive_labels: list[LabelValue] | None = None,
                  negative_labels: list[LabelValue] | None = None,
                  where: str = "labels") -> tuple[list[str], np.ndarray]:
    """(texts, 0/1 labels) from a CSV, JSONL or Parquet file.

    ``positive_labels`` names the label values of the positive class (the rest are
    negatives, or only ``negative_labels`` when given). Without it the file must hold
    0/1, true/false or probabilities. A value the mapping has no place for is an error
    that lists the values found and says which spec field maps them."""
    p = Path(path)
    pos = {norm_label(v) for v in positive_labels} if positive_labels is not None else None
    neg = {norm_label(v) for v in negative_labels} if negative_labels is not None else None
    texts, labels, counts = [], [], {}
    bad, unmapped = 0, {}
    for loc, r in _rows(p):
        t = r.get(text_field) if r else None
        v = norm_label(r.get(label_field)) if r else None
        if not isinstance(t, str) or v is None:
            bad += 1
            continue
        counts[v] = counts.get(v, 0) + 1
        y = label_to_int(v, pos, neg)
        if y is None:
            unmapped.setdefault(v, loc)
            continue
        texts.append(t)
        labels.append(y)
    if unmapped and pos is None:
        raise ValueError(
            f"{p}: label field '{label_field}' holds values that are not 0/1, true/false or a "
            f"probability (first at {next(iter(unmapped.values()))}); values found: "
            f"{_values_found(counts)}. Say which values are positive with "
            f"{where}.positive_labels (e.g. positive_labels: [0, 1]) and, if some values "
            f"should be left out, negative_labels")
    if pos is not None:
        missing = sorted(v for v in pos if v not in counts)
        if missing:
            raise ValueError(f"{p}: {where}.positive_labels {missing} match no record of label "
                             f"field '{label_field}'; values found: {_values_found(counts)}")
    if bad:
        print(f"{p}: skipped {bad} records without a text '{text_field}' or label '{label_field}'",
              file=sys.stderr)
    if unmapped:
        print(f"{p}: left out {sum(counts[v] for v in unmapped)} records whose label is in "
              f"neither positive_labels nor negative_labels: {sorted(unmapped)}", file=sys.stderr)
    return texts, np.array(labels, dtype=np.int64)


def sample_docs(docs_dirs: dict[str, Path], sources: list[str], n: int, rng) -> list[str]:
    """Up to ``n`` texts sampled uniformly (reservoir) from the given sources' datasets."""
    pool: list[str] = []
    seen = 0
    for src in sorted(sources):
        for f in parquet_files(docs_dirs[src]):
            for batch in pq.ParquetFile(f).iter_batches(columns=["text"], batch_size=4096):
                for t in batch.column(0).to_pylist():
                    if not t:
                        continue
                    seen += 1
                    if len(pool) < n:
                        pool.append(t)
                    else:
                        j = rng.randrange(seen)
                        if j < n:
                            pool[j] = t
    return pool


def split_holdout(n: int, frac: float, rng, labels: np.ndarray | None = None):
    """Shuffled (train, eval) index arrays; stratified by ``labels`` when given."""
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in (0, 1)]
    tr, ev = [], []
    for g in groups:
        g = list(g); rng.shuffle(g)
        k = max(1, int(round(len(g) * frac))) if len(g) > 1 else 0
        ev += g[:k]; tr += g[k:]
    return np.array(tr, dtype=np.int64), np.array(ev, dtype=np.int64)


def _fit_and_eval(texts, y, cfg, ctx, rng, pos_label: str, neg_label: str, oversample: bool):
    tr, ev = split_holdout(len(texts), cfg.holdout_fraction, rng, y)
    norm = ft.normalize(texts, cfg.train.max_chars)
    idx = list(tr)
    if oversample:
        pos, neg = [i for i in tr if y[i]], [i for i in tr if not y[i]]
        if pos and neg and len(pos) < len(neg):
            idx = neg + [pos[i % len(pos)] for i in range(len(neg))]
    rng.shuffle(idx)
    lab = [pos_label if y[i] else neg_label for i in idx]
    model = ft.train([norm[i] for i in idx], lab, cfg.train, seed=ctx.seed,
                     work_dir=ctx.out_dir)
    prob = ft.prob_of(model, [norm[i] for i in ev], pos_label)
    metrics = ft.binary_metrics(y[ev], prob, 0.5)
    metrics.update(n_train=len(tr), n_train_pos=int(y[tr].sum()))
    return model, metrics


# ---------------------------------------------------------------------------- quality
class QualityClassifierConfig(FilterConfig):
    type: Literal["quality_classifier"] = "quality_classifier"
    model_path: str | None = None                 # a trained fastText model; skips training
    reference_sources: list[str] = []             # corpus sources that are the positives
    reference_paths: list[str] = []               # files of positive documents
    reference_text_field: str = "text"
    # labelled reference files: only rows whose `reference_label_field` value is in
    # `positive_labels` are positives; rows in `negative_labels` join the negatives
    reference_label_field: str | None = None
    positive_labels: list[LabelValue] | None = None
    negative_labels: list[LabelValue] | None = None
    max_docs_per_class: int = 20_000
    holdout_fraction: float = Field(0.1, gt=0, lt=1)
    train: ft.FastTextParams = ft.FastTextParams()     # DCLM: bigram fastText
    keep_top_fraction: float | None = Field(0.1, gt=0, le=1)   # DCLM keeps ~top 10%
    min_score: float | None = None                # probability threshold (wins if set)
    threshold_sample: int = 10_000                # corpus docs scored for the top-fraction cut


class _FastTextClassifierFilter(Filter):
    """Shared by the classifier filters: load the fastText model (``model_path`` or the
    artifact the pipeline trained), find the positive label, score P(positive)."""

    canonical = True
    POS: str
    score_column: str
    missing_hint: str

    def __init__(self, cfg, model_dir: Path | None = None):
        super().__init__(cfg, model_dir)
        path = Path(cfg.model_path) if cfg.model_path else (
            Path(model_dir) / "model.bin" if model_dir else None)
        if path is None:
            raise ValueError(f"filter {self.name}: no model (set model_path or {self.missing_hint})")
        self.model_file = path
        self.model = ft.load(path)
        labels = ft.labels_of(self.model)
        self.pos = self.POS if self.POS in labels else labels[0]

    def needs_model(self) -> bool:
        return not self.cfg.model_path

    def score(self, batch: TextBatch):
        norm = ft.normalize(batch.text, self.cfg.train.max_chars)
        return {self.score_column: ft.prob_of(self.model, norm, self.pos)}


class QualityClassifierFilter(_FastTextClassifierFilter):
    config_cls = QualityClassifierConfig
    columns = {"quality_score": pa.float64()}
    model_kind = "quality"
    POS, NEG = "hq", "cc"
    score_column, missing_hint = "quality_score", "let the pipeline train it"

    def __init__(self, cfg: QualityClassifierConfig, model_dir: Path | None = None):
        super().__init__(cfg, model_dir)
        self.threshold = cfg.min_score
        if self.threshold is None and cfg.keep_top_fraction is not None:
            ev = self.model_file.parent / "eval.json"
            if not ev.is_file():
                raise ValueError(f"filter {self.name}: keep_top_fraction needs {ev} from training; "
                                 "with a user model_path set min_score instead")
            self.threshold = json.loads(ev.read_text())["top_fraction_threshold"]

    def keep(self, s):
        v = s["quality_score"]
        if self.threshold is None:
            return np.ones(len(v), bool), np.full(len(v), None, object)
        return decide([Rule("quality_score", v, v < self.threshold, ">=", round(self.threshold, 4))], len(v))

    @staticmethod
    def train_model(cfg: QualityClassifierConfig, docs_dirs: dict[str, Path], ctx) -> dict:
        rng = ctx.rng("quality")
        missing = [s for s in cfg.reference_sources if s not in docs_dirs]
        if missing:
            raise ValueError(f"quality_classifier.reference_sources: unknown source(s) {missing}; "
                             f"have {sorted(docs_dirs)}")
        pos = sample_docs(docs_dirs, cfg.reference_sources, cfg.max_docs_per_class, rng)
        ref_neg: list[str] = []
        if cfg.reference_label_field:
            for path in cfg.reference_paths:
                texts, y = read_labelled(path, cfg.reference_text_field, cfg.reference_label_field,
                                         cfg.positive_labels, cfg.negative_labels,
                                         where="quality_classifier")
                pos += [t for t, v in zip(texts, y) if v]
                ref_neg += [t for t, v in zip(texts, y) if not v]
        else:
            pos += read_text_files(cfg.reference_paths, cfg.reference_text_field)
        # negatives: the corpus this step filters (its `sources`, if scoped), minus the
        # reference, plus reference rows labelled negative
        neg_sources = [s for s in docs_dirs if s not in set(cfg.reference_sources)
                       and (cfg.sources is None or s in cfg.sources)]
        neg = sample_docs(docs_dirs, neg_sources, cfg.max_docs_per_class, rng)
        neg = (ref_neg + neg)[:max(cfg.max_docs_per_class, len(ref_neg))]
        if len(pos) < 2 or len(neg) < 2:
            raise ValueError(f"quality_classifier needs reference and corpus documents: "
                             f"{len(pos)} positives, {len(neg)} negatives (sources {neg_sources})")
        rng.shuffle(pos)
        pos = pos[:cfg.max_docs_per_class]
        texts = pos + neg
        y = np.array([1] * len(pos) + [0] * len(neg))
        model, metrics = _fit_and_eval(texts, y, cfg, ctx, rng, QualityClassifierFilter.POS,
                                       QualityClassifierFilter.NEG, oversample=True)
        model.save_model(str(ctx.out_dir / "model.bin"))
        if cfg.keep_top_fraction is not None:
            corpus = sample_docs(docs_dirs, sorted(docs_dirs), cfg.threshold_sample, ctx.rng("qcut"))
            scores = ft.prob_of(model, ft.normalize(corpus, cfg.train.max_chars), QualityClassifierFilter.POS)
            metrics["top_fraction_threshold"] = float(np.quantile(scores, 1 - cfg.keep_top_fraction))
            metrics["threshold_sample"] = len(corpus)
        (ctx.out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
        return metrics


# ---------------------------------------------------------------------------- toxicity
class ToxicityClassifierConfig(FilterConfig):
    type: Literal["toxicity_classifier"] = "toxicity_classifier"
    model_path: str | None = None
    train_path: str | None = None                  # labelled CSV/JSONL (Jigsaw format)
    text_field: str = "comment_text"
    label_field: str = "toxic"
    # which label values mean toxic (the rest are clean, or only `negative_labels`):
    # e.g. a hate/offensive/neither CSV with classes 0/1/2 -> positive_labels: [0, 1]
    positive_labels: list[LabelValue] | None = None
    negative_labels: list[LabelValue] | None = None
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    train: ft.FastTextParams = ft.FastTextParams(epoch=25, lr=0.5, dim=32, word_ngrams=2)
    max_score: float = 0.5


class ToxicityClassifierFilter(_FastTextClassifierFilter):
    config_cls = ToxicityClassifierConfig
    columns = {"toxicity_score": pa.float64()}
    model_kind = "toxicity"
    POS, NEG = "toxic", "clean"
    score_column, missing_hint = "toxicity_score", "set train_path"

    def keep(self, s):
        v = s["toxicity_score"]
        return decide([Rule("toxicity_score", v, v > self.cfg.max_score, "<=", self.cfg.max_score)], len(v))

    @staticmethod
    def train_model(cfg: ToxicityClassifierConfig, docs_dirs, ctx) -> dict:
        if not cfg.train_path:
            raise ValueError("toxicity_classifier needs train_path (labelled CSV/JSONL) or model_path")
        texts, y = read_labelled(cfg.train_path, cfg.text_field, cfg.label_field,
                                 cfg.positive_labels, cfg.negative_labels,
                                 where="toxicity_classifier")
        if y.sum() < 2 or (1 - y).sum() < 2:
            raise ValueError(f"{cfg.train_path}: need at least 2 examples of each class, "
                             f"have {int(y.sum())} toxic / {int((1 - y).sum())} clean")
        model, metrics = _fit_and_eval(texts, y, cfg, ctx, ctx.rng("toxicity"),
                                       ToxicityClassifierFilter.POS, ToxicityClassifierFilter.NEG,
                                       oversample=True)
        model.save_model(str(ctx.out_dir / "model.bin"))
        (ctx.out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
        return metrics
