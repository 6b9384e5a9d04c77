"""Shared test fixtures.

Real data lives in ../shared/data (see its SOURCES.md); tests that need it skip with a
clear message where it is absent. Nothing from there is ever copied into the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a message saying what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not found at {p} (expected ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for the whole test session."""
    from pipeline.engine import ensure_ray

    ray = ensure_ray(num_cpus=2)
    yield ray
