"""Learning-rate schedules: values at the steps that define each shape."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from pipeline.train.config import ScheduleConfig
from pipeline.train.schedules import SCHEDULES, lr_at, lr_curve


def test_cosine_warmup_peak_and_floor():
    cfg = ScheduleConfig(kind="cosine", max_lr=1e-3, warmup_steps=10)
    assert lr_at(0, 100, cfg) == 0.0
    assert lr_at(5, 100, cfg) == pytest.approx(5e-4)           # linear warmup
    assert lr_at(10, 100, cfg) == pytest.approx(1e-3)          # warmup end = max
    # halfway through the decay: midpoint between max and min (0.1 * max)
    assert lr_at(55, 100, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)         # end = min_lr = 0.1 max
    curve = lr_curve(100, cfg)
    assert all(a >= b for a, b in zip(curve[10:], curve[11:]))  # monotone decay
    assert min(curve[10:]) == pytest.approx(1e-4)


def test_cosine_min_lr_absolute_and_warmup_fraction():
    cfg = ScheduleConfig(kind="cosine", max_lr=2e-3, min_lr=0.0, warmup_fraction=0.05)
    assert cfg.warmup_for(200) == 10
    assert lr_at(10, 200, cfg) == pytest.approx(2e-3)
    assert lr_at(200, 200, cfg) == 0.0


def test_rewarm_starts_from_min_and_peaks_at_new_max():
    cfg = ScheduleConfig(kind="rewarm_cosine", max_lr=5e-4, min_lr_ratio=0.1,
                         warmup_fraction=0.01)
    total = 1000
    assert cfg.warmup_for(total) == 10
    assert lr_at(0, total, cfg) == pytest.approx(5e-5)         # starts at min (default)
    assert lr_at(10, total, cfg) == pytest.approx(5e-4)        # re-warm peak = new max
    assert max(lr_curve(total, cfg)) == pytest.approx(5e-4)
    assert lr_at(total, total, cfg) == pytest.approx(5e-5)
    zero_start = cfg.model_copy(update={"start_lr": 0.0})
    assert lr_at(0, total, zero_start) == 0.0
    assert lr_at(5, total, zero_start) == pytest.approx(2.5e-4)


def test_wsd_constant_then_short_decay():
    cfg = ScheduleConfig(kind="wsd", max_lr=1e-3, warmup_steps=10, decay_fraction=0.2)
    assert lr_at(10, 100, cfg) == pytest.approx(1e-3)
    for s in (10, 40, 79, 80):                                 # constant phase up to 80
        assert lr_at(s, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(90, 100, cfg) == pytest.approx((1e-3 + 1e-4) / 2)   # linear decay
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)
    sqrt = cfg.model_copy(update={"decay_shape": "1-sqrt"})
    assert lr_at(90, 100, sqrt) == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(0.5)))


def test_infinite_cooldown_constant_and_anneal():
    cfg = ScheduleConfig(kind="infinite", max_lr=1e-3, warmup_steps=10,
                         cooldown_fraction=0.2, const_lr_ratio=0.25)
    assert lr_at(10, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(20, 100, cfg) == pytest.approx((1e-3 + 2.5e-4) / 2)   # cosine midpoint
    for s in (30, 60, 100):                                             # constant, no anneal
        assert lr_at(s, 100, cfg) == pytest.approx(2.5e-4)
    ann = cfg.model_copy(update={"anneal_fraction": 0.1})
    assert lr_at(90, 100, ann) == pytest.approx(2.5e-4)                 # anneal starts at 90
    assert lr_at(95, 100, ann) == pytest.approx(math.sqrt(2.5e-4 * 1e-4))  # exponential
    assert lr_at(100, 100, ann) == pytest.approx(1e-4)


def test_constant_and_registry():
    cfg = ScheduleConfig(kind="constant", max_lr=3e-4, warmup_steps=4)
    assert lr_at(2, 50, cfg) == pytest.approx(1.5e-4)
    assert lr_at(4, 50, cfg) == lr_at(50, 50, cfg) == pytest.approx(3e-4)
    assert set(SCHEDULES) == {"cosine", "rewarm_cosine", "wsd", "infinite", "constant"}
    with pytest.raises(ValueError):
        lr_at(0, 0, cfg)
    with pytest.raises(ValidationError, match="kind"):
        ScheduleConfig(kind="linear")
