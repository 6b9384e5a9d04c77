"""Evaluation: bits per byte against hand computations, rolling windows, forgetting
bookkeeping, and ARC-Easy / PIQA scoring on the real files in ../shared/data/eval."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from pipeline.evaluate.bpb import bits_per_byte, rolling_windows
from pipeline.evaluate.config import EvaluateConfig, TaskConfig
from pipeline.evaluate.stage import forgetting, run_evaluate
from pipeline.evaluate.tasks import (MCItem, evaluate_items, loglikelihoods, read_arc,
                                     read_piqa)
from pipeline.stage import StageContext
from pipeline.train.config import ModelConfig, PhaseConfig, ScheduleConfig, TrainConfig
from pipeline.train.model import build_model
from pipeline.train.stage import run_continual, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def model_dir(path, shards, seq_len=64, tie=True, seed=0):
    """An artifact dir with hf/ (a freshly initialised model + the shards' tokenizer)."""
    from pipeline.tokenize.tokenizer import load_tokenizer

    _, eos, vocab = load_tokenizer(shards / "tokenizer")
    m = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=seq_len,
                                tie_embeddings=tie), vocab, eos, seed=seed)
    hf = path / "hf"
    m.save_pretrained(str(hf))
    for f in (shards / "tokenizer").iterdir():
        shutil.copy2(f, hf / f.name)
    return path, m, eos, vocab


def test_rolling_windows_score_every_target_once():
    for n, L, S in [(1, 4, 4), (2, 4, 4), (10, 4, 4), (11, 4, 2), (50, 8, 3), (9, 8, 8)]:
        seen = []
        for i0, i1, a, b in rolling_windows(n, L, S):
            assert i1 - i0 <= L and i1 == b - 1 and i0 + 1 <= a < b <= n
            assert b - a <= S
            assert i0 == max(0, i1 - L)      # as much context as fits
            seen.extend(range(a, b))
        assert seen == list(range(1, n))
    with pytest.raises(ValueError):
        rolling_windows(10, 4, 5)


def test_bpb_of_a_uniform_model_is_log2_vocab_per_token(shards, tmp_path):
    """Zero output weights give uniform predictions: NLL = ln V per token, exactly."""
    from pipeline.tokenize.reader import open_shards

    _, m, eos, vocab = model_dir(tmp_path / "u", shards, tie=False)
    with torch.no_grad():
        m.get_output_embeddings().weight.zero_()
    val = open_shards(shards)["german"]["val"]
    r = bits_per_byte(m, val, eos, seq_len=16, max_tokens=None, batch_size=3)
    n_text = sum(len(val.document(i)) - 1 for i in range(len(val)))
    n_bytes = sum(val.document_bytes(i) for i in range(len(val)))
    assert r.documents == len(val) and r.tokens == n_text and r.bytes == n_bytes
    assert r.nll == pytest.approx(n_text * math.log(vocab), rel=1e-5)
    assert r.bpb == pytest.approx(n_text * math.log2(vocab) / n_bytes, rel=1e-5)


def test_bpb_matches_token_by_token_hand_computation(shards, tmp_path):
    from pipeline.tokenize.reader import open_shards

    _, m, eos, _ = model_dir(tmp_path / "m", shards, seq_len=512, seed=3)
    m.eval()
    val = open_shards(shards)["german"]["val"]
    docs = [val.document(i) for i in range(2)]          # the token cap keeps these two
    cap = len(docs[0]) + len(docs[1])

    def hand(L):  # every text token predicted from the (at most L) tokens before it
        nll = 0.0
        for d in docs:
            s = [eos] + [int(t) for t in d[:-1]]
            for j in range(1, len(s)):
                ctx = torch.tensor([s[max(0, j - L):j]])
                with torch.no_grad():
                    logp = F.log_softmax(m(input_ids=ctx).logits[0, -1].double(), -1)
                nll -= float(logp[s[j]])
        return nll

    n_bytes = val.document_bytes(0) + val.document_bytes(1)
    # stride 1 = maximal context for every token; L = 16 forces many windows per document
    r = bits_per_byte(m, val, eos, seq_len=16, stride=1, max_tokens=cap, batch_size=7)
    assert r.documents == 2 and r.bytes == n_bytes
    expected = hand(16)
    assert r.nll == pytest.approx(expected, rel=1e-4)
    assert r.bpb == pytest.approx(expected / (math.log(2) * n_bytes), rel=1e-4)
    # documents shorter than the window: one pass each, full context
    assert max(len(d) for d in docs) < 512
    r512 = bits_per_byte(m, val, eos, seq_len=512, max_tokens=cap, batch_size=2)
    assert r512.nll == pytest.approx(hand(512), rel=1e-4)
    # the token cap keeps whole documents and counts exactly their bytes
    capped = bits_per_byte(m, val, eos, seq_len=64, max_tokens=len(docs[0]) + 1)
    assert capped.documents == 1 and capped.bytes == val.document_bytes(0)


def test_loglikelihood_matches_hand_computation(shards, tmp_path):
    from transformers import AutoTokenizer

    path, m, eos, _ = model_dir(tmp_path / "m", shards, seed=1)
    tok = AutoTokenizer.from_pretrained(str(path / "hf"))
    context, cont = "Question: Which is hot?\nAnswer:", " the sun"
    got = loglikelihoods(m, tok, [(context, cont), ("Question: x\nAnswer:", " no")], eos, 64)
    c = tok.encode(context, add_special_tokens=False)
    k = tok.encode(context + cont, add_special_tokens=False)[len(c):]
    seq = torch.tensor([[eos] + c + k])
    with torch.no_grad():
        logp = F.log_softmax(m(input_ids=seq[:, :-1]).logits[0].double(), -1)
    want = sum(float(logp[len(c) + i, t]) for i, t in enumerate(k))
    assert got[0] == pytest.approx(want, rel=1e-4)
    # acc / acc_norm bookkeeping on a hand-made item
    items = [MCItem("q", context, ["the sun", "ice cubes from the freezer"], 0)]
    summary, rows = evaluate_items(m, tok, items, eos, 64)
    lls = loglikelihoods(m, tok, [(context, ch) for ch in items[0].continuations], eos, 64)
    assert rows[0]["pred"] == int(np.argmax(lls))
    # lm-eval divides by len(choice) without the target delimiter: 7 and 26 characters
    assert rows[0]["pred_norm"] == int(np.argmax([lls[0] / 7, lls[1] / 26]))
    assert summary["acc"] == float(rows[0]["pred"] == 0)


def test_readers_count_and_name_bad_records(tmp_path):
    arc = tmp_path / "arc.jsonl"
    good = {"id": "g", "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"},
                                                             {"text": "b", "label": "B"}]},
            "answerKey": "B"}
    arc.write_text("\n".join([json.dumps(good), "{not json",
                              json.dumps({"id": "x", "question": {"stem": "Q"}}),
                              json.dumps({**good, "answerKey": "E"}), json.dumps(good)]) + "\n")
    data = read_arc(arc)
    assert len(data.items) == 2 and data.items[0].gold == 1
    assert data.items[0].choices == ["a", "b"] and data.items[0].continuations == [" a", " b"]
    assert len(data.bad) == 3
    assert data.bad[0].startswith(f"{arc}:2:") and "JSON" in data.bad[0]
    assert data.bad[1].startswith(f"{arc}:3:") and "missing field" in data.bad[1]
    assert data.bad[2].startswith(f"{arc}:4:") and "'E'" in data.bad[2]

    piqa, labels = tmp_path / "p.jsonl", tmp_path / "p.lst"
    rec = {"goal": "g", "sol1": "s1", "sol2": "s2"}
    piqa.write_text("\n".join(json.dumps(r) for r in [rec, rec, {"goal": "g"}, rec]) + "\n")
    labels.write_text("1\n2\n0\n")
    data = read_piqa(piqa, labels)
    assert [it.gold for it in data.items] == [1]
    assert len(data.bad) == 3
    assert f"{labels}:2:" in data.bad[0] and f"{piqa}:3:" in data.bad[1]
    assert f"{piqa}:4: no label" in data.bad[2]


def test_real_task_files_parse_cleanly():
    arc = read_arc(shared_path("eval", "arc_easy", "ARC-Easy-Dev.jsonl"))
    assert len(arc.items) == 570 and not arc.bad
    piqa = read_piqa(shared_path("eval", "piqa", "dev.jsonl"),
                     shared_path("eval", "piqa", "dev-labels.lst"))
    assert len(piqa.items) == 1838 and not piqa.bad
    assert all(len(it.choices) == 2 for it in piqa.items)


def test_forgetting_arithmetic():
    out = forgetting({"pretrain": {"web": 2.0, "de": 3.0},
                      "continual.de": {"web": 2.3, "de": 2.0},
                      "continual.more": {"web": 2.1, "de": 1.9}})
    assert out["delta_bpb.continual.de.web"] == pytest.approx(0.3)
    assert out["delta_bpb.continual.de.de"] == pytest.approx(-1.0)
    assert out["delta_bpb.continual.more.web"] == pytest.approx(-0.2)
    assert out["forgetting.web"] == pytest.approx(0.1)      # 2.1 vs best earlier 2.0
    assert out["forgetting.de"] == pytest.approx(-0.1)
    assert forgetting({"only": {"web": 1.0}}) == {}


def test_run_evaluate_end_to_end(shards, tmp_path):
    small = dict(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                 batch_size=4, seq_len=32, num_workers=0, eval_every=0, checkpoint_every=0,
                 val_tokens_per_source=128, mixture={"shakespeare": 1, "web": 1},
                 schedule=ScheduleConfig(max_lr=3e-3, warmup_steps=1))
    cfg = TrainConfig(steps=8, **small)
    pre = StageContext.for_testing(tmp_path / "pre", show_progress=False)
    run_pretrain(cfg, shards, pre)
    phase = PhaseConfig(name="german", steps=8, mixture={"german": 1}, replay=0.05)
    cont = StageContext.for_testing(tmp_path / "cont", show_progress=False)
    run_continual(phase, cfg, shards, pre.out_dir, cont, {"shakespeare": 1, "web": 1})

    ecfg = EvaluateConfig(max_tokens_per_source=2000, tasks=[
        TaskConfig(name="arc_easy", path=str(shared_path("eval", "arc_easy", "ARC-Easy-Dev.jsonl")),
                   limit=12),
        TaskConfig(name="piqa", path=str(shared_path("eval", "piqa", "dev.jsonl")),
                   labels_path=str(shared_path("eval", "piqa", "dev-labels.lst")), limit=10)])
    ctx = StageContext.for_testing(tmp_path / "eval", show_progress=False)
    m = run_evaluate(ecfg, {"pretrain": pre.out_dir, "continual.german": cont.out_dir},
                     shards, ctx)

    for label in ("pretrain", "continual.german"):
        for src in ("shakespeare", "web", "german"):
            assert 0.5 < m[f"bpb.{label}.{src}"] < 20
    for src in ("shakespeare", "web", "german"):
        assert m[f"delta_bpb.continual.german.{src}"] == pytest.approx(
            m[f"bpb.continual.german.{src}"] - m[f"bpb.pretrain.{src}"])
        assert m[f"forgetting.{src}"] == pytest.approx(m[f"delta_bpb.continual.german.{src}"])
    assert m["items.arc_easy"] == 12 and m["items.piqa"] == 10
    assert m["bad_records.arc_easy"] == 0
    for label in ("pretrain", "continual.german"):
        for task, n in (("arc_easy", 12), ("piqa", 10)):
            rows = [json.loads(ln) for ln in
                    (ctx.out_dir / "tasks" / f"{label}.{task}.jsonl").read_text().splitlines()]
            assert len(rows) == n
            assert m[f"acc.{label}.{task}"] == pytest.approx(np.mean([r["correct"] for r in rows]))
            assert m[f"acc_norm.{label}.{task}"] == pytest.approx(
                np.mean([r["correct_norm"] for r in rows]))
            assert 0.0 <= m[f"acc.{label}.{task}"] <= 1.0
    details = json.loads((ctx.out_dir / "bpb.json").read_text())["details"]
    d = details["pretrain.web"]
    assert d["bpb"] == pytest.approx(d["nll_per_token"] * d["tokens"] / (math.log(2) * d["bytes"]))
    assert (ctx.out_dir / "plots" / "bpb.png").is_file()
    assert len(json.loads((ctx.out_dir / "tables" / "bpb.json").read_text())) == 6


def test_task_config_validation():
    with pytest.raises(Exception, match="labels_path"):
        TaskConfig(name="piqa", path="x.jsonl")
    with pytest.raises(Exception, match="give layout"):
        TaskConfig(name="mytask", path="x.jsonl")
    with pytest.raises(Exception, match="prompt, choices and label"):
        TaskConfig(name="mytask", layout="jsonl", path="x.jsonl", prompt="{q}")
    assert TaskConfig(name="hellaswag", path="x.jsonl").layout == "hellaswag"
