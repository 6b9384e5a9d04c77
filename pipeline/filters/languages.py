"""Per-language behaviour of the heuristic filters: tokenizer language and FineWeb-2 thresholds.

Every heuristic step (``gopher_repetition``, ``gopher_quality``, ``c4``, ``fineweb``) has:

* ``semantics``: ``datatrove`` (default: the decisions FineWeb's reference implementation,
  datatrove 0.10.1, makes: its word tokenizer, definitions and rule order) or ``paper``
  (the papers' literal definitions over whitespace words, forgeflow's earlier behaviour).
* ``language``: the tokenizer language; ``null`` (default) = each document's ``lang``
  column (written by the ``langid`` step, or the input's own), English where unknown.
* ``language_thresholds: fineweb2``: thresholds and stop words of the document's language
  from FineWeb-2's published per-language configs (``data/fineweb2_thresholds.json.gz``,
  1,929 language/script pairs, see ``data/make_fineweb2_table.py``), plus FineWeb-2's
  global changes for that filter (below). Languages absent from the table keep the step's
  own thresholds (English is FineWeb's, not in FineWeb-2's table).
* ``per_language: {de: {max_avg_word_length: 12}, ...}``: overrides by language code
  (ISO 639-1 as langid writes it, ``deu`` or ``deu_Latn``), applied last.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from pipeline.filters.base import FilterConfig

TABLE_PATH = Path(__file__).parent / "data" / "fineweb2_thresholds.json.gz"

# step type -> {config field: FineWeb-2 config key}; and the values FineWeb-2's pipeline sets
# for every language (fineweb-2-pipeline.py: paragraph rules and duplicate-line characters
# off in the repetition filter, no short-line rule and 0.1 duplicate-line characters in the
# FineWeb filter, at least 2 stop words).
FINEWEB2_FIELDS: dict[str, dict[str, str]] = {
    "gopher_repetition": {"max_dup_line_fraction": "dup_line_frac", "top_ngram_max": "top_n_grams",
                          "dup_ngram_max": "dup_n_grams"},
    "gopher_quality": {"min_avg_word_length": "min_avg_word_length",
                       "max_avg_word_length": "max_avg_word_length",
                       "min_alpha_words_ratio": "max_non_alpha_words_ratio", "stop_words": "stopwords"},
    "fineweb": {"min_line_punct_ratio": "line_punct_thr", "max_newline_per_word": "new_line_ratio"},
    "c4": {},
}
FINEWEB2_GLOBAL: dict[str, dict[str, Any]] = {
    "gopher_repetition": {"max_dup_para_fraction": None, "max_dup_line_char_fraction": None,
                          "max_dup_para_char_fraction": None},
    "gopher_quality": {"min_stop_words": 2},
    "fineweb": {"max_short_line_ratio": None, "max_dup_line_char_ratio": 0.1},
    "c4": {},
}


@lru_cache(maxsize=1)
def fineweb2_table() -> dict:
    with gzip.open(TABLE_PATH, "rt", encoding="utf-8") as f:
        return json.load(f)


def fineweb2_key(code: str | None) -> str | None:
    """The table's ``iso3_Script`` key for a language code (``de``, ``deu``, ``deu_Latn``)."""
    if not code:
        return None
    t = fineweb2_table()
    if code in t["languages"]:
        return code
    return t["aliases"].get(code) or t["aliases"].get(code.split("_")[0].split("-")[0])


def fineweb2_thresholds(step_type: str, code: str | None) -> dict[str, Any] | None:
    """Config values FineWeb-2 uses for ``step_type`` on language ``code`` (None if unlisted)."""
    key = fineweb2_key(code)
    if key is None:
        return None
    row = fineweb2_table()["languages"][key]
    out = dict(FINEWEB2_GLOBAL[step_type])
    for field, src in FINEWEB2_FIELDS[step_type].items():
        val = row.get(src)
        if isinstance(val, dict):
            val = {int(n): v for n, v in val.items()}
        out[field] = val
    return out


class LanguageAwareConfig(FilterConfig):
    """Fields and validation shared by the language-aware heuristic filter configs."""

    semantics: Literal["datatrove", "paper"] = "datatrove"
    language: str | None = None
    language_thresholds: Literal["fixed", "fineweb2"] = "fixed"
    per_language: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check_per_language(self):
        own = set(type(self).model_fields) - {"type", "name", "sources", "enabled", "per_language"}
        for lang, over in self.per_language.items():
            bad = sorted(set(over) - own)
            if bad:
                raise ValueError(f"per_language.{lang}: unknown field(s) {bad} for {self.type}")
            type(self).model_validate({**self.model_dump(exclude={"per_language"}), **over})
        return self

    def for_language(self, code: str | None):
        """This config as it applies to documents in language ``code``."""
        update: dict[str, Any] = {}
        if self.language_thresholds == "fineweb2":
            update.update(fineweb2_thresholds(self.type, code) or {})
        if code:
            key = fineweb2_key(code) if self.per_language else None
            for k in (code, code.split("_")[0], key):
                if k in self.per_language:
                    update.update(self.per_language[k])
                    break
        if not update:
            return self
        return type(self).model_validate({**self.model_dump(exclude={"per_language"}), **update})


def language_groups(cfg, langs: list[str | None] | None, n: int) -> list[tuple[Any, np.ndarray]]:
    """[(effective config, document indices)] for a batch: one group per distinct
    effective config (one group when nothing depends on the language)."""
    if langs is None or cfg.language is not None or \
            (cfg.language_thresholds == "fixed" and not cfg.per_language):
        code = cfg.language
        return [(cfg.for_language(code) if code else cfg, np.arange(n))]
    by_lang: dict[str | None, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(i)
    return [(cfg.for_language(lang), np.asarray(idx, dtype=np.int64)) for lang, idx in by_lang.items()]
