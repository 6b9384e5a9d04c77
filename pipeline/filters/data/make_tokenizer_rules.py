"""Regenerate ``tokenizer_rules.json.gz``: the word-tokenizer rules datatrove 0.10.1 applies.

    .venv/bin/python pipeline/filters/data/make_tokenizer_rules.py

Needs the dev extra (``datatrove==0.10.1``, ``spacy``); the pipeline itself only reads the
JSON. What it records, per spaCy language that ``spacy.blank`` builds without extra
packages: the tokenizer's prefix, suffix and infix regexes, its URL and token matchers and
its special cases (spaCy 3.8, MIT licence); the sentencizer's punctuation; and from
datatrove (Apache-2.0) the language -> tokenizer assignment table
(``assets/tokenizer_assignment.csv``), ``PUNCTUATION`` and ``TERMINAL_PUNCTUATION``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

from importlib.metadata import version
import spacy
from datatrove.utils._import_utils import ASSETS_PATH
from datatrove.utils.text import PUNCTUATION, TERMINAL_PUNCTUATION
from spacy.attrs import ORTH
from spacy.pipeline.sentencizer import Sentencizer

OUT = Path(__file__).with_name("tokenizer_rules.json.gz")


def _pattern(fn) -> str | None:
    return None if fn is None else fn.__self__.pattern


def main() -> None:
    rows = list(csv.DictReader(open(os.path.join(ASSETS_PATH, "tokenizer_assignment.csv"))))
    spacy_codes = sorted({r["tok_code"] for r in rows if r["type"] == "SpaCyTokenizer"})
    seen: dict[str, int] = {}
    tables: list = []

    def ref(value):
        """Index of ``value`` in ``tables`` (languages share identical patterns/specials)."""
        key = json.dumps(value, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen[key] = len(tables)
            tables.append(value)
        return seen[key]

    languages = {}
    for code in spacy_codes:
        if code in ("zh", "ja", "vi"):      # need jieba / SudachiPy / pyvi: not rule-based
            continue
        try:
            tok = spacy.blank(code).tokenizer
        except Exception:                   # noqa: BLE001 - language needs extra packages
            continue
        languages[code] = {
            "prefix": ref(_pattern(tok.prefix_search)),
            "suffix": ref(_pattern(tok.suffix_search)),
            "infix": ref(_pattern(tok.infix_finditer)),
            "url_match": ref(_pattern(tok.url_match)),
            "token_match": ref(_pattern(tok.token_match)),
            "specials": ref({k: [t.get("ORTH", t.get(ORTH)) for t in v] for k, v in sorted(tok.rules.items())}),
        }
    assignment = {}
    for r in rows:
        if not r["type"]:
            continue
        val = [r["type"], r["tok_code"]]
        key3 = f"{r['code_3']}_{r['script']}"
        assignment.setdefault(key3, val)
        if r["default_script"] == "TRUE":
            assignment.setdefault(r["code_3"], val)
        if r["code_1"] and r["default_code_1"] == "TRUE":
            assignment.setdefault(f"{r['code_1']}_{r['script']}", val)
            if r["default_script"] == "TRUE":
                assignment.setdefault(r["code_1"], val)
    data = {
        "source": f"spaCy {spacy.__version__} tokenizer rules; datatrove {version('datatrove')} "
                  "assets/tokenizer_assignment.csv and utils/text.py",
        "tables": tables,
        "languages": languages,
        "assignment": assignment,
        "punctuation": PUNCTUATION,
        "terminal_punctuation": "".join(sorted(TERMINAL_PUNCTUATION)),
        "sentencizer_punct_chars": "".join(sorted(Sentencizer.default_punct_chars)),
    }
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, sort_keys=True)
    print(f"{OUT}: {len(languages)} spaCy languages, {len(assignment)} assignments, "
          f"{OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
