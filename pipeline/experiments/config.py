"""Spec section ``sweep:``: which spec paths vary, how, and what to optimise.

A sweep file is an ordinary pipeline spec (usually one that ``extends:`` another) with a
``sweep:`` section. ``forgeflow run`` ignores the section; ``forgeflow sweep`` turns it
into trials, each the base spec plus dotted overrides.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.specbase import Model


class DirichletConfig(Model):
    """``n`` mixtures over ``sources`` drawn from Dirichlet(``alpha``), each weight at least
    its ``min_weight`` (drawn as ``min + (1 - sum(min)) * Dirichlet(alpha)``, so the
    minimums hold exactly and the rest of the simplex is sampled without rejection)."""

    sources: list[str] = Field(min_length=2, description="the sources whose weights vary")
    n: int = Field(6, ge=1, description="number of sampled mixtures (trials)")
    alpha: float | dict[str, float] = Field(
        1.0, description="concentration: one value (1.0 = uniform on the simplex) or one per source")
    seed: int = 0
    min_weight: float | dict[str, float] = Field(
        0.0, description="the least weight of each source: one value or one per source")
    target: str = Field("train.mixture", description="the spec path the mixture is written to "
                                                   "(e.g. continual.phases.0.mixture)")

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources repeat: {self.sources}")
        for name in ("alpha", "min_weight"):
            value = getattr(self, name)
            if isinstance(value, dict):
                missing = sorted(set(self.sources) - set(value))
                extra = sorted(set(value) - set(self.sources))
                if missing or extra:
                    raise ValueError(f"{name} per source must name exactly the sweep's sources "
                                     f"{self.sources} (missing {missing}, unknown {extra})")
        if any(a <= 0 for a in self.alphas.values()):
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        mins = self.min_weights
        if any(m < 0 for m in mins.values()) or sum(mins.values()) >= 1.0:
            raise ValueError(f"min_weight must be >= 0 and sum below 1 over the sources "
                             f"(sum is {sum(mins.values()):.3f})")
        return self

    @property
    def alphas(self) -> dict[str, float]:
        a = self.alpha
        return dict(a) if isinstance(a, dict) else {s: float(a) for s in self.sources}

    @property
    def min_weights(self) -> dict[str, float]:
        m = self.min_weight
        return dict(m) if isinstance(m, dict) else {s: float(m) for s in self.sources}


class SweepConfig(Model):
    """``sweep:``: trials are ``grid`` (every combination) crossed with the explicit
    ``list`` trials and the ``dirichlet`` mixtures (these two are concatenated); any one
    of the three may be left out. Every trial is an ordinary run of the base spec with
    the trial's dotted overrides, so the store shares every stage the trials agree on."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="default: run.name of the base spec")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted spec path -> the values to try "
                                          "(e.g. train.schedule.max_lr: [1e-3, 3e-3])")
    trials: list[dict[str, Any]] = Field(
        default_factory=list, alias="list",
        description="explicit trials, each a mapping of dotted spec path -> value")
    dirichlet: DirichletConfig | None = None
    metric: str | dict[str, float] = Field(
        ..., description="the evaluation metric to optimise (e.g. bpb.pretrain.code), or a "
                         "weighted sum of metrics {metric: weight, ...}")
    direction: Literal["minimize", "maximize"] = "minimize"
    max_parallel: int | None = Field(None, ge=1, description="trials at once; default: what the "
                                                           "machine's CPUs and memory hold")
    propose: bool = Field(False, description="fit the mixture regression on the trials, run its "
                                             "predicted best mixture as one more trial")
    ridge_alpha: float | None = Field(None, gt=0, description="ridge penalty; default chosen by "
                                                             "leave-one-out error")

    model_config = {**Model.model_config, "populate_by_name": True}

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, v: dict) -> dict:
        for path, values in v.items():
            if not values:
                raise ValueError(f"grid[{path}] has no values")
        return v

    @model_validator(mode="after")
    def _check(self):
        if not (self.grid or self.trials or self.dirichlet):
            raise ValueError("a sweep needs at least one of grid, list, dirichlet")
        if isinstance(self.metric, dict) and not self.metric:
            raise ValueError("metric: an empty weighted sum")
        if self.propose and self.dirichlet is None:
            raise ValueError("propose: true needs a dirichlet section (the regression maps "
                             "mixture weights to the metric)")
        if self.dirichlet is not None:
            clash = [p for p in self.grid if p == self.dirichlet.target or p.startswith(self.dirichlet.target + ".")]
            if clash:
                raise ValueError(f"grid varies {clash}, which dirichlet.target already sets")
        return self

    @property
    def metric_terms(self) -> dict[str, float]:
        return {self.metric: 1.0} if isinstance(self.metric, str) else dict(self.metric)

    @property
    def metric_label(self) -> str:
        if isinstance(self.metric, str):
            return self.metric
        return " + ".join(f"{w:g}*{k}" for k, w in self.metric.items())
