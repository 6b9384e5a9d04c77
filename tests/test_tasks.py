"""Multiple-choice tasks as lm-eval-harness 0.4 defines them: every layout parses a
hand-checked record into (query, choices, gold); acc_norm divides by the choice length
without the delimiter; standard errors; deterministic k-shot prompts; BPB across
tokenizers. Oracles are hand-derived strings and numbers, not the code under test."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch

from conftest import shared_path
from pipeline.evaluate.config import EvaluateConfig, TaskConfig
from pipeline.evaluate.stage import forgetting, run_evaluate
from pipeline.evaluate.tasks import (MCItem, encode_pair, hellaswag_preprocess, load_task,
                                     mean_stderr, score_items)
from pipeline.stage import StageContext
from pipeline.train.config import ModelConfig
from pipeline.train.model import build_model
from test_train_data import _docs, make_shards


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _one(tmp_path, layout, rec, labels=None, **kw):
    path = _write(tmp_path / f"{layout}.jsonl", [rec])
    lp = None
    if labels is not None:
        lp = tmp_path / f"{layout}.lst"
        lp.write_text(labels + "\n")
    data = load_task(TaskConfig(name="t", layout=layout, path=path,
                                labels_path=str(lp) if lp else None, **kw))
    assert not data.bad, data.bad
    (item,) = data.items
    return item


def test_every_layout_parses_a_hand_checked_record(tmp_path):
    arc = {"id": "Mercury_1", "question": {"stem": "Which is a metal?", "choices": [
        {"text": "wood", "label": "1"}, {"text": "iron", "label": "2"}]}, "answerKey": "2"}
    for layout in ("arc_easy", "arc_challenge"):
        it = _one(tmp_path, layout, arc)
        assert (it.query, it.choices, it.gold) == ("Question: Which is a metal?\nAnswer:",
                                                   ["wood", "iron"], 1)
    hf_arc = {"id": "x", "question": "Which is a metal?",
              "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}, "answerKey": "B"}
    it = _one(tmp_path, "arc_easy", hf_arc)
    assert (it.query, it.gold) == ("Question: Which is a metal?\nAnswer:", 1)

    obqa = {"id": "7-980", "question": {"stem": "The sun is responsible for", "choices": [
        {"text": "puppies learning new tricks", "label": "A"},
        {"text": "plants sprouting, blooming and wilting", "label": "D"}]}, "answerKey": "D"}
    it = _one(tmp_path, "openbookqa", obqa)
    assert (it.query, it.choices[1], it.gold) == ("The sun is responsible for",
                                                  "plants sprouting, blooming and wilting", 1)

    piqa = {"goal": "Keep bread fresh", "sol1": "Put it in a bag.", "sol2": "Wet it."}
    it = _one(tmp_path, "piqa", piqa, labels="0")
    assert (it.query, it.choices, it.gold) == ("Question: Keep bread fresh\nAnswer:",
                                               ["Put it in a bag.", "Wet it."], 0)

    siqa = {"context": "Tracy didn't go home that evening.",
            "question": "What does Tracy need to do before this?",
            "answerA": "make a new plan", "answerB": "Go home", "answerC": "Find a place"}
    it = _one(tmp_path, "siqa", siqa, labels="3")
    assert it.query == ("Q: Tracy didn't go home that evening. What does Tracy need to do "
                        "before this?\nA:")
    assert (it.choices, it.gold) == (["make a new plan", "Go home", "Find a place"], 2)

    hs = {"ind": 4, "activity_label": "Removing ice from car",
          "ctx_a": "Then, the man writes over the snow.", "ctx_b": "then",
          "endings": [", the man adds wax.", ", the man continues removing the snow."],
          "label": 1}
    it = _one(tmp_path, "hellaswag", hs)
    assert it.query == "Removing ice from car: Then, the man writes over the snow. Then"
    assert (it.choices, it.gold) == ([", the man adds wax.", ", the man continues removing the snow."], 1)
    wiki = {"activity_label": "Home and Garden",
            "ctx_a": "[header] How to clean a grill [title] Heat the grill.", "ctx_b": "",
            "endings": ["[step] Scrub it.", "Leave it."], "label": "0"}
    it = _one(tmp_path, "hellaswag", wiki)
    assert it.query == "Home and Garden: How to clean a grill. Heat the grill."
    assert it.choices == [" Scrub it.", "Leave it."]   # lm-eval strips before removing [step]
    assert hellaswag_preprocess(" a [title] b  [x]c ") == "a. b c"

    rec = {"q": {"text": "2+2?"}, "opts": ["3", "4"], "ans": "B", "n": 2, "keys": ["x", "y"]}
    base = dict(prompt="Q: {q.text}\nA:", choices="opts")
    it = _one(tmp_path, "jsonl", rec, label="ans", **base)
    assert (it.query, it.choices, it.gold) == ("Q: 2+2?\nA:", ["3", "4"], 1)
    assert _one(tmp_path, "jsonl", rec, label="n", label_offset=1, **base).gold == 1
    assert _one(tmp_path, "jsonl", {**rec, "ans": "y"}, label="ans", choice_labels="keys",
                **base).gold == 1
    it = _one(tmp_path, "jsonl", rec, label="n", label_offset=1, prompt="{q.text}",
              choices=["opts.1", "opts.0"])
    assert it.choices == ["4", "3"]


def test_bad_records_name_file_line_and_field(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"context": "c", "question": "q", "answerA": "a",
                                          "answerB": "b", "answerC": "c"}] * 3 + [{"context": "c"}])
    (tmp_path / "s.lst").write_text("1\n4\nx\n2\n")
    data = load_task(TaskConfig(name="siqa", path=path, labels_path=str(tmp_path / "s.lst")))
    assert len(data.items) == 1
    assert data.bad[0].startswith(f"{tmp_path / 's.lst'}:2:") and "1..3" in data.bad[0]
    assert data.bad[1].startswith(f"{tmp_path / 's.lst'}:3:")
    assert data.bad[2].startswith(f"{path}:4:") and "'question'" in data.bad[2]


def test_acc_norm_divides_by_the_choice_without_the_delimiter_and_stderr():
    # choices "a" (1 char) and "bbbb" (4): ll -2.0 and -6.0
    # acc: -2 > -6 -> 0. acc_norm (lm-eval): -2/1 = -2.0 < -6/4 = -1.5 -> 1.
    # The old length with the leading space (2 and 5) gave -1.0 > -1.2 -> 0.
    items = [MCItem("1", "Q", ["a", "bbbb"], 1), MCItem("2", "Q", ["a", "bbbb"], 0),
             MCItem("3", "Q", ["cc", "d"], 0), MCItem("4", "Q", ["cc", "d"], 0)]
    lls = [-2.0, -6.0, -2.0, -6.0, -1.0, -3.0, -1.0, -3.0]
    summary, rows = score_items(items, lls)
    assert [r["pred"] for r in rows] == [0, 0, 0, 0]
    assert [r["pred_norm"] for r in rows] == [1, 1, 0, 0]
    assert summary["acc"] == 0.75 and summary["acc_norm"] == 0.75
    # sample std of [0, 1, 1, 1] = 0.5; / sqrt(4)
    assert summary["acc_stderr"] == pytest.approx(0.25)
    assert mean_stderr([1.0, 0.0]) == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert items[0].continuations == [" a", " bbbb"]


def test_encode_pair_moves_trailing_space_into_the_continuation(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_shards(tmp_path / "tok") / "tokenizer"))
    c1, k1 = encode_pair(tok, "Answer: ", "yes")
    c2, k2 = encode_pair(tok, "Answer:", " yes")
    assert (c1, k1) == (c2, k2)
    assert c1 + k1 == tok.encode("Answer: yes", add_special_tokens=False)


def test_fewshot_prompts_are_deterministic_lm_eval_style(tmp_path):
    def rec(i):
        return {"id": f"q{i}", "goal": f"goal {i}", "sol1": f"left {i}", "sol2": f"right {i}"}

    ev = _write(tmp_path / "dev.jsonl", [rec(i) for i in range(3)])
    (tmp_path / "dev.lst").write_text("0\n1\n0\n")
    tr = _write(tmp_path / "train.jsonl", [rec(i) for i in range(10, 16)])
    (tmp_path / "train.lst").write_text("1\n0\n1\n0\n1\n0\n")
    cfg = dict(name="piqa", path=ev, labels_path=str(tmp_path / "dev.lst"), num_fewshot=2,
               fewshot_path=tr, fewshot_labels_path=str(tmp_path / "train.lst"))
    a = load_task(TaskConfig(**cfg))
    assert [it.context for it in a.items] == [it.context for it in load_task(TaskConfig(**cfg)).items]
    # the oracle: lm-eval's sampler, one Random(1234) sampling per item in order
    pool = list(range(10, 16))
    gold = {10 + k: v for k, v in enumerate([1, 0, 1, 0, 1, 0])}
    rnd = random.Random(1234)
    for it in a.items:
        shots = rnd.sample(pool, 2)
        want = "".join(f"Question: goal {j}\nAnswer: {'right' if gold[j] else 'left'} {j}\n\n"
                       for j in shots)
        assert it.context == want + it.query
    other = load_task(TaskConfig(**cfg, fewshot_seed=7))
    assert [it.context for it in other.items] != [it.context for it in a.items]
    # no few-shot split: the evaluated file minus the item itself
    same = load_task(TaskConfig(name="piqa", path=tr, labels_path=str(tmp_path / "train.lst"),
                                num_fewshot=3))
    for it in same.items:
        shots = it.context.split("\n\n")[:-1]
        assert len(shots) == 3 and not any(s.startswith(it.query) for s in shots)
    with pytest.raises(ValueError, match="num_fewshot=9"):
        load_task(TaskConfig(**{**cfg, "num_fewshot": 9}))


def test_real_arc_and_piqa_with_fewshot():
    arc = load_task(TaskConfig(name="arc_easy", num_fewshot=1, limit=5, path=str(
        shared_path("eval", "arc_easy", "ARC-Easy-Dev.jsonl"))))
    assert len(arc.items) == 5 and not arc.bad
    first = arc.items[0]
    assert first.query == ("Question: Which technology was developed most recently?\nAnswer:")
    assert first.choices[first.gold] == "cellular telephone"
    assert first.context.endswith("\n\n" + first.query) and first.context.count("Question:") == 2


def test_bpb_compares_models_with_different_tokenizers(tmp_path):
    """A uniform model over its own 300-token vocabulary scores ln(300) per token of the
    val text re-encoded with its tokenizer: BPB = n_tokens * log2(300) / bytes."""
    from tokenizers import Tokenizer

    from pipeline.tokenize.config import TokenizerConfig
    from pipeline.tokenize.reader import open_shards
    from pipeline.tokenize.tokenizer import load_tokenizer, save_hf, train_bpe

    shards = make_shards(tmp_path / "tok")
    tcfg = TokenizerConfig(vocab_size=300, min_frequency=2)
    save_hf(train_bpe((d for ds in _docs().values() for d in ds), tcfg), tmp_path / "tok2", tcfg)
    tok2, eos2, v2 = load_tokenizer(tmp_path / "tok2")
    assert v2 == 300
    m = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=512,
                                tie_embeddings=False), v2, eos2, seed=0)
    with torch.no_grad():
        m.get_output_embeddings().weight.zero_()
    art = tmp_path / "other"
    m.save_pretrained(str(art / "hf"))
    for f in (tmp_path / "tok2").iterdir():
        shutil.copy2(f, art / "hf" / f.name)

    ctx = StageContext.for_testing(tmp_path / "eval", show_progress=False)
    got = run_evaluate(EvaluateConfig(max_tokens_per_source=None, curves=False),
                       {"other": art}, shards, ctx)
    src_tok = Tokenizer.from_file(str(shards / "tokenizer" / "tokenizer.json"))
    _, eos1, _ = load_tokenizer(shards / "tokenizer")
    val = open_shards(shards)["german"]["val"]
    n_tok = n_bytes = 0
    for i in range(len(val)):
        text = src_tok.decode([int(t) for t in val.document(i)[:-1]], skip_special_tokens=False)
        assert len(text.encode("utf-8")) == val.document_bytes(i)   # the round trip is exact
        n_tok += len(tok2.encode(text).ids)
        n_bytes += val.document_bytes(i)
    assert got["bpb.other.german"] == pytest.approx(n_tok * math.log2(300) / n_bytes, rel=1e-5)
    details = json.loads((ctx.out_dir / "bpb.json").read_text())["details"]
    assert details["other.german"]["retokenized"] is True


def test_forgetting_follows_branches():
    bpb = {"pretrain": {"old": 2.0, "new": 3.0},
           "continual.a": {"old": 2.4, "new": 2.0},
           "continual.b": {"old": 2.2, "new": 2.5},       # branch from pretrain
           "continual.c": {"old": 2.6, "new": 1.8}}       # continues a
    parents = {"continual.a": "pretrain", "continual.b": "pretrain", "continual.c": "continual.a"}
    out = forgetting(bpb, parents)
    assert out["delta_bpb.continual.b.old"] == pytest.approx(0.2)       # vs pretrain, not a
    assert out["delta_bpb.continual.c.old"] == pytest.approx(0.2)       # vs a
    assert out["forgetting.continual.c.old"] == pytest.approx(0.6)      # vs best ancestor 2.0
    assert out["vs_pretrain.continual.c.new"] == pytest.approx(-1.2)    # adaptation
    assert out["forgetting.old"] == pytest.approx(0.6)                  # the last model
