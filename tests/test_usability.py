"""Issue 18: details a new user hits in the first hour (each test fails without its fix)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from pipeline.ingest import ExtractConfig, run_ingest
from pipeline.stage import StageContext


def _ctx(tmp_path: Path, name: str = "out") -> StageContext:
    return StageContext.for_testing(tmp_path / name, show_progress=False)


# ---- 6. metadata the crawl already has --------------------------------------------------

def _warc_with_metadata(path: Path) -> None:
    """Three captures: one followed by a Common Crawl style metadata record, one with
    none, and a metadata record about a capture that is not in the file."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    html = ("<html><head><title>t</title></head><body><article><p>{}</p></article>"
            "</body></html>")
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i, (url, cld2) in enumerate([
                ("https://a.example/one", {"reliable": True, "text-bytes": 400, "languages": [
                    {"code": "fr", "code-iso-639-3": "fra", "text-covered": 0.93, "score": 900.0,
                     "name": "FRENCH"},
                    {"code": "en", "code-iso-639-3": "eng", "text-covered": 0.07, "score": 50.0,
                     "name": "ENGLISH"}]}),
                ("https://a.example/two", None)]):
            body = html.format(("Le texte numéro %d de la page, assez long pour rester. " % i) * 6)
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                    protocol="HTTP/1.1")
            resp = w.create_warc_record(url, "response", payload=io.BytesIO(body.encode()),
                                        http_headers=http)
            w.write_record(resp)
            if cld2 is not None:
                fields = (f"fetchTimeMs: 12\r\ncharset-detected: UTF-8\r\n"
                          f"languages-cld2: {json.dumps(cld2)}\r\n\r\n").encode()
                meta = w.create_warc_record(
                    url, "metadata", payload=io.BytesIO(fields),
                    warc_content_type="application/warc-fields",
                    warc_headers_dict={"WARC-Concurrent-To":
                                       resp.rec_headers.get_header("WARC-Record-ID")})
                w.write_record(meta)
        orphan = w.create_warc_record("https://a.example/gone", "metadata",
                                      payload=io.BytesIO(b"fetchTimeMs: 1\r\n\r\n"),
                                      warc_content_type="application/warc-fields",
                                      warc_headers_dict={"WARC-Concurrent-To": "<urn:uuid:nope>"})
        w.write_record(orphan)


def test_warc_metadata_records_become_columns(tmp_path):
    path = tmp_path / "cc.warc.gz"
    _warc_with_metadata(path)
    ctx = _ctx(tmp_path)
    m = run_ingest("web", "warc", [path], ExtractConfig(min_text_chars=20), ctx, use_ray=False)
    docs = {d["url"]: d for d in pq.read_table(ctx.out_dir / "data").to_pylist()}
    assert set(docs) == {"https://a.example/one", "https://a.example/two"}
    one, two = docs["https://a.example/one"], docs["https://a.example/two"]
    assert one["cld2_lang"] == "fr" and one["cld2_lang_covered"] == pytest.approx(0.93)
    assert one["cld2_reliable"] is True
    meta = json.loads(one["warc_metadata"])
    assert meta["charset-detected"] == "UTF-8" and meta["fetchTimeMs"] == "12"
    assert json.loads(meta["languages-cld2"])["languages"][1]["code"] == "en"
    # no metadata record: the columns are null, never borrowed from a neighbour
    assert two["cld2_lang"] is None and two["warc_metadata"] is None
    assert m["docs_with_metadata"] == 1 and m["metadata_unmatched"] == 1
    assert m["skipped_metadata"] == 2


def test_common_crawl_capture_keeps_its_cld2_language(tmp_path):
    ctx = _ctx(tmp_path)
    run_ingest("web", "warc", [shared_path("warc", "whirlwind.warc.gz")],
               ExtractConfig(), ctx, use_ray=False)
    docs = pq.read_table(ctx.out_dir / "data").to_pylist()
    assert docs, "the Common Crawl capture gives a document"
    d = docs[0]
    # Common Crawl's own CLD2 result for this an.wikipedia.org page (see the record)
    assert d["cld2_lang"] == "es" and d["cld2_reliable"] is False
    assert d["cld2_lang_covered"] == pytest.approx(0.69)
    assert json.loads(d["warc_metadata"])["charset-detected"] == "UTF-8"


# ---- 5. short documents do not vanish silently ------------------------------------------

def test_removal_report_table_and_warning():
    from pipeline.stage import removal_report
    lines, warning = removal_report("ingest.tweets", {"docs_in": 10, "reasons": {
        "too_short": 7, "empty_text": 1}})
    assert lines[0] == "[ingest.tweets] removed 8 of 10 documents (80.0%), by reason:"
    assert lines[1].split() == ["too_short", "7", "70.0%"]      # largest first
    assert lines[2].split() == ["empty_text", "1", "10.0%"]
    assert warning and "8 of 10" in warning and "`too_short` (7)" in warning
    lines, warning = removal_report("dedup", {"docs_in": 10, "reasons": {"near_duplicate": 5}})
    assert warning is None                                       # exactly half: no warning
    assert removal_report("x", None) == ([], None)


def _tweets_spec(tmp_path: Path) -> Path:
    tweets = [{"id": str(i), "text": f"short message number {i} #tag"} for i in range(8)]
    tweets += [{"id": "long", "text": "A longer message that passes the default minimum "
                                      "of fifty characters of text easily."}]
    data = tmp_path / "tweets.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in tweets))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"run: {{name: tweets, workdir: {tmp_path / 'work'}}}\n"
                    f"sources:\n  - {{name: tweets, type: jsonl, paths: [{data}]}}\n")
    return spec


def test_a_stage_that_removes_most_documents_prints_its_reasons_and_warns(tmp_path, caplog):
    import logging

    from pipeline.plan import build_plan
    from pipeline.runner import RunEnv, execute
    from pipeline.spec import load_spec

    spec = load_spec(str(_tweets_spec(tmp_path)), [])
    node = next(n for n in build_plan(spec) if n.key == "ingest.tweets")
    env = RunEnv.start(spec, tmp_path / "work")
    with caplog.at_level(logging.INFO, logger="forgeflow"):
        outcome = execute(node, {}, env)
    env.finish()
    text = caplog.text
    assert "[ingest.tweets] removed 8 of 9 documents (88.9%), by reason:" in text
    assert any(r.levelno == logging.WARNING and "more than half" in r.getMessage()
               and "`too_short` (8)" in r.getMessage() for r in caplog.records)
    # kept in the manifest (cached reruns and other tools read it) and in Prefect's summary
    assert outcome.artifact.manifest["removals"] == {"docs_in": 9, "reasons": {"too_short": 8}}
    assert any("more than half" in line for line in outcome.summary)


# ---- 4. labels in the shape the data has ------------------------------------------------

def _three_class_csv(path: Path) -> None:
    """hate (0) / offensive (1) / neither (2), the layout of a well-known tweet set."""
    import csv
    rows = [("you are a worthless idiot and everyone hates you", 0),
            ("i hate you people, get out, vermin", 0),
            ("shut up you stupid moron", 1),
            ("what a dumb ugly loser you are", 1),
            ("you idiot, stupid stupid stupid", 1),
            ("thanks for the helpful edit to the article", 2),
            ("the weather is lovely today in the park", 2),
            ("i added a citation to the history section", 2),
            ("great match last night, well played", 2),
            ("see the talk page for the sources", 2)] * 3
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tweet", "class"])
        w.writerows(rows)


def test_label_values_are_mapped_by_the_spec(tmp_path):
    from pipeline.filters.classifier import read_labelled
    path = tmp_path / "labeled.csv"
    _three_class_csv(path)
    texts, y = read_labelled(str(path), "tweet", "class", positive_labels=[0, 1])
    assert len(texts) == 30 and int(y.sum()) == 15          # hate + offensive are positive
    assert y[texts.index("see the talk page for the sources")] == 0
    # positive_labels + negative_labels: values in neither list are left out
    texts, y = read_labelled(str(path), "tweet", "class", positive_labels=["0"],
                             negative_labels=[2])
    assert len(texts) == 21 and int(y.sum()) == 6
    assert "shut up you stupid moron" not in texts


def test_unmapped_label_values_are_an_error_that_lists_them(tmp_path):
    from pipeline.filters.classifier import read_labelled
    path = tmp_path / "labeled.csv"
    _three_class_csv(path)
    with pytest.raises(ValueError) as e:
        read_labelled(str(path), "tweet", "class", where="toxicity_classifier")
    msg = str(e.value)
    assert str(path) in msg and "'class'" in msg
    assert "'0' x6" in msg and "'1' x9" in msg and "'2' x15" in msg
    assert "toxicity_classifier.positive_labels" in msg
    with pytest.raises(ValueError, match=r"positive_labels \['3'\] match no record"):
        read_labelled(str(path), "tweet", "class", positive_labels=[3])
    # the Jigsaw default still reads 0/1, booleans and rater fractions
    jl = tmp_path / "j.jsonl"
    jl.write_text('{"t": "a", "y": true}\n{"t": "b", "y": 0.8}\n{"t": "c", "y": "0"}\n')
    assert read_labelled(str(jl), "t", "y")[1].tolist() == [1, 1, 0]


def test_toxicity_classifier_trains_on_a_three_class_file(tmp_path):
    from pipeline.filters.classifier import ToxicityClassifierConfig, ToxicityClassifierFilter
    path = tmp_path / "labeled.csv"
    _three_class_csv(path)
    cfg = ToxicityClassifierConfig(train_path=str(path), text_field="tweet", label_field="class",
                                   positive_labels=[0, 1], holdout_fraction=0.3)
    ctx = _ctx(tmp_path, "tox")
    metrics = ToxicityClassifierFilter.train_model(cfg, {}, ctx)
    assert metrics["n_train"] > 0 and 0 < metrics["n_train_pos"] < metrics["n_train"]
    f = ToxicityClassifierFilter(cfg, ctx.out_dir)
    from pipeline.filters.text import TextBatch
    scores = f.score(TextBatch(["you stupid worthless idiot moron",
                                "thanks for the citation in the history section"]))
    hi, lo = scores["toxicity_score"]
    assert hi > lo
    # without the mapping the same file is refused before training, naming the values
    with pytest.raises(ValueError, match="values found"):
        ToxicityClassifierFilter.train_model(
            ToxicityClassifierConfig(train_path=str(path), text_field="tweet",
                                     label_field="class"), {}, _ctx(tmp_path, "tox2"))


def test_quality_reference_file_with_labels(tmp_path):
    from pipeline.filters.classifier import QualityClassifierConfig, QualityClassifierFilter
    ref = tmp_path / "ref.jsonl"
    good = "The committee reviewed the evidence and published a detailed report on the findings."
    bad = "click here buy now cheap cheap deals deals free free win win"
    ref.write_text("".join(json.dumps({"text": f"{good} ({i})", "grade": "high"}) + "\n"
                           for i in range(12)) +
                   "".join(json.dumps({"text": f"{bad} {i}", "grade": "low"}) + "\n"
                           for i in range(12)) +
                   "".join(json.dumps({"text": f"unrated {i}", "grade": "unknown"}) + "\n"
                           for i in range(3)))
    cfg = QualityClassifierConfig(reference_paths=[str(ref)], reference_label_field="grade",
                                  positive_labels=["high"], negative_labels=["low"],
                                  keep_top_fraction=None, min_score=0.5)
    corpus = tmp_path / "corpus" / "data"
    corpus.mkdir(parents=True)
    import pyarrow as pa
    pq.write_table(pa.table({"text": [f"{bad} corpus {i}" for i in range(6)]}),
                   corpus / "part-0.parquet")
    ctx = _ctx(tmp_path, "q")
    metrics = QualityClassifierFilter.train_model(cfg, {"web": corpus.parent}, ctx)
    # 12 labelled positives; negatives = 12 labelled low + 6 corpus docs; 'unknown' left
    # out; a stratified 10% holdout takes 1 positive and 2 negatives
    assert metrics["n_train_pos"] == 11 and metrics["n_train"] == 11 + 16
    f = QualityClassifierFilter(cfg, ctx.out_dir)
    from pipeline.filters.text import TextBatch
    hi, lo = f.score(TextBatch([good, bad]))["quality_score"]
    assert hi > lo


# ---- 1-2. MLflow opens on the runs; runs are named ----------------------------------------

def test_run_names_carry_spec_moment_and_trial():
    import re
    from pipeline.tracking import run_name
    assert re.fullmatch(r"quickstart-\d{8}-\d{6}", run_name("quickstart"))
    at = 1_800_000_000.0
    assert run_name("mix", "trial-3", at=at).endswith("-trial-3")
    assert run_name("mix", at=at) != run_name("mix", at=at + 1)


def test_experiments_are_model_training_with_a_useful_default_view(tmp_path):
    from mlflow.tracking import MlflowClient
    from pipeline.tracking import Tracker
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # an experiment made before this fix (no kind) gets the kind on the next run
    old = client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    t_old = Tracker(uri, "old")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    t = Tracker(uri, "fresh", artifact_root=tmp_path / "art")
    exp = client.get_experiment(t.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    t.set_default_view(["bpb.pretrain.code", "acc.arc_easy"], ["mix.code", "mix.docs"])
    t.set_default_view(["bpb.pretrain.docs"], ["mix.code"])      # a later run adds its keys
    view = json.loads(client.get_experiment(t.experiment_id).tags["mlflow.sharedViewState.forgeflow"])
    assert view["selectedColumns"] == ["attributes.`Dataset`", "metrics.`acc.arc_easy`",
                                       "metrics.`bpb.pretrain.code`", "params.`mix.code`",
                                       "params.`mix.docs`", "metrics.`bpb.pretrain.docs`"]
    assert view["orderByKey"] == "attributes.start_time" and view["orderByAsc"] is False
    assert t.experiment_url("http://127.0.0.1:5000") == (
        f"http://127.0.0.1:5000/#/experiments/{t.experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=forgeflow")
    assert t_old.experiment_id == old


# ---- 3. `forgeflow ui` leaves nothing behind ---------------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:200]
    except OSError:
        return b""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how,jobs", [("SIGINT", "false"), ("SIGTERM", "true")])
def test_ui_stops_every_process_it_started(tmp_path, how, jobs):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM to `forgeflow ui`: the
    Prefect server, the MLflow server and everything they started (uvicorn workers, and
    with MLflow's job execution on, its job runner and huey consumers) are gone after."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from flows.procs import alive, descendants
    from tests.e2e_util import REPO, cli_env

    pp, mp = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--workdir", str(tmp_path),
                             "--prefect-port", str(pp), "--mlflow-port", str(mp)],
                            cwd=REPO, env={**cli_env(tmp_path),
                                           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": jobs},
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        up = {"prefect": False, "mlflow": False}
        deadline = time.time() + 240
        while time.time() < deadline and not all(up.values()):
            for name, url in (("prefect", f"http://127.0.0.1:{pp}/api/health"),
                              ("mlflow", f"http://127.0.0.1:{mp}/health")):
                try:
                    up[name] = up[name] or httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        assert all(up.values()), up
        before = descendants(proc.pid)
        if jobs == "true":                # MLflow's job runner starts its consumers late
            deadline = time.time() + 120
            while time.time() < deadline and not any(
                    b"huey_consumer" in _cmdline(p) for p in before):
                time.sleep(2)
                before = descendants(proc.pid)
            assert any(b"huey_consumer" in _cmdline(p) for p in before)
        assert len(before) >= 3, before   # two servers and at least one helper of theirs
        if how == "SIGINT":               # what a terminal does on Ctrl-C
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        time.sleep(1)
        left = sorted(p for p in before if alive(p))
        assert left == [], [_cmdline(p) for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
