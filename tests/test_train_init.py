"""Continued pretraining from a pretrained Hugging Face model (``train.init``).

A small base model is built here with transformers alone (``from_config`` + a few plain
PyTorch steps on the test corpus, ``save_pretrained`` with its tokenizer), the way a
user's downloaded model would look, then continued through forgeflow. The proof that
the weights and the tokenizer really loaded: the continued run's held-out loss before
its first update equals the base model's loss computed independently, far below the
ln(vocab) of a fresh model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.stage import StageContext
from pipeline.tokenize.reader import open_shards
from pipeline.tokenize.tokenizer import tokenizer_files
from pipeline.train.config import InitConfig, ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.loop import latest_checkpoint, val_windows
from pipeline.train.model import resolve_init
from pipeline.train.stage import read_log, run_pretrain
from test_train_data import make_shards

CONTEXT = 32
VAL_BUDGET = 256


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def hf_base(family: str, vocab: int, eos: int):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if family == "llama":
        c = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=64, tie_word_embeddings=False,
                        eos_token_id=eos, bos_token_id=eos)
    else:
        c = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                       eos_token_id=eos, bos_token_id=eos)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(c, attn_implementation="eager")


def make_base(shards: Path, out: Path, family: str, steps: int = 40) -> Path:
    """A 'downloaded' base model: transformers from_config + plain PyTorch AdamW steps on
    the shards' training text, saved with save_pretrained and its tokenizer."""
    from pipeline.tokenize.tokenizer import load_tokenizer

    _, eos, vocab = load_tokenizer(shards / "tokenizer")
    model = hf_base(family, vocab, eos)
    train = open_shards(shards)["shakespeare"]["train"]
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = rng.integers(0, train.n_tokens - CONTEXT - 1, size=8)
        rows = torch.from_numpy(np.stack([train.window(int(s), CONTEXT + 1) for s in starts])
                                .astype(np.int64))
        logits = model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    for f in tokenizer_files(shards / "tokenizer"):
        shutil.copy2(f, out / f.name)
    return out


def reference_val_loss(hf_dir: Path, shards: Path, source: str) -> float:
    """The base model's mean NLL on the val windows forgeflow scores, computed here
    with transformers' own forward and a plain full-logit cross-entropy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    val = open_shards(shards)[source]["val"]
    nll = n = 0.0
    with torch.no_grad():
        for start, length in val_windows(val.n_tokens, CONTEXT, VAL_BUDGET):
            row = torch.from_numpy(val.window(start, length).astype(np.int64))[None]
            logits = model(input_ids=row[:, :-1]).logits
            nll += float(F.cross_entropy(logits[0], row[0, 1:], reduction="sum"))
            n += length - 1
    return nll / n


def cont_cfg(path: str, **kw) -> TrainConfig:
    base = dict(init=InitConfig(path=path), steps=3, batch_size=4, seq_len=CONTEXT,
                num_workers=0, eval_every=0, checkpoint_every=1, keep_last=2,
                val_tokens_per_source=VAL_BUDGET, mixture={"shakespeare": 1.0},
                schedule=ScheduleConfig(max_lr=1e-3, warmup_steps=0))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_continue_from_hf_starts_at_the_base_loss(shards, tmp_path, family):
    base = make_base(shards, tmp_path / "base", family)
    assert resolve_init(base).kind == "hf"
    ref = reference_val_loss(base, shards, "shakespeare")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    assert ref < math.log(vocab) - 0.5       # the base really learnt something

    ctx = StageContext.for_testing(tmp_path / "cont", show_progress=False)
    m = run_pretrain(cont_cfg(str(base)), shards, ctx)
    assert m["initial_val_loss.shakespeare"] == pytest.approx(ref, rel=1e-5)
    # the first training step starts near the base loss too, not at ln(V) ~ 6.2
    assert read_log(ctx.out_dir)[0]["loss"] < math.log(vocab) - 0.5

    # the continued model is the same architecture, and the tokenizer round-trips
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = AutoModelForCausalLM.from_pretrained(str(ctx.out_dir / "hf"))
    assert out.config.model_type == family
    assert out.config.to_dict()["vocab_size"] == vocab
    text = "Wherefore art thou, Romeo? Ich liebe dich. Ünïcödé ✓"
    t_base, t_out = AutoTokenizer.from_pretrained(str(base)), AutoTokenizer.from_pretrained(
        str(ctx.out_dir / "hf"))
    ids = t_base(text, add_special_tokens=False).input_ids
    assert t_out(text, add_special_tokens=False).input_ids == ids
    assert t_out.decode(ids) == text
    # only tokenizer files were copied next to the weights (the config is the model's)
    assert json.loads((ctx.out_dir / "hf" / "config.json").read_text())["model_type"] == family


def test_continue_from_artifact_and_checkpoint(shards, tmp_path):
    """A forgeflow artifact (its hf/) and a checkpoint both continue where they ended."""
    base = make_base(shards, tmp_path / "base", "llama", steps=20)
    first = StageContext.for_testing(tmp_path / "first", show_progress=False)
    m1 = run_pretrain(cont_cfg(str(base), steps=2, eval_every=0), shards, first)
    end_loss = m1["final_val_loss.shakespeare"]

    for init, kind in ((first.out_dir, "artifact"), (first.out_dir / "checkpoint", "checkpoint"),
                       (latest_checkpoint(first.out_dir), "checkpoint")):
        assert resolve_init(init).kind == kind
        ctx = StageContext.for_testing(tmp_path / f"from-{kind}-{Path(init).name}",
                                       show_progress=False)
        m = run_pretrain(cont_cfg(str(init), steps=1), shards, ctx)
        assert m["initial_val_loss.shakespeare"] == pytest.approx(end_loss, rel=1e-5), init

    # load_optimizer continues the AdamW moments of the artifact's last checkpoint
    ctx = StageContext.for_testing(tmp_path / "with-opt", show_progress=False)
    run_pretrain(cont_cfg(str(first.out_dir), steps=1,
                          init=InitConfig(path=str(first.out_dir), load_optimizer=True)),
                 shards, ctx)
    with pytest.raises(FileNotFoundError, match="optimizer state"):
        run_pretrain(cont_cfg(str(base), init=InitConfig(path=str(base), load_optimizer=True)),
                     shards, StageContext.for_testing(tmp_path / "x", show_progress=False))


def test_spec_model_disagreeing_with_init_names_both_values(shards, tmp_path):
    base = make_base(shards, tmp_path / "base", "llama", steps=1)
    bad = cont_cfg(str(base), model=ModelConfig(d_model=128, n_layers=2, n_heads=4))
    with pytest.raises(ValueError, match=r"train.model.d_model=128 but the init model has d_model=64"):
        run_pretrain(bad, shards, StageContext.for_testing(tmp_path / "a", show_progress=False))
    # agreeing fields are fine (n_layers=2, n_kv_heads=2 match)
    ok = cont_cfg(str(base), steps=1, model=ModelConfig(d_model=64, n_layers=2, n_heads=4,
                                                        n_kv_heads=2, seq_len=64))
    run_pretrain(ok, shards, StageContext.for_testing(tmp_path / "b", show_progress=False))
    with pytest.raises(ValueError, match="exceeds the init model's context 64"):
        run_pretrain(cont_cfg(str(base), seq_len=128), shards,
                     StageContext.for_testing(tmp_path / "c", show_progress=False))
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face model directory"):
        resolve_init(tmp_path)


def test_plan_takes_the_init_models_tokenizer(shards, tmp_path):
    """The spec machinery: train.init's identity is its content digest, the tokenizer node
    loads the init model's tokenizer (identity = its files), and a model mismatch is a
    SpecError before anything runs."""
    from pipeline.plan import build_plan
    from pipeline.spec import SpecError, validate_spec

    base = make_base(shards, tmp_path / "base", "gpt2", steps=1)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    raw = {"run": {"name": "init-test", "workdir": str(tmp_path / "w")},
           "sources": [{"name": "docs", "type": "jsonl", "paths": [str(tmp_path / "docs.jsonl")]}],
           "train": {"init": str(base), "steps": 2, "seq_len": 32},
           "continual": {"enabled": False}}
    plan = {n.key: n for n in build_plan(validate_spec(raw))}
    tok_files = plan["tokenizer"].config["init_tokenizer_files"]
    assert len(tok_files) >= 2 and all("sha256" in f for f in tok_files)
    digest = plan["pretrain"].config["train"]["init"]["path"]
    assert set(digest["dir"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    # changing the weights changes the pretrain identity, not the tokenizer's
    before = (plan["tokenizer"].config, plan["pretrain"].config)
    from safetensors.torch import load_file, save_file

    w = load_file(str(base / "model.safetensors"))
    k = next(iter(w))
    w[k] = w[k] + 1
    save_file(w, str(base / "model.safetensors"), metadata={"format": "pt"})
    after = {n.key: n for n in build_plan(validate_spec(raw))}
    assert after["tokenizer"].config == before[0]
    assert after["pretrain"].config != before[1]

    with pytest.raises(SpecError, match="n_layers=4 but the init model has n_layers=2"):
        build_plan(validate_spec({**raw, "train": {**raw["train"], "model": {"n_layers": 4,
                                                                            "family": "gpt2"}}}))


def test_dapt_config_plans_extension_dapt_and_tapt(shards, tmp_path):
    """configs/dapt.yaml with a local base model matching its (inherited) train.model."""
    from pipeline.plan import build_plan
    from pipeline.spec import SpecError, load_spec
    from pipeline.train.config import ModelConfig as MC
    from pipeline.train.model import build_model

    repo = Path(__file__).resolve().parents[1]
    from pipeline.tokenize.tokenizer import load_tokenizer

    _, eos, vocab = load_tokenizer(shards / "tokenizer")
    base = tmp_path / "base-model"
    build_model(MC(family="llama", d_model=128, n_layers=2, n_heads=4, seq_len=128), vocab,
                eos, seed=0).save_pretrained(str(base))
    for f in tokenizer_files(shards / "tokenizer"):
        shutil.copy2(f, base / f.name)
    spec = load_spec(repo / "configs" / "dapt.yaml", [f"train.init={base}"])
    plan = {n.key: n for n in build_plan(spec)}
    assert plan["tokenizer"].config["tokenizer"]["extend"]["sources"] == ["code"]
    assert plan["tokenizer"].config["init_tokenizer_files"]
    assert "continual.tapt" in plan and plan["continual.tapt"].inputs["init"] == "pretrain"
    assert spec.train.global_batch(128) == 16
    other = make_base(shards, tmp_path / "small", "llama", steps=1)
    with pytest.raises(SpecError, match="d_model=128 but the init model has d_model=64"):
        build_plan(load_spec(repo / "configs" / "dapt.yaml", [f"train.init={other}"]))
