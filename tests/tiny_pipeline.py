"""A whole pipeline small enough to run many times in a test: two JSONL sources cut from
Shakespeare paragraphs, cheap rule filters, dedup, a 400-token BPE, 6 training steps of a
tiny Llama in-process, a short continual phase, bits-per-byte. Used by the secrets and
chaos tests and bench/chaos.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare.txt"


def _paragraphs(n: int, text: str | None = None) -> list[str]:
    if text is None:
        text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.exists() else ""
    paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 200]
    if len(paras) < n:        # no shared data: a deterministic synthetic corpus
        words = ("the quick brown fox jumps over a lazy dog while seven bright stars "
                 "watch the quiet river run past old stone bridges at night").split()
        paras = [" ".join(words[(i * 7 + j) % len(words)] for j in range(60)) + f" {i}."
                 for i in range(n)]
    return paras[:n]


def write_tiny_spec(root: Path, name: str = "tiny", docs: int = 120, **sections) -> Path:
    """Write the corpus and spec under ``root``; return the spec path. ``sections``
    replace whole top-level sections of the spec."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paras = _paragraphs(docs)
    half = len(paras) // 2
    for src, chunk in (("plays", paras[:half]), ("more", paras[half:])):
        with open(root / f"{src}.jsonl", "w", encoding="utf-8") as f:
            for i, p in enumerate(chunk):
                f.write(json.dumps({"id": f"{src}-{i}", "text": p, "url": f"http://example.org/{src}/{i}"}) + "\n")
    spec = {
        "run": {"name": name, "seed": 7, "num_cpus": 2, "show_progress": False},
        "sources": [{"name": "plays", "type": "jsonl", "paths": ["plays.jsonl"]},
                    {"name": "more", "type": "jsonl", "paths": ["more.jsonl"]}],
        "extract": {"min_text_chars": 50},
        "filters": {"steps": [{"type": "gopher_repetition"}]},
        "dedup": {"threshold": 0.8},
        "tokenize": {"tokenizer": {"vocab_size": 400, "sample_docs": 1000}, "val_fraction": 0.1},
        "train": {"model": {"family": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
                  "steps": 6, "batch_size": 4, "mixture": {"plays": 0.5, "more": 0.5},
                  "schedule": {"kind": "cosine", "max_lr": 0.003, "warmup_steps": 2},
                  "num_workers": 0, "eval_every": 0, "checkpoint_every": 2, "log_every": 1},
        "continual": {"phases": [{"name": "more", "steps": 4, "mixture": {"plays": 0.2, "more": 0.8},
                                  "schedule": {"kind": "rewarm_cosine", "max_lr": 0.002,
                                               "warmup_fraction": 0.25}}]},
        "evaluate": {"bpb": True, "max_tokens_per_source": 2000},
    }
    spec.update(sections)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
