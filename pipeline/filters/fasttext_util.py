"""fastText helpers shared by the trained classifiers (language ID, quality, toxicity).

* ``normalize``: the text preprocessing used for training and prediction alike
  (lowercase, punctuation split off, whitespace collapsed, truncated), done on a whole
  Arrow batch with C++ kernels.
* ``predict``: label probabilities for a list of texts. fasttext-wheel 0.9.2's
  ``model.predict`` breaks on numpy 2 (``np.array(copy=False)``) and ``multilinePredict``
  returns wrong probability arrays there (the first label's probability repeated), so
  this calls the per-line C++ binding ``model.f.predict`` (~5 µs a call).
* ``train``: supervised training from (text, label) pairs through a temporary file.
* ``binary_metrics``: precision/recall/F1 of the positive class, balanced accuracy, and the
  majority-class baseline, for held-out evaluation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.specbase import Model


class FastTextParams(Model):
    """fastText training hyper-parameters. DCLM's quality model is a bigram model
    (``word_ngrams: 2``); language ID models use character n-grams (``minn``/``maxn``)."""

    epoch: int = 15
    lr: float = 0.2
    dim: int = 64
    word_ngrams: int = 2
    minn: int = 0
    maxn: int = 0
    min_count: int = 1
    loss: str = "softmax"
    bucket: int = 200_000
    max_chars: int = 20_000          # characters per document fed to the model


def normalize(texts, max_chars: int = 20_000) -> list[str]:
    """Lowercase, split punctuation from words, collapse whitespace (incl. newlines)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    arr = pc.utf8_slice_codeunits(arr.fill_null(""), 0, max_chars)
    arr = pc.utf8_lower(arr)
    arr = pc.replace_substring_regex(arr, r"([\p{P}\p{S}])", r" \1 ")
    arr = pc.replace_substring_regex(arr, r"\s+", " ")
    return pc.utf8_trim_whitespace(arr).to_pylist()


def load(path: Path):
    import fasttext
    fasttext.FastText.eprint = lambda *a, **k: None      # silence the load warning
    return fasttext.load_model(str(path))


def labels_of(model) -> list[str]:
    return [l.replace("__label__", "") for l in model.get_labels()]


def predict(model, texts: list[str], k: int = -1) -> list[dict[str, float]]:
    """Per text: {label: probability} (labels without the ``__label__`` prefix)."""
    predict_one = model.f.predict
    out = []
    for t in texts:
        pairs = predict_one(t.replace("\n", " ") + "\n", k, 0.0, "replace")
        out.append({l[9:]: min(float(p), 1.0) for p, l in pairs})
    return out


def prob_of(model, texts: list[str], label: str) -> np.ndarray:
    return np.array([d.get(label, 0.0) for d in predict(model, texts)], dtype=np.float64)


def train(texts: list[str], labels: list[str], params: FastTextParams, seed: int = 0,
          work_dir: Path | None = None):
    """Train a supervised fastText model on already-normalized texts."""
    import fasttext

    fd, tmp = tempfile.mkstemp(suffix=".txt", dir=work_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for t, l in zip(texts, labels):
                f.write(f"__label__{l} {t.replace(chr(10), ' ')}\n")
        return fasttext.train_supervised(
            input=tmp, epoch=params.epoch, lr=params.lr, dim=params.dim,
            wordNgrams=params.word_ngrams, minn=params.minn, maxn=params.maxn,
            minCount=params.min_count, loss=params.loss, bucket=params.bucket,
            thread=1, seed=seed, verbose=0)
    finally:
        os.unlink(tmp)


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Held-out metrics of the positive class at ``threshold`` plus the majority baseline."""
    y = np.asarray(y_true, dtype=bool)
    pred = np.asarray(prob) >= threshold
    tp = int((pred & y).sum()); fp = int((pred & ~y).sum()); fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    majority_pos = y.mean() >= 0.5 if len(y) else False
    # the majority classifier predicts one class for all: F1 of the positive class is 0
    # unless positives are the majority; its balanced accuracy is always 0.5
    maj_f1 = float(2 * y.mean() / (1 + y.mean())) if majority_pos else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / max(len(y), 1), "balanced_accuracy": (recall + tnr) / 2,
            "majority_accuracy": float(max(y.mean(), 1 - y.mean())) if len(y) else 0.0,
            "majority_f1": maj_f1, "majority_balanced_accuracy": 0.5,
            "n_eval": int(len(y)), "n_eval_pos": int(y.sum()), "threshold": threshold}
