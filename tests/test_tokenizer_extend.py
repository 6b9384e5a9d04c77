"""Domain-adapted tokenizer (ChipNeMo): a base byte-level BPE (trained on plays, web text
and German) is extended with the tokens a BPE trained on Python source code has and the
base splits worst; the embeddings of a model continued with it grow, each new row the mean
of its base decomposition's rows. Domain = the Python standard library's own source."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
import typing
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from pipeline.engine import DOC_SCHEMA, write_table
from pipeline.stage import StageContext
from pipeline.tokenize.config import ExtendConfig, TokenizeConfig, TokenizerConfig
from pipeline.tokenize.tokenizer import extend_bpe, load_tokenizer, read_extension
from pipeline.train.model import extend_embeddings
from conftest import shared_path
from test_train_data import make_shards


def code_docs() -> list[str]:
    docs = []
    for mod in (ast, inspect, dataclasses, typing, json.decoder, shutil):
        lines = Path(mod.__file__).read_text(encoding="utf-8").splitlines()
        docs += ["\n".join(lines[i:i + 60]) for i in range(0, len(lines), 60)]
    return [d for d in docs if d.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def n_tokens(tok, texts):
    return sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))


def test_extend_bpe_adds_domain_tokens_keeps_old_ids_improves_fertility(shards):
    base_dir = shards / "tokenizer"
    base, _, base_vocab = load_tokenizer(base_dir)
    docs = code_docs()
    train, held = docs[::2], docs[1::2]
    ext, added = extend_bpe(base_dir, train, domain_vocab_size=2000, max_new_tokens=150)
    assert 100 <= len(added) <= 150
    # old ids unchanged; new ids follow them
    ev = ext.get_vocab(with_added_tokens=True)
    for token, i in base.get_vocab(with_added_tokens=True).items():
        assert ev[token] == i, token
    assert sorted(a["id"] for a in added) == list(range(base_vocab, base_vocab + len(added)))
    assert ext.get_vocab_size(with_added_tokens=True) == base_vocab + len(added)
    # each new token's base decomposition is what the base tokenizer makes of its text
    for a in added:
        assert base.encode(a["text"], add_special_tokens=False).ids == a["base_ids"], a
        assert len(a["base_ids"]) >= 2
    # fertility on held-out code improves a lot; other text round-trips and is not worse
    before, after = n_tokens(base, held), n_tokens(ext, held)
    assert after < 0.85 * before, (before, after)
    plays = [shared_path("text", "tinyshakespeare.txt")
             .read_text()[200_000:230_000]]
    assert n_tokens(ext, plays) <= n_tokens(base, plays)
    for text in held[:20] + plays + ["Ünïcödé ✓ <tag> \t\r\n def  f(x):"]:
        assert ext.decode(ext.encode(text, add_special_tokens=False).ids) == text
    new_ids = {a["id"] for a in added}
    assert any(i in new_ids for i in ext.encode(held[0], add_special_tokens=False).ids)
    # the most valuable additions are code: indentation runs and identifiers
    top = sorted(added, key=lambda a: -a["gain"])[:30]
    assert top[0]["gain"] > 0
    assert any(a["text"].isspace() and len(a["text"]) >= 4 for a in top)
    assert any(a["text"].strip().isidentifier() and len(a["text"].strip()) >= 4 for a in top)


@pytest.mark.parametrize("tied", [True, False])
def test_extend_embeddings_mean_of_base_rows(tied):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, tie_word_embeddings=tied))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ext = {"base_vocab_size": 300, "vocab_size": 303,
           "new_tokens": [{"id": 300, "base_ids": [5, 7]}, {"id": 301, "base_ids": [9, 10, 11]},
                          {"id": 302, "base_ids": [300, 4]}]}     # built on an earlier new one
    assert extend_embeddings(model, ext) == 3
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape == (303, 16) and w_out.shape == (303, 16)
    assert (w_in is w_out) == tied
    assert torch.equal(w_in[:300], old_in) and torch.equal(w_out[:300], old_out)
    torch.testing.assert_close(w_in[300], old_in[[5, 7]].mean(0))
    torch.testing.assert_close(w_in[301], old_in[[9, 10, 11]].mean(0))
    torch.testing.assert_close(w_in[302], torch.stack([w_in[300], old_in[4]]).mean(0))
    torch.testing.assert_close(w_out[301], old_out[[9, 10, 11]].mean(0))
    assert model.config.vocab_size == 303
    assert extend_embeddings(model, ext) == 0           # already grown: nothing to do


def test_tokenizer_stage_extends_and_reports_fertility_then_training_grows_the_model(
        shards, tmp_path, ray_local):
    from pipeline.tokenize.stage import run_tokenize, run_train_tokenizer
    from pipeline.train.config import InitConfig, ScheduleConfig, TrainConfig
    from pipeline.train.stage import run_pretrain
    from test_train_init import make_base

    base = make_base(shards, tmp_path / "base", "llama", steps=5)
    plays = shared_path("text", "tinyshakespeare.txt").read_text()
    paras = [p for p in plays.split("\n\n") if p.strip()][:300]
    rows = [{"id": f"p{i}", "text": t, "source": "plays", "url": ""} for i, t in enumerate(paras)]
    rows += [{"id": f"c{i}", "text": t, "source": "code", "url": ""}
             for i, t in enumerate(code_docs())]
    docs = tmp_path / "docs"
    write_table(pa.Table.from_pylist(rows, schema=DOC_SCHEMA), docs, part=0)
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(
        path=str(base), extend=ExtendConfig(max_new_tokens=120, domain_vocab_size=1500,
                                            sources=["code"])), val_fraction=0.1)
    m = run_train_tokenizer(cfg, docs, StageContext.for_testing(tmp_path / "tokenizer"))
    assert m["new_tokens"] == 120 and m["vocab_size"] == m["base_vocab_size"] + 120
    assert m["fertility_tokens_per_word.code"] < 0.85 * m["fertility_tokens_per_word.code.base"]
    assert m["bytes_per_token.code"] > m["bytes_per_token.code.base"]
    assert m["fertility_tokens_per_word.plays"] <= m["fertility_tokens_per_word.plays.base"]
    tok_dir = tmp_path / "tokenizer" / "tokenizer"
    assert read_extension(tok_dir)["base_vocab_size"] == m["base_vocab_size"]
    with pytest.raises(ValueError, match="extends a loaded tokenizer"):
        run_train_tokenizer(TokenizeConfig(tokenizer=TokenizerConfig(extend=ExtendConfig())),
                            docs, StageContext.for_testing(tmp_path / "t2"))

    run_tokenize(cfg, docs, tok_dir, StageContext.for_testing(tmp_path / "shards"))
    ctx = StageContext.for_testing(tmp_path / "dapt", show_progress=False)
    tcfg = TrainConfig(init=InitConfig(path=str(base)), steps=1, batch_size=2, seq_len=32,
                       num_workers=0, eval_every=0, checkpoint_every=0,
                       val_tokens_per_source=64, mixture={"code": 1.0},
                       schedule=ScheduleConfig(max_lr=1e-3, warmup_steps=0))
    run_pretrain(tcfg, tmp_path / "shards", ctx)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = AutoModelForCausalLM.from_pretrained(str(ctx.out_dir / "hf"))
    assert out.get_input_embeddings().weight.shape[0] == m["vocab_size"]
    tok = AutoTokenizer.from_pretrained(str(ctx.out_dir / "hf"))
    assert len(tok) == m["vocab_size"]
    code = code_docs()[3]
    assert tok.decode(tok(code, add_special_tokens=False).input_ids) == code
