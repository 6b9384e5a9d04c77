"""Data-only and partial pipelines, the zero-documents stop, and the terminal of a run.

Fast: the plan of a spec without ``train``, ``--until`` prefixes, the per-step message of
a filter that removed everything (a real ``run_filter`` on Ray). Slow: the real CLI runs a
data-only spec (Prefect + MLflow + Ray) and its terminal shows stage lines but no library
chatter, which is in the log file; then a langid that keeps the wrong language stops the
run at ``filter``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.checks import EmptyOutputError, check_filter, check_ingest
from pipeline.engine import write_table
from pipeline.filters.config import FiltersConfig
from pipeline.filters.stage import run_filter
from pipeline.plan import build_plan, prefix_until
from pipeline.runner import plan_identities
from pipeline.spec import SpecError, load_spec, validate_spec
from pipeline.stage import StageContext
from pipeline.store import Artifact
from tests.conftest import shared_path
from tests.e2e_util import forgeflow

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _data_spec(tmp_path: Path, **extra) -> Path:
    """Two real sources (web text as JSONL, ~250 Shakespeare paragraphs), no training."""
    plays = tmp_path / "plays.txt"      # the head of the real file: small enough for 2 cores
    plays.write_text(shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")[:40_000])
    spec = {
        "run": {"name": "dataonly", "seed": 7, "num_cpus": 2},
        "sources": [
            {"name": "web", "type": "jsonl", "paths": [str(shared_path("docs", "cc_en_head-0091.jsonl"))]},
            {"name": "plays", "type": "text", "text_unit": "paragraph", "paths": [str(plays)]},
        ],
        "filters": {"steps": [{"type": "langid", "keep_languages": ["en"], "min_score": 0.3},
                              {"type": "gopher_repetition", "sources": ["web"]}]},
        "dedup": {"threshold": 0.8},
        "tokenize": {"tokenizer": {"vocab_size": 400, "sample_docs": 3000}, "val_fraction": 0.1},
        **extra,
    }
    path = tmp_path / "dataonly.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- the plan ----------------------------------------------------------------------------

def test_spec_without_train_is_a_data_only_plan(tmp_path):
    spec = load_spec(_data_spec(tmp_path))
    keys = [n.key for n in build_plan(spec)]
    assert keys[-2:] == ["tokenizer", "tokenize"]
    assert not any(k.startswith(("pretrain", "continual", "evaluate")) for k in keys)
    assert spec.trained_sources() == set()


def test_continual_or_evaluate_without_train_is_an_error(tmp_path):
    raw = yaml.safe_load(_data_spec(tmp_path).read_text())
    raw["evaluate"] = {"bpb": True}
    with pytest.raises(SpecError, match="'evaluate' needs a 'train' section"):
        validate_spec(raw, source="d.yaml")


def test_evaluate_runs_only_when_present():
    with_eval = [n.key for n in build_plan(load_spec(QUICKSTART))]
    without = [n.key for n in build_plan(load_spec(QUICKSTART, ["evaluate=null"]))]
    assert with_eval[-1] == "evaluate" and without == with_eval[:-1]
    no_cont = [n.key for n in build_plan(load_spec(QUICKSTART, ["continual=null"]))]
    assert "continual.code" not in no_cont and "pretrain" in no_cont


def test_until_is_the_prefix_with_unchanged_identities():
    plan = build_plan(load_spec(QUICKSTART))
    full = plan_identities(plan)
    dedup = prefix_until(plan, "dedup")
    assert [n.key for n in dedup] == ["crawl.docs", "ingest.docs", "crawl.web", "ingest.web",
                                      "crawl.code", "ingest.code", "model.quality",
                                      "model.toxicity", "filter", "dedup"]
    assert plan_identities(dedup) == {k: full[k] for k in (n.key for n in dedup)}
    # a key: only its own ancestors; a family: every member
    assert [n.key for n in prefix_until(plan, "ingest.web")] == ["crawl.web", "ingest.web"]
    assert [n.key for n in prefix_until(plan, "ingest")] == [
        "crawl.docs", "ingest.docs", "crawl.web", "ingest.web", "crawl.code", "ingest.code"]
    assert prefix_until(plan, "continual")[-1].key == "continual.code"
    assert prefix_until(plan, None) == plan
    with pytest.raises(SpecError, match=r"--until 'trian'.*choose one of: .*pretrain"):
        prefix_until(plan, "trian")


def test_cli_validate_until(tmp_path):
    proc = forgeflow("validate", str(QUICKSTART), "--until", "tokenize", workdir=tmp_path)
    assert "(3 source(s), 12 stage(s))" in proc.stdout and "pretrain" not in proc.stdout
    bad = forgeflow("validate", str(QUICKSTART), "--until", "nope", workdir=tmp_path, check=False)
    assert bad.returncode == 2 and "choose one of" in bad.stderr


# ---- zero documents ------------------------------------------------------------------------

def _docs(d: Path, source: str, texts: list[str]) -> Path:
    write_table(pa.table({"id": [f"{source}-{i}" for i in range(len(texts))], "text": texts,
                          "source": [source] * len(texts), "url": [""] * len(texts)}), d)
    return d


def _filtered(ray_local, tmp_path, steps) -> Artifact:
    """A real run_filter over English prose (source 'prose') and German text ('de')."""
    text = shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    paras = [p.replace("\n", " ") for p in text.split("\n\n") if len(p.split()) > 40][:30]
    german = ["Dies ist ein ganz gewöhnlicher deutscher Text über das Wetter und die Stadt. " * 8
              for _ in range(5)]
    dirs = {"prose": _docs(tmp_path / "prose", "prose", paras),
            "de": _docs(tmp_path / "de", "de", german)}
    ctx = StageContext.for_testing(tmp_path / "out", num_cpus=2)
    metrics = run_filter(FiltersConfig(steps=steps, batch_size=8), dirs, {}, ctx)
    return Artifact("filter", "filtered", "x" * 64, str(ctx.out_dir), {"metrics": metrics})


def test_filter_removing_everything_names_each_step(ray_local, tmp_path):
    art = _filtered(ray_local, tmp_path, [{"type": "langid", "keep_languages": ["fr"]},
                                          {"type": "gopher_repetition"}])
    assert art.metrics["docs_in"] == 35 and art.metrics["docs_out"] == 0
    with pytest.raises(EmptyOutputError) as e:
        check_filter(art, trained_sources=set())
    msg = str(e.value)
    assert "every one of the 35 documents was removed" in msg
    assert "langid 35" in msg and "gopher_repetition" not in msg    # only steps that removed some
    assert f"forgeflow inspect {art.path}" in msg


def test_filter_emptying_a_trained_source_fails_else_warns(ray_local, tmp_path, caplog):
    art = _filtered(ray_local, tmp_path, [{"type": "langid", "keep_languages": ["en"], "min_score": 0.3}])
    stats = json.loads((art.dir / "filter_stats.json").read_text())["sources"]
    by_src = {r["source"]: r for r in stats}
    assert by_src["de"]["docs_out"] == 0 and by_src["de"]["removed_langid"] == 5
    assert by_src["prose"]["docs_out"] == art.metrics["source.prose.docs_out"] > 0
    with pytest.raises(EmptyOutputError, match=r"source 'de' lost all 5 .*langid 5.*Training draws from 'de'"):
        check_filter(art, trained_sources={"de", "prose"})
    with caplog.at_level(logging.WARNING, logger="forgeflow"):
        check_filter(art, trained_sources={"prose"})          # not trained on: a warning only
    assert any("source 'de' lost all 5" in r.getMessage() for r in caplog.records)


def test_ingest_with_no_documents_names_the_rejections(tmp_path):
    art = Artifact("ingest", "web", "y" * 64, str(tmp_path), {"metrics": {
        "files": 2, "records_read": 40, "docs_out": 0, "rejected": 40,
        "rejected_too_short": 31, "rejected_http_status": 9, "skipped_request": 40}})
    with pytest.raises(EmptyOutputError, match=r"ingest.web: 0 documents from 2 file\(s\) and 40 "
                                               r"record\(s\); rejected: too_short 31, http_status 9; "
                                               r"skipped \(not documents\): request 40"):
        check_ingest(art, "web")
    check_ingest(Artifact("ingest", "web", "y" * 64, str(tmp_path), {"metrics": {"docs_out": 1}}), "web")


# ---- the real CLI --------------------------------------------------------------------------

HTTPX_LINE = re.compile(r"HTTP Request: (GET|POST|PATCH|PUT|DELETE) ")


@pytest.mark.slow
def test_cli_data_only_run_terminal_log_file_and_empty_stop(tmp_path):
    spec = _data_spec(tmp_path)
    wd = tmp_path / "wd"
    proc = forgeflow("run", str(spec), "--workdir", str(wd), workdir=wd, timeout=1500)
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    # one start and one finish line per stage, the numbers on the finish line
    for key in ("ingest.web", "ingest.plays", "filter", "dedup", "tokenizer", "tokenize"):
        assert any(re.search(rf"\[{re.escape(key)}\] started$", ln) for ln in lines), (key, out)
        assert any(re.search(rf"\[{re.escape(key)}\] ran in [\d.]+s", ln) for ln in lines), (key, out)
    assert re.search(r"\[tokenize\] ran in [\d.]+s: .*tokens_total=[\d,]+", out), out
    assert "forgeflow: 6 stages (6 ran, 0 cached)" in out
    # no library chatter on the terminal...
    assert not HTTPX_LINE.search(out), out
    assert "Finished in state" not in out and "streaming_executor" not in out
    assert len(lines) < 60, out
    # ...it is in the log file the run names
    log_path = Path(re.search(r"^log: (\S+)", proc.stdout, re.M).group(1))
    assert log_path.parent == wd / "logs" and log_path.exists()
    logged = log_path.read_text()
    assert HTTPX_LINE.search(logged) and "[tokenize] ran in" in logged
    assert (wd / "tokenize").is_dir() and not (wd / "train").exists()

    # --until on the same workdir: a prefix, all cache hits
    again = forgeflow("run", str(spec), "--workdir", str(wd), "--until", "filter", workdir=wd)
    out2 = again.stdout + again.stderr
    assert "forgeflow: 3 stages (0 ran, 3 cached)" in out2, out2
    assert "[filter] cached" in out2 and "[dedup]" not in out2

    # langid keeping a language nobody wrote in: the run stops at filter, naming the step
    bad = forgeflow("run", str(spec), "filters.steps.0.keep_languages=[fr]", "--workdir", str(wd),
                    "--until", "tokenize", workdir=wd, check=False)
    err = bad.stdout + bad.stderr
    assert bad.returncode == 1, err
    m = re.search(r"filter: every one of the ([\d,]+) documents was removed; removed by step: "
                  r"(input [\d,]+, )?langid ([\d,]+)\.", err)
    assert m, err
    assert "[dedup] started" not in err and "Traceback" not in err
    # only the first run's artifact (lock files, `.lock-*`, stay by design)
    assert len([d for d in (wd / "dedup").iterdir() if not d.name.startswith(".")]) == 1
