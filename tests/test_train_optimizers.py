"""train.optimizer.kind: bitsandbytes' 8-bit AdamW and GaLore-AdamW (galore-torch) behind
the same loop as torch's AdamW, on CPU: they train, their state goes into the checkpoint
and a killed run resumes onto exactly the weights of an unkilled one; plain AdamW keeps
the identity it had before the option existed."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.stage import StageContext
from pipeline.tokenize.reader import open_shards
from pipeline.train.config import GaLoreConfig, OptimizerConfig, TrainConfig
from pipeline.train.loop import load_checkpoint, latest_checkpoint, make_optimizer, train_worker
from pipeline.train.model import build_model
from pipeline.train.stage import loop_spec, read_log, resolve_mixture, run_pretrain
from test_train import shards, tiny, weights  # noqa: F401  (module fixture)

pytest.importorskip("bitsandbytes", reason="the optim extra (bitsandbytes) is not installed")
pytest.importorskip("galore_torch", reason="the optim extra (galore-torch) is not installed")

GALORE = OptimizerConfig(kind="galore_adamw", galore=GaLoreConfig(rank=8, update_proj_gap=3))


@pytest.mark.parametrize("opt", [OptimizerConfig(kind="adamw8bit"), GALORE], ids=["adamw8bit", "galore"])
def test_memory_efficient_optimizers_train_and_resume_exactly(shards, tmp_path, opt):  # noqa: F811
    cfg = tiny(optimizer=opt, steps=8, checkpoint_every=3, schedule={"max_lr": 1e-2, "warmup_steps": 1})
    full = StageContext.for_testing(tmp_path / "full", show_progress=False)
    run_pretrain(cfg, shards, full)
    log = read_log(full.out_dir)
    assert sum(r["loss"] for r in log[-3:]) < sum(r["loss"] for r in log[:3])
    state = load_checkpoint(latest_checkpoint(full.out_dir))["optimizer"]["state"]
    if opt.kind == "adamw8bit":     # the moments really are 8-bit
        assert any(t.dtype == torch.uint8 for t in _tensors(state))
    else:                           # the block matrices carry a GaLore projector
        assert any("projector" in s for s in state.values())
    killed = StageContext.for_testing(tmp_path / "killed", show_progress=False)
    spec = loop_spec(cfg, shards, killed.out_dir, name="killed",
                     mixture=resolve_mixture(cfg.mixture, open_shards(shards)),
                     schedule=cfg.schedule, steps=cfg.steps, show_progress=False)
    train_worker({**spec, "halt_after_step": 5})               # checkpoint at 3
    assert json.loads((killed.out_dir / "checkpoint" / "meta.json").read_text())["step"] == 3
    assert run_pretrain(cfg, shards, killed)["resumed_from_step"] == 3
    a, b = weights(full.out_dir), weights(killed.out_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_galore_projects_block_matrices_only():
    model = build_model(tiny().model, 512, seed=0)
    opt = make_optimizer(model, tiny(optimizer=GALORE), torch.device("cpu"))
    low = [g for g in opt.param_groups if "rank" in g]
    assert len(low) == 1 and low[0]["rank"] == 8 and low[0]["update_proj_gap"] == 3
    emb = model.get_input_embeddings().weight
    assert all(p.dim() == 2 and p is not emb for p in low[0]["params"])
    n_block_mats = sum(p.dim() == 2 for n, p in model.named_parameters() if ".layers." in n)
    assert len(low[0]["params"]) == n_block_mats


def test_optimizer_kind_in_identity_only_when_it_matters():
    plain = TrainConfig().identity_dict()["optimizer"]
    assert "kind" not in plain and "galore" not in plain      # identities from before `kind`
    eight = TrainConfig(optimizer={"kind": "adamw8bit"}).identity_dict()["optimizer"]
    assert eight["kind"] == "adamw8bit" and "galore" not in eight
    g1 = TrainConfig(optimizer=GALORE).identity_dict()["optimizer"]
    g2 = TrainConfig(optimizer={"kind": "galore_adamw", "galore": {"rank": 16}}).identity_dict()
    assert g1["galore"]["rank"] == 8 and g2["optimizer"]["galore"]["rank"] == 16


def test_sharded_training_refuses_whole_tensor_optimizers():
    model = build_model(tiny().model, 512, seed=0)
    with pytest.raises(ValueError, match="FSDP shards: use parallelism: ddp"):
        make_optimizer(model, tiny(optimizer={"kind": "adamw8bit"}), torch.device("cpu"), sharded=True)
