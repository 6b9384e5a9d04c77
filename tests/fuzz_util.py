"""Shared settings for the hypothesis fuzz tests (tests/test_fuzz_*.py).

Example counts are modest so the fuzz tests take well under a minute on a 2-core
machine; ``FORGEFLOW_FUZZ_EXAMPLES=2000`` raises them for a long run. Examples are
derandomized (a fixed seed per test), so CI is reproducible; a long run can set
``FORGEFLOW_FUZZ_RANDOM=1`` to explore new inputs."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(default: int) -> settings:
    n = int(os.environ.get("FORGEFLOW_FUZZ_EXAMPLES") or default)
    return settings(max_examples=n, deadline=None, database=None,
                    derandomize=not os.environ.get("FORGEFLOW_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
