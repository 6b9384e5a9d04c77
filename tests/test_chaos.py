"""The chaos mechanism on a tiny pipeline: SIGKILL right after a commit, during training
(which resumes) and during evaluation; after every kill every artifact verifies; the final
identities are the statically computed ones and every metric equals an uninterrupted run's.
The full 20-kill quickstart run is `make chaos` (bench/chaos.py)."""

from __future__ import annotations

import sys

import pytest

from tests.e2e_util import REPO
from tests.tiny_pipeline import write_tiny_spec

pytestmark = pytest.mark.slow


def test_three_kills_then_identical_results(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import chaos
    spec = write_tiny_spec(tmp_path / "spec", name="chaos")
    lines = []

    def log(msg):
        lines.append(msg)
        print(msg, flush=True)          # shown by pytest on a failure
    report = chaos.chaos(str(spec), [], tmp_path / "chaos", tmp_path / "baseline", kills=3, seed=0,
                         timeout=1200, log=log,
                         at=[("commit", 0.0), ("train", 0.5), ("evaluate", 0.0)])
    assert report["violations"] == [], "\n".join(lines + report["violations"])
    assert report["killed"] >= 2, lines            # the moments really came (not finished first)
    whats = [k["what"] for k in report["kills"]]
    assert any("right after committing" in w for w in whats), whats
    assert report["stages_compared"] == 9
