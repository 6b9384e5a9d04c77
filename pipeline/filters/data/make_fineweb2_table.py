"""Regenerate ``fineweb2_thresholds.json.gz`` from FineWeb-2's per-language filter configs.

    .venv/bin/python pipeline/filters/data/make_fineweb2_table.py PATH/TO/fineweb-2/configs

Source: https://github.com/huggingface/fineweb-2 ``configs/{iso3}_{script}.yml`` (ODC-By),
one file per language and script, with the thresholds ``fineweb-2-pipeline.py`` passes to
datatrove's GopherRepetitionFilter, FineWebQualityFilter and GopherQualityFilter, and the
GlotLID score threshold. ``aliases`` maps ISO 639-1 codes (what the ``langid`` step writes)
and bare ISO 639-3 codes to the language's default script, after datatrove's
``tokenizer_assignment.csv`` plus the macrolanguages FineWeb-2 publishes under an
individual language's code (``zh`` -> ``cmn_Hani``, ...).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("fineweb2_thresholds.json.gz")
MACRO = {"zh": "cmn_Hani", "zho": "cmn_Hani", "ar": "arb_Arab", "ara": "arb_Arab", "fa": "pes_Arab",
         "fas": "pes_Arab", "ms": "zsm_Latn", "msa": "zsm_Latn", "et": "ekk_Latn", "est": "ekk_Latn",
         "lv": "lvs_Latn", "lav": "lvs_Latn", "sw": "swh_Latn", "swa": "swh_Latn", "uz": "uzn_Latn",
         "uzb": "uzn_Latn", "no": "nob_Latn", "nor": "nob_Latn", "ne": "npi_Deva", "nep": "npi_Deva",
         "sq": "als_Latn", "sqi": "als_Latn", "mn": "khk_Cyrl", "mon": "khk_Cyrl", "az": "azj_Latn",
         "aze": "azj_Latn", "ps": "pbt_Arab", "pus": "pbt_Arab", "or": "ory_Orya", "ori": "ory_Orya",
         "ku": "kmr_Latn", "kur": "kmr_Latn", "qu": "quy_Latn", "que": "quy_Latn", "om": "gaz_Latn",
         "orm": "gaz_Latn", "ku": "kmr_Latn", "yi": "ydd_Hebr", "yid": "ydd_Hebr", "gn": "gug_Latn",
         "grn": "gug_Latn", "mg": "plt_Latn", "mlg": "plt_Latn", "bn": "ben_Beng"}


def main(configs: Path) -> None:
    table = {}
    for p in sorted(configs.glob("*.yml")):
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
        table[p.stem] = {
            "language_score": cfg.get("language_score"),
            "dup_line_frac": cfg.get("dup_line_frac"),
            "top_n_grams": {int(n): float(v) for n, v in cfg.get("top_n_grams", [])},
            "dup_n_grams": {int(n): float(v) for n, v in cfg.get("dup_n_grams", [])},
            "line_punct_thr": cfg.get("line_punct_thr"),
            "new_line_ratio": cfg.get("new_line_ratio"),
            "min_avg_word_length": cfg.get("min_avg_word_length"),
            "max_avg_word_length": cfg.get("max_avg_word_length"),
            "max_non_alpha_words_ratio": cfg.get("max_non_alpha_words_ratio"),
            "stopwords": [str(w) for w in cfg.get("stopwords", [])],
        }
    aliases = {}
    import datatrove.utils._import_utils as dt
    rows = list(csv.DictReader(open(os.path.join(dt.ASSETS_PATH, "tokenizer_assignment.csv"))))
    for r in rows:
        key = f"{r['code_3']}_{r['script']}"
        if key in table and r["default_script"] == "TRUE":
            aliases.setdefault(r["code_3"], key)
            if r["code_1"] and r["default_code_1"] == "TRUE":
                aliases.setdefault(r["code_1"], key)
    for code, key in MACRO.items():
        if key in table:
            aliases[code] = key
    data = {"source": "huggingface/fineweb-2 configs/*.yml (thresholds of fineweb-2-pipeline.py)",
            "languages": table, "aliases": dict(sorted(aliases.items()))}
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, sort_keys=True)
    print(f"{OUT}: {len(table)} language/script configs, {len(aliases)} aliases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
