"""The filter registry: ``type`` name -> filter class. A new filter is one line here."""

from __future__ import annotations

from pipeline.filters.badwords import BadWordsFilter
from pipeline.filters.base import Filter
from pipeline.filters.c4 import C4Filter
from pipeline.filters.classifier import QualityClassifierFilter, ToxicityClassifierFilter
from pipeline.filters.fineweb import FineWebFilter
from pipeline.filters.gopher_quality import GopherQualityFilter
from pipeline.filters.gopher_repetition import GopherRepetitionFilter
from pipeline.filters.langid import LangIdFilter
from pipeline.filters.url_blocklist import URLBlocklistFilter

FILTERS: dict[str, type[Filter]] = {
    "url_blocklist": URLBlocklistFilter,
    "langid": LangIdFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4": C4Filter,
    "fineweb": FineWebFilter,
    "badwords": BadWordsFilter,
    "quality_classifier": QualityClassifierFilter,
    "toxicity_classifier": ToxicityClassifierFilter,
}


def build(step, model_dir=None) -> Filter:
    """Instantiate the filter for one configured step."""
    return FILTERS[step.type](step, model_dir)
