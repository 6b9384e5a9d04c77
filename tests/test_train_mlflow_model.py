"""The final HF export is an MLflow model (transformers flavour, with its tokenizer) on
the stage's run, registered under ``train.register_as``; it loads back as a
text-generation pipeline with the trained weights — offline, against a SQLite store."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.stage import StageContext
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.stage import run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def test_final_model_logged_registered_and_loadable(shards, tmp_path):
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from pipeline.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "model-test",
                      artifact_root=tmp_path / "artifacts")
    parent = tracker.start_parent("test", {}, {})
    run = tracker.start_stage(parent, "pretrain", "pretrain", "id")
    ctx = StageContext.for_testing(tmp_path / "pretrain", name="pretrain", tracker=run,
                                   show_progress=False)
    cfg = TrainConfig(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=64),
                      steps=2, batch_size=2, seq_len=32, num_workers=0, eval_every=0,
                      checkpoint_every=0, val_tokens_per_source=64,
                      schedule=ScheduleConfig(max_lr=1e-3, warmup_steps=0),
                      register_as="forgeflow-tiny")
    m = run_pretrain(cfg, shards, ctx)
    assert m["registered_version"] == 1

    client = tracker.client
    versions = client.search_model_versions("name='forgeflow-tiny'")
    assert [v.run_id for v in versions] == [run.run_id]      # lineage: the stage's run
    with _use_tracking_uri(client.tracking_uri):
        pipe = mlflow.transformers.load_model("models:/forgeflow-tiny/1")
    assert type(pipe).__name__ == "TextGenerationPipeline"
    trained = load_file(str(ctx.out_dir / "hf" / "model.safetensors"))
    for k, v in pipe.model.state_dict().items():
        if k in trained:
            assert torch.equal(v, trained[k]), k
    from transformers import AutoTokenizer

    text = "Now is the winter of our discontent"
    assert pipe.tokenizer(text).input_ids == AutoTokenizer.from_pretrained(
        str(ctx.out_dir / "hf"))(text).input_ids
    assert pipe.tokenizer.decode(pipe.tokenizer(text).input_ids) == text
