"""A tiny three-source spec for the sweep tests: real text (Shakespeare paragraphs, Common
Crawl documents, the Python standard library's `email` package source), no filters, a
1-layer model trained for a few steps in-process, bits per byte on each source's
validation split."""

from __future__ import annotations

import email
from pathlib import Path

import yaml

from tests.conftest import shared_path


def small_spec(tmp: Path, **sections) -> Path:
    """Write the tiny pipeline spec to ``tmp/tiny.yaml`` (``sections`` deep-replace
    top-level sections, e.g. ``sweep={...}``) and return its path."""
    spec = {
        "run": {"name": "tiny", "workdir": str(tmp / "work"), "num_cpus": 2, "show_progress": False},
        "sources": [
            {"name": "prose", "type": "text", "text_unit": "paragraph",
             "paths": [str(shared_path("text", "tinyshakespeare.txt"))]},
            {"name": "web", "type": "jsonl", "paths": [str(shared_path("docs", "cc_en_head-0091.jsonl"))]},
            {"name": "code", "type": "text", "text_unit": "file",
             "paths": [str(Path(email.__file__).parent / "*.py")]},
        ],
        "filters": {"steps": []},
        "dedup": {"num_perm": 32, "bands": 8, "rows": 4},
        "tokenize": {"tokenizer": {"vocab_size": 400, "sample_docs": 400}, "val_fraction": 0.25},
        "train": {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 32},
                  "steps": 6, "batch_size": 4, "num_workers": 0, "eval_every": 0,
                  "checkpoint_every": 0, "log_every": 3, "val_tokens_per_source": 512,
                  "mixture": {"prose": 0.5, "web": 0.2, "code": 0.3},
                  "schedule": {"kind": "cosine", "max_lr": 0.01, "warmup_steps": 1}},
        "continual": {"enabled": False},
        "evaluate": {"max_tokens_per_source": 1500},
    }
    spec.update(sections)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
