"""Learning-rate schedules: pure functions ``lr(step, total_steps, cfg) -> float``.

The loop sets the optimizer's learning rate to ``lr_at(step, total_steps, cfg)`` before
optimizer step ``step`` (0-based), so the schedule is a function of the step alone and a
resumed run follows exactly the same curve. ``lr_at(total_steps)`` is the end value
(``min_lr`` for the decaying schedules). Formulas from /work/shared/RESEARCH.md:

* ``cosine``: linear warmup ``max_lr * t / T_w``, then
  ``min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p))``, ``p = (t - T_w) / (T - T_w)``;
  ``min_lr = 0.1 * max_lr`` by default (Chinchilla / GPT-3 practice).
* ``rewarm_cosine``: the same curve for a continual-pretraining phase, but the warmup
  starts from ``start_lr`` (default: ``min_lr``, where the previous cosine ended) and is
  short: ~1% of the new steps (Gupta et al. 2023, Ibrahim et al. 2024).
* ``wsd``: warmup, a long constant phase at ``max_lr``, then a short decay over the last
  ``decay_fraction`` (MiniCPM: 10-20%) of steps. Checkpoints from the constant phase can
  be continued without re-warming.
* ``infinite``: warmup, a cosine cool-down over ``cooldown_fraction`` of the steps from
  ``max_lr`` to ``const_lr``, a constant phase at ``const_lr`` for as long as data arrives,
  and an optional exponential anneal to ``min_lr`` over the last ``anneal_fraction``
  (Beyond Cosine Decay, 2025). ``anneal_fraction = 0`` never anneals.
* ``constant``: warmup then ``max_lr``.

A new schedule is one function plus one line in ``SCHEDULES``.
"""

from __future__ import annotations

import math
from typing import Callable

from pipeline.train.config import ScheduleConfig


def _warmup(step: int, warmup: int, start: float, peak: float) -> float:
    """Linear from ``start`` at step 0 to ``peak`` at step ``warmup``."""
    return start + (peak - start) * step / warmup


def _cosine_between(p: float, hi: float, lo: float) -> float:
    """Cosine from ``hi`` (p=0) down to ``lo`` (p=1)."""
    p = min(max(p, 0.0), 1.0)
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * p))


def _decay(p: float, hi: float, lo: float, shape: str) -> float:
    p = min(max(p, 0.0), 1.0)
    if shape == "cosine":
        return _cosine_between(p, hi, lo)
    if shape == "1-sqrt":  # Hägele et al. 2024: better than linear for WSD cool-downs
        return lo + (hi - lo) * (1.0 - math.sqrt(p))
    return hi + (lo - hi) * p  # linear


def cosine(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    if step < w:
        return _warmup(step, w, 0.0, cfg.max_lr)
    return _cosine_between((step - w) / max(total - w, 1), cfg.max_lr, cfg.min_lr_value)


def rewarm_cosine(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    start = cfg.min_lr_value if cfg.start_lr is None else cfg.start_lr
    if step < w:
        return _warmup(step, w, start, cfg.max_lr)
    return _cosine_between((step - w) / max(total - w, 1), cfg.max_lr, cfg.min_lr_value)


def wsd(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    decay = int(round(cfg.decay_fraction * total))
    decay_start = max(total - decay, w)
    if step < w:
        return _warmup(step, w, 0.0, cfg.max_lr)
    if step < decay_start:
        return cfg.max_lr
    return _decay((step - decay_start) / max(total - decay_start, 1), cfg.max_lr,
                  cfg.min_lr_value, cfg.decay_shape)


def infinite(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    const = cfg.const_lr_ratio * cfg.max_lr
    cool_end = min(w + int(round(cfg.cooldown_fraction * total)), total)
    anneal = int(round(cfg.anneal_fraction * total))
    anneal_start = max(total - anneal, cool_end)
    if step < w:
        return _warmup(step, w, 0.0, cfg.max_lr)
    if step < cool_end:
        return _cosine_between((step - w) / max(cool_end - w, 1), cfg.max_lr, const)
    if anneal <= 0 or step < anneal_start:
        return const
    # exponential anneal: const * (min/const)^p, p in [0, 1]
    p = min((step - anneal_start) / max(total - anneal_start, 1), 1.0)
    return const * (cfg.min_lr_value / const) ** p


def constant(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    if step < w:
        return _warmup(step, w, 0.0, cfg.max_lr)
    return cfg.max_lr


SCHEDULES: dict[str, Callable[[int, int, ScheduleConfig], float]] = {
    "cosine": cosine,
    "rewarm_cosine": rewarm_cosine,
    "wsd": wsd,
    "infinite": infinite,
    "constant": constant,
}


def lr_at(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return float(SCHEDULES[cfg.kind](min(max(step, 0), total_steps), total_steps, cfg))


def lr_curve(total_steps: int, cfg: ScheduleConfig) -> list[float]:
    """The learning rate at every step 0..total_steps (for plots and tests)."""
    return [lr_at(s, total_steps, cfg) for s in range(total_steps + 1)]
