"""A stage's code version is part of its artifacts' identity (pipeline/plan.py STAGE_VERSIONS).

This test holds every stage to it: for each stage it recomputes (a) a fingerprint of the
stage's config models' JSON Schema (fields, types, defaults; descriptions and titles do
not count) and (b) the digest of the stage's output on a tiny fixed input, computed with
the stage's own code (no Ray, a few seconds in all), and compares them with
tests/golden/stage_versions.json. When either changed while the version did not, the
cached artifacts of that stage would silently be served for the new code: the test
fails and says which version to bump. After bumping (or for a change you are sure does
not change outputs), rewrite the golden file:

    PYTHONPATH=. python -m tests.test_stage_versions --update
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GOLDEN = Path(__file__).resolve().parent / "golden" / "stage_versions.json"
UPDATE_CMD = "PYTHONPATH=. python -m tests.test_stage_versions --update"

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen. Winston Smith slipped quickly through the glass doors.",
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen! Winston Smith slipped quickly through the glass door.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nprint(fib(10))\n",
    "buy buy buy cheap cheap casino casino casino viagra now now now now now now now now",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
    "money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world.",
    "Es war einmal ein kleines Mädchen, das hatte eine Großmutter, die es sehr lieb hatte.",
    "short",
]


# ---- helpers ------------------------------------------------------------------------------

def _canon(obj):
    """Plain data with floats rounded (BLAS and libm may differ in the last bits)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, np.generic):
        return _canon(obj.item())
    if isinstance(obj, np.ndarray):
        return _canon(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    return obj


def _digest(obj) -> str:
    if isinstance(obj, bytes):
        return hashlib.sha256(obj).hexdigest()
    return hashlib.sha256(json.dumps(_canon(obj), sort_keys=True, default=str).encode()).hexdigest()


def _strip_docs(schema):
    if isinstance(schema, dict):
        return {k: _strip_docs(v) for k, v in schema.items() if k not in ("description", "title", "examples")}
    if isinstance(schema, list):
        return [_strip_docs(v) for v in schema]
    return schema


def schema_fingerprint(*models) -> str:
    return _digest([_strip_docs(m.model_json_schema()) for m in models])


def _table_rows(path_glob, root: Path, columns) -> list:
    rows = []
    for f in sorted(root.glob(path_glob)):
        t = pq.read_table(f)
        rows += [[r.get(c) for c in columns] for r in t.to_pylist()]
    return rows


# ---- golden outputs, one per stage ----------------------------------------------------------

def golden_crawl(tmp: Path):
    from pipeline.crawl.urls import BadURL, Scope, extract_links, normalize
    urls = ["HTTP://Example.COM:80/a/../b/./c?b=2&a=1#frag", "https://example.com/%7Euser/",
            "https://sub.example.com/x", "mailto:x@y", "https://other.org/docs/page", "/rel/path"]
    out = []
    for u in urls:
        try:
            out.append(normalize(u, base="https://example.com/base/"))
        except BadURL as e:
            out.append(f"bad:{e}")
    scope = Scope(["example.com"], [r"/b/"], [r"/private/"])
    html = (b"<html><head><base href='https://example.com/base/'></head><body>"
            b"<a href='x.html'>x</a><a rel='nofollow' href='/private/y'>y</a>"
            b"<a href='javascript:void(0)'>j</a></body></html>")
    return {"normalize": out, "scope": [scope.reason(u) for u in out if not u.startswith("bad:")],
            "links": extract_links(html, "https://example.com/base/index.html")}


def golden_ingest(tmp: Path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from pipeline.ingest.config import ExtractConfig
    from pipeline.ingest.stage import ingest_file
    jsonl = tmp / "in.jsonl"
    jsonl.write_text("\n".join([json.dumps({"id": f"j{i}", "text": t, "url": f"http://e.org/{i}"})
                                for i, t in enumerate(TEXTS)] + ["{not json", json.dumps({"id": "x"})]) + "\n")
    text = tmp / "in.txt"
    text.write_text("\n\n".join(TEXTS) + "\n\nline with bad \udcff".encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    warc = tmp / "in.warc"
    with open(warc, "wb") as fh:
        writer = WARCWriter(fh, gzip=False)
        for i, t in enumerate(TEXTS[:5]):
            body = f"<html><head><title>T{i}</title></head><body><nav>menu home about</nav><article><h1>Title {i}</h1><p>{t}</p><p>{t}</p></article><footer>(c) 2024</footer></body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            rec = writer.create_warc_record(f"http://site.example/{i}.html", "response", payload=io.BytesIO(body),
                                            http_headers=headers,
                                            warc_headers_dict={"WARC-Date": "2024-01-01T00:00:00Z",
                                                               "WARC-Record-ID": f"<urn:uuid:00000000-0000-0000-0000-00000000000{i}>"})
            writer.write_record(rec)
    cfg = ExtractConfig(min_text_chars=20).model_dump(mode="json")
    opts = {"text_field": "text", "id_field": "id", "url_field": "url", "text_unit": "paragraph"}
    out = {}
    for idx, (kind, path) in enumerate((("jsonl", jsonl), ("text", text), ("warc", warc))):
        d = tmp / f"out-{kind}"
        d.mkdir()
        res = ingest_file(idx, str(path), path.name, kind, "src", cfg, str(d), opts)
        out[kind] = {"stats": {k: v for k, v in res["stats"].items() if k != "bytes_in"},
                     "docs": _table_rows("data/*.parquet", d, ["id", "text", "source", "url"]),
                     "rejected": _table_rows("rejected/*.parquet", d, ["id", "reason"])}
    return out


def golden_filter(tmp: Path):
    # no langid step: its scores come from the model data inside the py3langid wheel, which
    # differed between two installs of the same pinned version (97 vs 142 languages), and
    # a dependency's model is not this stage's code; tests/test_filters_models.py covers it
    from pipeline.filters.chain import FilterChain
    from pipeline.filters.config import FiltersConfig
    cfg = FiltersConfig.model_validate({"steps": [
        {"type": "url_blocklist", "domains": ["casino.example"], "keywords": ["casino"]},
        {"type": "gopher_repetition"}, {"type": "gopher_quality"}, {"type": "c4"}, {"type": "fineweb"}]})
    table = pa.table({"id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS,
                      "source": ["s"] * len(TEXTS), "url": [f"http://e.org/{i}" for i in range(len(TEXTS))]})
    return FilterChain(cfg).process(table).to_pylist()


def golden_dedup(tmp: Path):
    from pipeline.dedup.minhash import band_keys, normalize, signatures
    sigs = signatures(TEXTS, ngram=5, num_perm=32, seed=1)
    return {"norm": [normalize(t) for t in TEXTS], "sigs": np.asarray(sigs).tolist(),
            "bands": np.asarray(band_keys(np.asarray(sigs), 8, 4)).tolist()}


def _tokenizer():
    from pipeline.tokenize.config import TokenizerConfig
    from pipeline.tokenize.tokenizer import train_bpe
    return train_bpe(TEXTS * 3, TokenizerConfig(vocab_size=300, min_frequency=2))


def golden_tokenizer(tmp: Path):
    tok = _tokenizer()
    return {"vocab": sorted(tok.get_vocab().items()), "ids": [tok.encode(t).ids for t in TEXTS]}


def golden_tokenize(tmp: Path):
    from pipeline.tokenize.megatron import IndexedDatasetWriter, token_dtype
    from pipeline.tokenize.stage import segments, split_of
    tok = _tokenizer()
    with IndexedDatasetWriter(tmp / "shard", token_dtype(300)) as w:
        for t in TEXTS:
            w.add_document(np.asarray(tok.encode(t).ids + [0], dtype=np.int64))
    return {"bin": _digest((tmp / "shard.bin").read_bytes()), "idx": _digest((tmp / "shard.idx").read_bytes()),
            "split": [split_of(f"d{i}", t, 0.3) for i, t in enumerate(TEXTS)],
            "segments": [segments(t, 40) for t in TEXTS]}


def _model():
    from pipeline.train.config import ModelConfig
    from pipeline.train.model import build_model
    return build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, seq_len=32), 300, 0, seed=0)


def golden_train(tmp: Path):
    import torch

    from pipeline.train.config import ScheduleConfig
    from pipeline.train.schedules import lr_curve
    model = _model()
    params = {k: _digest(v.detach().numpy().tobytes()) for k, v in model.state_dict().items()}
    x = torch.arange(32).reshape(2, 16) % 300
    with torch.no_grad():
        loss = float(model(input_ids=x, labels=x).loss)
    curves = {k: lr_curve(40, ScheduleConfig(kind=k, max_lr=1e-3, warmup_steps=4))
              for k in ("cosine", "wsd", "infinite", "constant", "rewarm_cosine")}
    return {"params": params, "loss": round(loss, 4), "lr": curves}


def golden_evaluate(tmp: Path):
    from pipeline.evaluate.bpb import document_rows, rolling_windows, score_windows
    model = _model().eval()
    doc = np.arange(1, 60) % 300
    rows, n = document_rows(doc, 0, 16, 8)
    nll = score_windows(model, rows, 4, "cpu", 1)
    return {"windows": rolling_windows(50, 16, 8), "n": n, "nll": round(nll, 3)}


def _schemas() -> dict:
    from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
    from pipeline.dedup.config import DedupConfig
    from pipeline.evaluate.config import EvaluateConfig
    from pipeline.filters.config import FiltersConfig
    from pipeline.ingest.config import ExtractConfig
    from pipeline.spec import SourceConfig
    from pipeline.tokenize.config import TokenizeConfig, TokenizerConfig
    from pipeline.train.config import ContinualConfig, TrainConfig
    return {"crawl": (CrawlConfig, LocalSiteConfig), "ingest": (ExtractConfig, SourceConfig),
            "models": (FiltersConfig,), "filter": (FiltersConfig,), "dedup": (DedupConfig,),
            "tokenizer": (TokenizerConfig,), "tokenize": (TokenizeConfig,),
            "train": (TrainConfig, ContinualConfig), "evaluate": (EvaluateConfig,)}


# the fastText classifiers ("models") are covered by their schema only: training one
# takes seconds and its float weights are not bitwise portable
GOLDEN_FNS = {"crawl": golden_crawl, "ingest": golden_ingest, "filter": golden_filter,
              "dedup": golden_dedup, "tokenizer": golden_tokenizer, "tokenize": golden_tokenize,
              "train": golden_train, "evaluate": golden_evaluate}


def current(tmp: Path) -> dict:
    from pipeline.plan import STAGE_VERSIONS
    schemas = _schemas()
    out = {}
    for stage, version in sorted(STAGE_VERSIONS.items()):
        fn = GOLDEN_FNS.get(stage)
        d = tmp / stage
        d.mkdir(parents=True, exist_ok=True)
        out[stage] = {"version": version, "config_schema": schema_fingerprint(*schemas[stage]),
                      "golden_output": _digest(fn(d)) if fn else None}
    return out


def differences(recorded: dict, now: dict) -> list[str]:
    msgs = []
    for stage, cur in now.items():
        old = recorded.get(stage)
        if old is None:
            msgs.append(f"stage {stage} is not in {GOLDEN.name}: add it ({UPDATE_CMD})")
            continue
        changed = [k for k in ("config_schema", "golden_output") if old.get(k) != cur[k]]
        if not changed:
            if old["version"] != cur["version"]:
                msgs.append(f"stage {stage}: version {old['version']} -> {cur['version']} with no output "
                            f"change; update {GOLDEN} ({UPDATE_CMD})")
            continue
        what = " and ".join({"config_schema": "its config schema", "golden_output": "its output on the golden input"}[k]
                            for k in changed)
        if old["version"] == cur["version"]:
            msgs.append(f"stage {stage}: {what} changed but its version is still {cur['version']}: bump the version "
                        f"of stage {stage} (STAGE_VERSIONS in pipeline/plan.py) and update tests/golden/"
                        f"{GOLDEN.name} ({UPDATE_CMD})")
        else:
            msgs.append(f"stage {stage}: version bumped to {cur['version']}; now update tests/golden/{GOLDEN.name} "
                        f"({UPDATE_CMD})")
    msgs += [f"stage {s} is in {GOLDEN.name} but not in STAGE_VERSIONS; update it ({UPDATE_CMD})"
             for s in sorted(set(recorded) - set(now))]
    return msgs


def test_every_output_change_bumps_its_stage_version(tmp_path):
    recorded = json.loads(GOLDEN.read_text())
    problems = differences(recorded, current(tmp_path))
    assert not problems, "\n".join(problems)


def test_golden_outputs_are_deterministic(tmp_path):
    """The golden computations themselves give the same digest twice (else the test above is noise)."""
    for stage in ("ingest", "filter", "tokenize", "train"):
        a, b = tmp_path / f"{stage}-a", tmp_path / f"{stage}-b"
        a.mkdir(), b.mkdir()
        assert _digest(GOLDEN_FNS[stage](a)) == _digest(GOLDEN_FNS[stage](b)), stage


def test_the_check_catches_a_change_without_a_bump():
    recorded = {"dedup": {"version": "1", "config_schema": "a", "golden_output": "b"}}
    msgs = differences(recorded, {"dedup": {"version": "1", "config_schema": "a", "golden_output": "CHANGED"}})
    assert msgs and "bump the version of stage dedup" in msgs[0] and "tests/golden/stage_versions.json" in msgs[0]
    msgs = differences(recorded, {"dedup": {"version": "2", "config_schema": "a", "golden_output": "CHANGED"}})
    assert msgs and "version bumped to 2; now update" in msgs[0]
    assert differences(recorded, {"dedup": {"version": "1", "config_schema": "a", "golden_output": "b"}}) == []


def test_a_version_bump_changes_the_identity():
    from pipeline.plan import build_plan
    from pipeline.runner import plan_identities
    from pipeline.spec import validate_spec
    import pipeline.plan as plan_mod
    spec = validate_spec({"sources": [{"name": "a", "type": "crawl", "crawl": {"seeds": ["https://example.org/"]}}],
                          "train": {}, "evaluate": {}})      # both optional since data-only specs
    before = plan_identities(build_plan(spec))
    old = plan_mod.STAGE_VERSIONS["dedup"]
    plan_mod.STAGE_VERSIONS["dedup"] = old + ".test"
    try:
        after = plan_identities(build_plan(spec))
    finally:
        plan_mod.STAGE_VERSIONS["dedup"] = old
    changed = {k for k in before if before[k] != after[k]}
    assert "dedup" in changed and "filter" not in changed and "ingest.a" not in changed
    assert {"tokenize", "pretrain", "evaluate"} <= changed        # downstream follows


if __name__ == "__main__":
    import tempfile
    if "--update" not in sys.argv:
        sys.exit("usage: PYTHONPATH=. python -m tests.test_stage_versions --update")
    with tempfile.TemporaryDirectory() as d:
        now = current(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
