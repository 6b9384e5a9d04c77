"""Language ID and the trained fastText classifiers, on real labelled data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.engine import write_table
from pipeline.filters.classifier import (QualityClassifierConfig, QualityClassifierFilter,
                                         ToxicityClassifierConfig, ToxicityClassifierFilter)
from pipeline.filters.config import FiltersConfig
from pipeline.filters.langid import LangIdConfig, LangIdFilter
from pipeline.filters.stage import model_inputs, required_models, train_model
from pipeline.filters.text import TextBatch
from pipeline.stage import StageContext
from tests.conftest import shared_path


def _sentences():
    d = shared_path("langid", "sentences_head50")
    for f in sorted(d.glob("*.txt")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield f.stem, line.strip()


def test_embedded_langid_accuracy_on_16_languages():
    gold, texts = zip(*_sentences())
    f = LangIdFilter(LangIdConfig(keep_languages=None, min_score=0.0))
    res = f.apply(TextBatch(pa.array(list(texts))))
    acc = float(np.mean([p == g for p, g in zip(res.scores["lang"], gold)]))
    print(f"py3langid accuracy on {len(gold)} sentences, {len(set(gold))} languages: {acc:.3f}")
    assert len(set(gold)) == 16 and acc >= 0.95          # measured 0.985
    assert res.keep.all()
    assert ((res.scores["lang_score"] >= 0) & (res.scores["lang_score"] <= 1)).all()


def test_langid_keep_languages_and_min_score():
    texts = ["This is a perfectly ordinary English sentence about the weather today.",
             "Dies ist ein ganz gewöhnlicher deutscher Satz über das Wetter heute.",
             "", "1234 5678"]
    res = LangIdFilter(LangIdConfig(keep_languages=["en"], min_score=0.65)).apply(TextBatch(pa.array(texts)))
    assert res.keep.tolist() == [True, False, False, False]
    assert res.scores["lang"][:2] == ["en", "de"]
    assert res.detail[1] == "lang=de, need in en"


def test_fasttext_langid_trained_by_the_pipeline(tmp_path):
    d = shared_path("langid", "sentences_head50")
    paths = [str(p) for p in sorted(d.glob("*.txt"))]
    cfg = FiltersConfig(steps=[LangIdConfig(backend="fasttext", train_paths=paths, keep_languages=None,
                                            min_score=0.0)])
    assert required_models(cfg) == ["langid"]
    fields, files, sources = model_inputs("langid", cfg)
    assert [str(p) for p in files] == paths and sources == [] and "train" in fields
    ctx = StageContext.for_testing(tmp_path / "m", seed=3)
    m = train_model("langid", cfg, {}, ctx)
    print("fastText LID held-out:", m)
    assert (tmp_path / "m" / "model.bin").is_file()
    assert json.loads((tmp_path / "m" / "eval.json").read_text())["accuracy"] == m["accuracy"]
    assert m["accuracy"] >= 0.6          # 80 held-out sentences, 16 languages, 720 training lines
    f = LangIdFilter(cfg.steps[0], model_dir=tmp_path / "m")
    res = f.apply(TextBatch(pa.array(["Ceci est une phrase en français, écrite pour le test."])))
    assert res.scores["lang"] == ["fr"]


def test_toxicity_classifier_beats_majority_baseline(tmp_path):
    path = shared_path("toxicity", "jigsaw-sample.csv")
    cfg = FiltersConfig(steps=[ToxicityClassifierConfig(train_path=str(path))])
    assert required_models(cfg) == ["toxicity"]
    assert model_inputs("toxicity", cfg)[1] == [path]
    ctx = StageContext.for_testing(tmp_path / "tox", seed=1)
    m = train_model("toxicity", cfg, {}, ctx)
    print("toxicity held-out:", m)
    # 282 comments, 28 toxic; 57 held out (6 toxic). The majority classifier ("clean")
    # has F1(toxic) = 0 and balanced accuracy 0.5: both must be beaten.
    assert m["n_eval"] == 57 and m["n_eval_pos"] == 6
    assert m["f1"] > m["majority_f1"] == 0.0
    assert m["balanced_accuracy"] > 0.5
    f = ToxicityClassifierFilter(cfg.steps[0], model_dir=tmp_path / "tox")
    res = f.apply(TextBatch(pa.array(["thank you for the helpful edit to the article",
                                      "you are a stupid idiot, fuck off"])))
    s = res.scores["toxicity_score"]
    assert s[1] > s[0]


def _docs_dir(root: Path, name: str, texts: list[str]) -> Path:
    d = root / name
    write_table(pa.table({"id": [f"{name}-{i}" for i in range(len(texts))], "text": texts,
                          "source": [name] * len(texts), "url": [""] * len(texts)}), d)
    return d


def test_quality_classifier_reference_vs_corpus(tmp_path):
    shakespeare = shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    ref = [c for c in shakespeare.split("\n\n") if len(c) > 200][:300]
    web = [f"Buy cheap item {i} now! Free shipping, best price, click here to order. "
           f"Limited offer number {i % 17}, subscribe to our newsletter for deals." for i in range(300)]
    dirs = {"plays": _docs_dir(tmp_path, "plays", ref), "web": _docs_dir(tmp_path, "web", web)}
    step = QualityClassifierConfig(reference_sources=["plays"], keep_top_fraction=0.5)
    cfg = FiltersConfig(steps=[step])
    assert required_models(cfg) == ["quality"]
    assert model_inputs("quality", cfg)[2] == ["*"]
    ctx = StageContext.for_testing(tmp_path / "q", seed=0)
    m = train_model("quality", cfg, dirs, ctx)
    assert m["f1"] >= 0.9 and m["precision"] > 0 and m["recall"] > 0
    assert 0 < m["top_fraction_threshold"] < 1
    f = QualityClassifierFilter(step, model_dir=tmp_path / "q")
    res = f.apply(TextBatch(pa.array([ref[-1], web[-1]])))
    assert res.scores["quality_score"][0] > res.scores["quality_score"][1]
    assert res.keep.tolist() == [True, False]
    # a user-given model file: the top-fraction cut is read from the eval.json beside it
    user = QualityClassifierConfig(model_path=str(tmp_path / "q" / "model.bin"), keep_top_fraction=0.5)
    g = QualityClassifierFilter(user, model_dir=None)
    assert not g.needs_model() and g.threshold == m["top_fraction_threshold"]
    assert g.apply(TextBatch(pa.array([ref[-1], web[-1]]))).keep.tolist() == [True, False]


def test_quality_classifier_unknown_reference_source(tmp_path):
    cfg = FiltersConfig(steps=[QualityClassifierConfig(reference_sources=["nope"])])
    with pytest.raises(ValueError, match="unknown source"):
        train_model("quality", cfg, {"web": tmp_path}, StageContext.for_testing(tmp_path / "q"))
