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

**Chaining across phases** (``chain``): a continual phase's ``max_lr`` / ``start_lr`` may be
``previous``, the end value ``lr_at(T_prev)`` of the stage it starts from. A
``rewarm_cosine`` phase warms up from there by default (Gupta et al. 2023: re-warm from
where pretraining ended, not from zero or the phase's own floor). With this,

* the **infinite** schedule spans phases: ``{kind: constant, max_lr: previous,
  warmup_steps: 0}`` continues the constant without a re-warm, and an anneal branch
  (``init_from`` a constant-phase stage) decays from ``previous``;
* **WSD branches**: ``{kind: wsd, max_lr: previous, warmup_steps: 0, decay_fraction: 1}``
  is the decay of a WSD run forked from any constant-phase checkpoint;
* **Parmar et al. 2024**: ``{kind: cosine, max_lr: previous, warmup_steps: 0,
  min_lr_ratio: 0.01}`` after a cosine pretraining starts at the pretraining η_min and
  decays to η_min/100 with no warmup; ``switch_step`` gives the step where the LR reaches
  max/5, where the blend switches.

A new schedule is one function plus one line in ``SCHEDULES``.
"""

from __future__ import annotations

import math
from typing import Callable

from pipeline.train.config import PREVIOUS, ScheduleConfig


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
        return _warmup(step, w, 0.0, cfg.peak_lr)
    return _cosine_between((step - w) / max(total - w, 1), cfg.peak_lr, cfg.min_lr_value)


def rewarm_cosine(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    start = cfg.min_lr_value if cfg.start_lr is None else cfg.start_lr
    if step < w:
        return _warmup(step, w, start, cfg.peak_lr)
    return _cosine_between((step - w) / max(total - w, 1), cfg.peak_lr, cfg.min_lr_value)


def wsd(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    decay = int(round(cfg.decay_fraction * total))
    decay_start = max(total - decay, w)
    if step < w:
        return _warmup(step, w, 0.0, cfg.peak_lr)
    if step < decay_start:
        return cfg.peak_lr
    return _decay((step - decay_start) / max(total - decay_start, 1), cfg.peak_lr,
                  cfg.min_lr_value, cfg.decay_shape)


def infinite(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    const = cfg.const_lr_ratio * cfg.peak_lr
    cool_end = min(w + int(round(cfg.cooldown_fraction * total)), total)
    anneal = int(round(cfg.anneal_fraction * total))
    anneal_start = max(total - anneal, cool_end)
    if step < w:
        return _warmup(step, w, 0.0, cfg.peak_lr)
    if step < cool_end:
        return _cosine_between((step - w) / max(cool_end - w, 1), cfg.peak_lr, const)
    if anneal <= 0 or step < anneal_start:
        return const
    # exponential anneal: const * (min/const)^p, p in [0, 1]
    p = min((step - anneal_start) / max(total - anneal_start, 1), 1.0)
    return const * (cfg.min_lr_value / const) ** p


def constant(step: int, total: int, cfg: ScheduleConfig) -> float:
    w = cfg.warmup_for(total)
    if step < w:
        return _warmup(step, w, 0.0, cfg.peak_lr)
    return cfg.peak_lr


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


def end_lr(total_steps: int, cfg: ScheduleConfig) -> float:
    """Where a stage of ``total_steps`` under ``cfg`` ends: ``lr_at(total_steps)``."""
    return lr_at(total_steps, total_steps, cfg)


def chain(cfg: ScheduleConfig, previous_lr: float | None) -> ScheduleConfig:
    """``cfg`` with every ``previous`` replaced by ``previous_lr`` (where the stage a phase
    starts from ended). ``rewarm_cosine`` without a ``start_lr`` re-warms from
    ``previous_lr`` too. ``previous_lr=None`` (no previous stage) refuses ``previous``."""
    update = {}
    if cfg.kind == "rewarm_cosine" and cfg.start_lr is None and previous_lr is not None:
        update["start_lr"] = float(previous_lr)
    for name in ("max_lr", "start_lr"):
        if getattr(cfg, name) == PREVIOUS:
            if previous_lr is None:
                raise ValueError(f"schedule.{name} is 'previous' but there is no previous stage")
            if name == "max_lr" and previous_lr <= 0:
                raise ValueError(f"schedule.max_lr is 'previous' but the previous stage ended at "
                                 f"lr {previous_lr}; give a number")
            update[name] = float(previous_lr)
    return cfg.model_copy(update=update) if update else cfg


def switch_step(total_steps: int, cfg: ScheduleConfig, *, at_lr_ratio: float | None = None,
                at_fraction: float | None = None) -> int:
    """The first step (after warmup) whose lr is at most ``at_lr_ratio * peak`` (Parmar et
    al. 2024 switch the blend at max/5), or ``round(at_fraction * total_steps)``; the step
    count if the lr never gets that low."""
    if at_fraction is not None:
        return int(round(at_fraction * total_steps))
    target = at_lr_ratio * cfg.peak_lr
    for step in range(cfg.warmup_for(total_steps), total_steps):
        if lr_at(step, total_steps, cfg) <= target * (1 + 1e-12):
            return step
    return total_steps
