"""Language identification: columns ``lang`` and ``lang_score``; keep by language and score.

Backends:

* ``py3langid`` (default, embedded): langid.py's naive Bayes byte n-gram model over 97
  languages, shipped inside the ``py3langid`` package, so nothing is downloaded. With
  normalised probabilities it scores 98.5% on the 16-language sentence test set.
* ``fasttext``: a fastText model file in lid.176 / GlotLID format (labels
  ``__label__xx`` or ``__label__xxx_Scrp``), from ``model_path`` — or, with ``train_paths``
  and no ``model_path``, a character n-gram model the pipeline trains itself (stage
  ``train_model("langid", ...)``) from labelled files: ``<lang>.txt`` (one sample a line,
  the file name is the label) or JSONL with ``text``/``label``.

FineWeb keeps English with score >= 0.65 (Penedo et al. 2024); ``keep_languages: null``
keeps every language and only annotates. GlotLID labels like ``eng_Latn`` are matched
against ``keep_languages`` as given, and also by their part before ``_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters import fasttext_util as ft
from pipeline.filters.base import Filter, FilterConfig, Rule, decide
from pipeline.filters.text import TextBatch


class LangIdConfig(FilterConfig):
    type: Literal["langid"] = "langid"
    backend: Literal["py3langid", "fasttext"] = "py3langid"
    model_path: str | None = None          # fasttext: lid.176.bin / GlotLID model.bin
    train_paths: list[str] = []            # fasttext: labelled files to train from
    train: ft.FastTextParams = ft.FastTextParams(epoch=25, lr=0.5, dim=32, word_ngrams=1,
                                                 minn=1, maxn=4, max_chars=2_000)
    keep_languages: list[str] | None = ["en"]
    min_score: float = 0.65                # FineWeb's language score threshold
    max_chars: int = 5_000                 # characters of each document the model reads


class LangIdFilter(Filter):
    config_cls = LangIdConfig
    columns = {"lang": pa.string(), "lang_score": pa.float64()}
    canonical = True
    model_kind = "langid"

    def __init__(self, cfg: LangIdConfig, model_dir: Path | None = None):
        super().__init__(cfg, model_dir)
        self.keep_set = set(cfg.keep_languages) if cfg.keep_languages is not None else None
        if cfg.backend == "py3langid":
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
            self.ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            self.model = None
        else:
            path = Path(cfg.model_path) if cfg.model_path else (
                Path(model_dir) / "model.bin" if model_dir else None)
            if path is None:
                raise ValueError("langid backend 'fasttext' needs model_path, or train_paths "
                                 "and a trained model from the pipeline")
            self.model = ft.load(path)

    def needs_model(self) -> bool:
        return self.cfg.backend == "fasttext" and not self.cfg.model_path

    def score(self, batch: TextBatch) -> dict[str, list]:
        text = pc.utf8_slice_codeunits(batch.text, 0, self.cfg.max_chars)
        if self.model is None:
            langs, scores = [], []
            for t in text.to_pylist():
                if not t or not t.strip():
                    langs.append("und"); scores.append(0.0)
                    continue
                lang, s = self.ident.classify(t)
                langs.append(lang); scores.append(float(s))
        else:
            preds = ft.predict(self.model, ft.normalize(text, self.cfg.max_chars), k=1)
            langs = [next(iter(p), "und") for p in preds]
            scores = [next(iter(p.values()), 0.0) for p in preds]
        return {"lang": langs, "lang_score": np.array(scores, dtype=np.float64)}

    def _lang_ok(self, lang: str) -> bool:
        return lang in self.keep_set or lang.split("_")[0] in self.keep_set

    def keep(self, s):
        langs = np.array(s["lang"], dtype=object)
        rules = []
        if self.keep_set is not None:
            bad = np.array([not self._lang_ok(l) for l in langs], dtype=bool)
            rules.append(Rule("lang", langs, bad, "in", ",".join(sorted(self.keep_set))))
        score = s["lang_score"]
        rules.append(Rule("lang_score", score, score < self.cfg.min_score, ">=", self.cfg.min_score))
        return decide(rules, len(langs))


def read_lid_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """(texts, labels): ``<lang>.txt`` one sample a line (label = file stem), or JSONL with
    ``text``/``label`` fields."""
    import json
    texts, labels = [], []
    for p in map(Path, paths):
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        if p.suffix in (".jsonl", ".json"):
            for line in lines:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(r, dict) and r.get("text") and r.get("label"):
                    texts.append(r["text"]); labels.append(str(r["label"]))
        else:
            texts += [l.strip() for l in lines if l.strip()]
            labels += [p.stem] * sum(1 for l in lines if l.strip())
    return texts, labels


def train_langid(cfg: LangIdConfig, ctx) -> dict:
    """Train a fastText language-ID model from ``cfg.train_paths``; held-out accuracy and
    macro precision/recall/F1 go to ``eval.json`` and the returned metrics."""
    import json
    texts, labels = read_lid_files(cfg.train_paths)
    if len(set(labels)) < 2:
        raise ValueError(f"langid training needs at least 2 languages in {cfg.train_paths}")
    rng = ctx.rng("langid")
    idx = list(range(len(texts))); rng.shuffle(idx)
    k = max(1, len(idx) // 10)
    ev, tr = idx[:k], idx[k:]
    norm = ft.normalize(texts, cfg.train.max_chars)
    model = ft.train([norm[i] for i in tr], [labels[i] for i in tr], cfg.train, seed=ctx.seed,
                     work_dir=ctx.out_dir)
    preds = [next(iter(p), "und") for p in ft.predict(model, [norm[i] for i in ev], k=1)]
    gold = [labels[i] for i in ev]
    per = []
    for lang in sorted(set(gold)):
        tp = sum(p == g == lang for p, g in zip(preds, gold))
        fp = sum(p == lang != g for p, g in zip(preds, gold))
        fn = sum(g == lang != p for p, g in zip(preds, gold))
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        per.append((pr, rc, 2 * pr * rc / (pr + rc) if pr + rc else 0.0))
    metrics = {"accuracy": sum(p == g for p, g in zip(preds, gold)) / len(gold),
               "precision": float(np.mean([p[0] for p in per])),
               "recall": float(np.mean([p[1] for p in per])),
               "f1": float(np.mean([p[2] for p in per])),
               "n_train": len(tr), "n_eval": len(ev), "n_languages": len(set(labels))}
    model.save_model(str(ctx.out_dir / "model.bin"))
    (ctx.out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    return metrics
