"""Fuzzing the spec loader and dotted overrides: whatever the YAML or the command line
holds, the answer is a SpecError whose message names the file or the override, never a
traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline.spec import SpecError, load_spec
from tests.fuzz_util import fuzz_settings

VALID = {"run": {"name": "f", "seed": 1},
         "sources": [{"name": "a", "type": "jsonl", "paths": ["x.jsonl"]}],
         "filters": {"steps": [{"type": "gopher_quality"}, {"type": "langid", "keep_languages": ["en"]}]},
         "dedup": {"threshold": 0.7},
         "train": {"steps": 10, "mixture": {"a": 1.0}, "model": {"d_model": 64}},
         "continual": {"phases": [{"name": "p", "steps": 5, "mixture": {"a": 1.0}}]}}

KEYS = ["run", "name", "seed", "sources", "0", "1", "paths", "type", "filters", "steps", "train",
        "model", "d_model", "mixture", "a", "continual", "phases", "dedup", "threshold", "extends",
        "", " ", "x", "-1", "99", "__class__", "tokenize", "tokenizer", "vocab_size"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["[]", "{}", "[1, 2]", "{a: 1}", "*x", "&x 1",
                                                           "!!python/object:os.system x", "'", "\"", "{",
                                                           "~", ".nan", "-.inf", "0x1F", "1e400"]))
TREES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                  st.dictionaries(st.sampled_from(KEYS), c, max_size=4)),
                     max_leaves=12)


def _load(text: bytes, overrides: list[str]):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_bytes(text)
        try:
            return load_spec(path, overrides)
        except SpecError as exc:
            msg = str(exc)
            assert msg.strip(), "empty error message"
            assert str(path) in msg or "override" in msg or "invalid spec" in msg, msg
            return None


@fuzz_settings(60)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    _load(data, [])


@fuzz_settings(60)
@given(TREES)
def test_arbitrary_yaml_trees(tree):
    _load(yaml.safe_dump(tree).encode(), [])


@fuzz_settings(80)
@given(st.lists(st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
                          st.one_of(SCALARS.map(str), st.sampled_from(["", "=", "a=b", "[", "{x: [1"]))),
                min_size=1, max_size=3))
def test_arbitrary_overrides_on_a_valid_spec(items):
    overrides = [".".join(keys) + "=" + value for keys, value in items]
    _load(yaml.safe_dump(VALID).encode(), overrides)


@fuzz_settings(40)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_arbitrary_override_strings(overrides):
    _load(yaml.safe_dump(VALID).encode(), overrides)


# ---- regressions found by the fuzzer -----------------------------------------------------

def test_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"run:\n  name: caf\xe9\n")
    try:
        load_spec(p)
    except SpecError as exc:
        assert str(p) in str(exc) and "UTF-8" in str(exc)
    else:
        raise AssertionError("accepted a non-UTF-8 spec")


def test_deeply_nested_yaml_is_a_spec_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    try:
        load_spec(p)
    except SpecError as exc:
        assert str(p) in str(exc)
    else:
        raise AssertionError("accepted")


def test_override_below_a_scalar_set_by_an_earlier_override(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(VALID))
    for overrides in (["run=5", "run.seed=1"], ["train.steps=3", "train.steps.x=1"],
                      ["sources.0=7", "sources.0.name=b"]):
        try:
            load_spec(p, overrides)
        except SpecError as exc:
            assert "override" in str(exc)
        else:
            raise AssertionError(overrides)
