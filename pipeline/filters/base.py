"""The filter interface: a config model and a class with batch-wise ``score`` and ``keep``.

A filter sees a :class:`~pipeline.filters.text.TextBatch` (the surviving documents of one
Arrow batch), returns named score columns for every document (``score``) and turns them
into a keep mask plus a human-readable ``detail`` for each removed document (``keep``):
which rule fired and with what value, e.g. ``"word_count=12 < 50"``. A filter may also
rewrite the text (C4 drops lines); it then overrides ``apply``.

Adding a filter = one file with a config (``type: Literal["name"]``) and a ``Filter``
subclass, plus one line in ``pipeline/filters/registry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.specbase import Model
from pipeline.filters.text import TextBatch


class FilterConfig(Model):
    """Fields every filter step has. ``name`` defaults to the type and becomes the
    ``reason`` of removed documents and the prefix of its score columns."""

    type: str
    name: str | None = None
    enabled: bool = True
    sources: list[str] | None = None   # apply to these sources only (None = all); e.g. prose
                                       # rules on prose sources, never on a code source

    @property
    def step_name(self) -> str:
        return self.name or self.type


@dataclass
class FilterResult:
    keep: np.ndarray                         # bool per document of the batch
    detail: np.ndarray                       # object: str for removed docs, None for kept
    scores: dict[str, np.ndarray | list] = field(default_factory=dict)
    new_text: pa.Array | None = None         # set by filters that rewrite text
    # the batch's word tokenizations (TextBatch.tokens), set by the chain so the next
    # filter can reuse them for the documents this one kept
    tokens: dict | None = None


@dataclass
class Rule:
    """One threshold rule: documents where ``fails`` is true are removed with
    ``"<name>=<value> <op> <threshold>"`` as detail."""

    name: str
    values: np.ndarray
    fails: np.ndarray
    op: str = ""
    threshold: float | str = ""


def decide(rules: list[Rule], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep mask and detail strings; the detail names the first rule (in order) that fails,
    its value and what the rule requires."""
    keep = np.ones(n, dtype=bool)
    detail = np.full(n, None, dtype=object)
    for rule in rules:
        newly = rule.fails & keep
        for i in np.flatnonzero(newly):
            v = rule.values[i]
            v = f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
            # the value, then what the rule requires: "mean_word_length=2.9, need >= 3"
            detail[i] = f"{rule.name}={v}, need {rule.op} {rule.threshold}" if rule.op else f"{rule.name}={v}"
        keep &= ~rule.fails
    return keep, detail


class Filter:
    """Base class. Subclasses set ``config_cls`` and implement ``score`` and ``keep``."""

    config_cls: ClassVar[type[FilterConfig]]
    #: columns this filter adds and their Arrow types (names without the step prefix
    #: unless ``canonical`` — canonical columns keep their exact names, e.g. ``lang``)
    columns: ClassVar[dict[str, pa.DataType]] = {}
    canonical: ClassVar[bool] = False
    #: model kind this filter needs trained by the pipeline ("langid", "quality", "toxicity")
    model_kind: ClassVar[str | None] = None

    def __init__(self, cfg: FilterConfig, model_dir: Path | None = None):
        self.cfg = cfg
        self.name = cfg.step_name
        self.model_dir = model_dir

    # ---- what subclasses implement -------------------------------------------------
    def score(self, batch: TextBatch) -> dict[str, np.ndarray | list]:
        raise NotImplementedError

    def keep(self, scores: dict[str, np.ndarray | list]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ---- used by the chain -----------------------------------------------------------
    def needs_model(self) -> bool:
        """True when the pipeline must train this filter's model (no user model given)."""
        return False

    def column_name(self, col: str) -> str:
        return col if self.canonical else f"{self.name}_{col}"

    def output_columns(self) -> dict[str, pa.DataType]:
        return {self.column_name(c): t for c, t in self.columns.items()}

    def apply(self, batch: TextBatch) -> FilterResult:
        scores = self.score(batch)
        keep, detail = self.keep(scores)
        return FilterResult(keep=keep, detail=detail, scores=scores)


class LanguageAwareFilter(Filter):
    """A heuristic filter whose thresholds may depend on the document's language
    (``languages.LanguageAwareConfig``): ``score(batch)`` once, then ``keep(scores, cfg)``
    per group of documents sharing an effective config."""

    def groups(self, batch: TextBatch):
        from pipeline.filters.languages import language_groups
        return language_groups(self.cfg, batch.langs, batch.n)

    def keep_grouped(self, scores: dict, groups) -> tuple[np.ndarray, np.ndarray]:
        if len(groups) == 1:
            return self.keep(scores, groups[0][0])
        n = len(groups[0][1]) + sum(len(g[1]) for g in groups[1:])
        keep = np.ones(n, dtype=bool)
        detail = np.full(n, None, dtype=object)
        for cfg, idx in groups:
            k, d = self.keep({c: np.asarray(v)[idx] for c, v in scores.items()}, cfg)
            keep[idx], detail[idx] = k, d
        return keep, detail

    def apply(self, batch: TextBatch) -> FilterResult:
        groups = self.groups(batch)
        scores = self.score(batch, groups) if self.scores_depend_on_language else self.score(batch)
        keep, detail = self.keep_grouped(scores, groups)
        return FilterResult(keep=keep, detail=detail, scores=scores)

    #: True when ``score(batch, groups)`` needs the groups (per-language stop words)
    scores_depend_on_language: ClassVar[bool] = False
