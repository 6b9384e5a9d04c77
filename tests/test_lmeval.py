"""forgeflow's multiple-choice scorer and lm-evaluation-harness 0.4.13 agree on the same
local task (offline): per-choice log-likelihoods, acc, acc_norm and the 2-shot prompts."""

from __future__ import annotations

import pytest

from conftest import shared_path
from pipeline.evaluate.config import TaskConfig
from pipeline.evaluate.tasks import evaluate_items, load_task
from test_evaluate import model_dir
from test_train_data import make_shards

pytestmark = pytest.mark.slow


def test_forgeflow_scorer_agrees_with_lm_eval(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -c constraints.txt -e .[dev])")
    from transformers import AutoTokenizer

    from pipeline.evaluate.lmeval import run_lm_eval

    lines = shared_path("eval", "arc_easy", "ARC-Easy-Dev.jsonl").read_text().splitlines()
    dev, train = tmp_path / "dev.jsonl", tmp_path / "train.jsonl"
    dev.write_text("\n".join(lines[:16]) + "\n")
    train.write_text("\n".join(lines[100:140]) + "\n")
    shards = make_shards(tmp_path / "tok")
    art, model, eos, _ = model_dir(tmp_path / "m", shards, seq_len=256, seed=5)
    tok = AutoTokenizer.from_pretrained(str(art / "hf"))
    cfg = TaskConfig(name="arc_easy", path=str(dev), num_fewshot=2, fewshot_path=str(train))

    ours_items = load_task(cfg).items
    ours, rows = evaluate_items(model, tok, ours_items, eos, 256, prefix_eos=False)
    theirs = run_lm_eval(art / "hf", cfg, tmp_path / "lmeval", batch_size=4)

    assert theirs["items"] == ours["items"] == 16
    for row, lls in zip(rows, theirs["loglikelihoods"]):
        assert row["loglikelihoods"] == pytest.approx(lls, abs=2e-3)
    for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
        assert ours[k] == pytest.approx(theirs[k], abs=1e-9), k
    assert [it.context for it in ours_items] == theirs["contexts"]
