"""The ``filters:`` section of the spec: an ordered list of filter steps.

Each step is one filter config, chosen by its ``type`` (a discriminated union built from
the registry, so a new filter needs no edit here). Omitting ``filters:`` gives FineWeb's
heuristic chain in FineWeb's order (Penedo et al. 2024): language ID (English, score >=
0.65), Gopher repetition, Gopher quality, C4, FineWeb. Every step can be removed,
reordered, renamed (``name``), disabled (``enabled: false``) or re-thresholded.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, model_validator

from pipeline.filters.badwords import BadWordsConfig
from pipeline.filters.c4 import C4Config
from pipeline.filters.fineweb import FineWebConfig
from pipeline.filters.gopher_quality import GopherQualityConfig
from pipeline.filters.gopher_repetition import GopherRepetitionConfig
from pipeline.filters.langid import LangIdConfig
from pipeline.filters.registry import FILTERS
from pipeline.specbase import Model

StepConfig = Annotated[Union[tuple(cls.config_cls for cls in FILTERS.values())],
                       Field(discriminator="type")]


def default_steps() -> list:
    return [LangIdConfig(), GopherRepetitionConfig(), GopherQualityConfig(), C4Config(),
            FineWebConfig()]


class FiltersConfig(Model):
    _resource_fields = frozenset({"batch_size", "rows_per_file", "rejected_sample"})

    steps: list[StepConfig] = Field(default_factory=default_steps)
    keep_scores: bool = Field(True, description="keep every filter's score columns in the kept data "
                                                "(rejected data always has them)")
    max_doc_chars: int = Field(2_000_000, description="longer documents are removed as 'input' "
                                                      "before any filter")
    rejected_sample: int = Field(20, ge=0, description="removed documents sampled per reason for reports")
    batch_size: int = Field(1000, ge=1)
    rows_per_file: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.step_name for s in self.steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"filter step names must be unique, repeated: {dup} "
                             "(give repeated types a distinct `name`)")
        if "input" in names:
            raise ValueError("'input' is reserved for the input checks; rename that step")
        return self


__all__ = ["FiltersConfig", "StepConfig", "BadWordsConfig", "C4Config", "FineWebConfig",
           "GopherQualityConfig", "GopherRepetitionConfig", "LangIdConfig"]
