"""Spec validation: errors name the field path, the bad value and what is allowed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.spec import SpecError, apply_overrides, load_spec, validate_spec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _raw():
    return yaml.safe_load(QUICKSTART.read_text())


def _error(raw) -> str:
    with pytest.raises(SpecError) as exc:
        validate_spec(raw, source="t.yaml", base_dir=REPO / "configs")
    return str(exc.value)


def test_quickstart_is_valid():
    spec = load_spec(QUICKSTART)
    assert len(spec.sources) >= 2
    assert set(spec.train.mixture) <= {s.name for s in spec.sources}


def test_typo_names_path_and_suggests():
    raw = _raw()
    raw["train"]["stpes"] = 10
    msg = _error(raw)
    assert "train.stpes" in msg and "did you mean 'steps'" in msg and "allowed:" in msg


def test_bad_value_names_path_value_and_expectation():
    raw = _raw()
    raw["train"]["steps"] = "many"
    msg = _error(raw)
    assert "train.steps" in msg and '"many"' in msg and "integer" in msg


def test_bad_literal_lists_allowed_values():
    raw = _raw()
    raw["sources"][0]["type"] = "ftp"
    msg = _error(raw)
    assert "sources.0.type" in msg and "'crawl'" in msg and "'jsonl'" in msg


def test_crawl_source_needs_crawl_section():
    raw = _raw()
    raw["sources"].append({"name": "extra", "type": "crawl"})
    msg = _error(raw)
    assert "sources.3" in msg and "needs a 'crawl' section" in msg


def test_unknown_mixture_source():
    raw = _raw()
    raw["train"]["mixture"] = {"nosuch": 1.0}
    msg = _error(raw)
    assert "nosuch" in msg and "train.mixture" in msg


def test_credentials_in_tracking_uri_refused():
    raw = _raw()
    raw.setdefault("run", {})["tracking_uri"] = "https://alice:s3cret@mlflow.example/"
    msg = _error(raw)
    assert "run.tracking_uri" in msg and "environment" in msg and "s3cret" not in msg.split("got")[0]


def test_overrides_apply_and_parse_yaml_values():
    raw = apply_overrides(_raw(), ["train.steps=7", "train.mixture={docs: 0.25, code: 0.75}",
                                   "sources.0.crawl.max_pages=11"])
    spec = validate_spec(raw, base_dir=REPO / "configs")
    assert spec.train.steps == 7
    assert spec.train.mixture == {"docs": 0.25, "code": 0.75}
    assert spec.sources[0].crawl.max_pages == 11
    with pytest.raises(SpecError, match="dotted.path=value"):
        apply_overrides(_raw(), ["train.steps"])
    with pytest.raises(SpecError, match="not an index"):
        apply_overrides(_raw(), ["sources.9.name=x"])


def test_missing_source_file_is_named(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"name": "a", "type": "jsonl", "paths": ["nope.jsonl"]}],
                                   "train": {"mixture": {"a": 1.0}}}))
    spec = load_spec(cfg)
    with pytest.raises(SpecError, match=r"file not found: .*nope\.jsonl"):
        spec.source_files(spec.sources[0])


def test_cli_validate_reports_error_and_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(QUICKSTART),
                           "dedup.num_perm=abc"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "dedup.num_perm" in proc.stderr and '"abc"' in proc.stderr


def test_cli_validate_prints_plan_with_identities():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(QUICKSTART), "--json"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    keys = [s["key"] for s in stages]
    for expected in ("ingest.docs", "filter", "dedup", "tokenizer", "tokenize", "pretrain", "evaluate"):
        assert expected in keys
    assert all(len(s["identity"]) == 64 for s in stages)
    # topological: every input comes earlier
    seen = set()
    for s in stages:
        assert set(s["inputs"].values()) <= seen
        seen.add(s["key"])


def test_identity_ignores_resources_but_not_semantics():
    from pipeline.plan import build_plan
    from pipeline.runner import plan_identities

    base = plan_identities(build_plan(load_spec(QUICKSTART)))
    res = plan_identities(build_plan(load_spec(QUICKSTART, ["run.num_cpus=1", "run.workdir=/elsewhere",
                                                             "dedup.batch_size=7"])))
    assert res == base
    mixed = plan_identities(build_plan(load_spec(QUICKSTART, ["train.mixture={docs: 0.9, code: 0.1}"])))
    changed = {k for k in base if base[k] != mixed[k]}
    assert "tokenize" not in changed and "dedup" not in changed
    assert "pretrain" in changed and "evaluate" in changed


def test_schema_is_json_schema():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "schema"], cwd=REPO,
                          capture_output=True, text=True)
    schema = json.loads(proc.stdout)
    assert schema["additionalProperties"] is False
    assert {"run", "sources", "filters", "dedup", "tokenize", "train", "continual", "evaluate"} <= set(schema["properties"])


def test_deployments_point_at_the_flow_and_configs():
    from cronsim import CronSim
    import datetime as dt
    import inspect

    deploy = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    for d in deploy["deployments"]:
        module, fn = d["entrypoint"].split(":")
        assert module == "flows/end_to_end.py" and fn == "end_to_end"
        assert (REPO / d["parameters"]["config"]).exists(), d["parameters"]["config"]
        from flows.end_to_end import end_to_end
        assert set(d["parameters"]) <= set(inspect.signature(end_to_end.fn).parameters)
        load_spec(REPO / d["parameters"]["config"], d["parameters"].get("overrides", []))
        for s in d.get("schedules", []):
            next(CronSim(s["cron"], dt.datetime(2026, 1, 1)))


def test_extends_deep_merges_and_shares_data_identities(tmp_path):
    from pipeline.plan import build_plan
    from pipeline.runner import plan_identities

    spec = load_spec(REPO / "configs" / "continual.yaml")
    assert spec.run.name == "continual" and spec.train.schedule.kind == "infinite"
    assert [p.name for p in spec.continual.phases] == ["code", "anneal"]
    assert spec.train.model.d_model == load_spec(QUICKSTART).train.model.d_model   # inherited
    a = plan_identities(build_plan(spec))
    b = plan_identities(build_plan(load_spec(QUICKSTART)))
    assert a["tokenize"] == b["tokenize"] and a["pretrain"] != b["pretrain"]
    # a mixture is one value: the extending spec's replaces the base's, as an override does
    # (configs/papers/base.yaml pretrains on prose; merged, the quickstart's code weight stayed)
    papers = load_spec(REPO / "configs" / "papers" / "base.yaml")
    assert papers.train.mixture == {"docs": 0.9, "web": 0.1}
    assert papers.train.model == load_spec(QUICKSTART).train.model          # sections still merge
    assert load_spec(REPO / "configs" / "dapt.yaml").train.mixture == {"code": 0.8, "docs": 0.2}
    loop = tmp_path / "a.yaml"
    loop.write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="loops back"):
        load_spec(loop)
