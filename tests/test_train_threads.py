"""Models built and loaded by several threads of one process at once.

Continual branches that start from the same stage, and sweep trials, train side by side
in one process (Prefect runs them as concurrent tasks; one worker trains in-process).
transformers builds and loads models under process-wide switches (meta-device and
no-init contexts), so without forgeflow's lock one thread's model came out with meta
tensors or uninitialised weights while another loaded (`make papers`: "Cannot copy out of
meta tensor" in a continual branch)."""

from __future__ import annotations

import threading

import torch

from pipeline.train.config import ModelConfig
from pipeline.train.model import build_model, load_model


def test_models_built_and_loaded_in_parallel_threads_are_whole(tmp_path):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64)
    saved = build_model(cfg, 512, seed=1)
    saved.save_pretrained(tmp_path / "base")
    want_loaded = {k: v.clone() for k, v in saved.state_dict().items()}
    want_built = {k: v.clone() for k, v in build_model(cfg, 512, seed=7).state_dict().items()}
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            for _ in range(6):
                if i % 2:
                    model, want = load_model(tmp_path / "base"), want_loaded
                else:
                    model, want = build_model(cfg, 512, seed=7), want_built
                for k, v in model.state_dict().items():
                    if v.is_meta or not torch.equal(v, want[k]):
                        errors.append(f"thread {i}: {k} is {'meta' if v.is_meta else 'different'}")
                        return
        except Exception as exc:           # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


# Six threads of a fresh interpreter import the training and evaluation stages at the same
# moment (as continual branches and sweep trials do on their first stage), then use the
# transformers classes. Without ``resolve_transformers`` about two runs in three failed here
# with "cannot import name 'AutoConfig' from 'transformers'".
RACE = r"""
import importlib, threading
errors = []
barrier = threading.Barrier(6)
def worker(i):
    barrier.wait()
    try:
        importlib.import_module("pipeline.train.stage" if i % 2 else "pipeline.evaluate.stage")
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except Exception as exc:
        errors.append(repr(exc)[:200])
threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ERRORS", errors)
"""


def test_stage_modules_imported_by_threads_at_once_resolve_transformers():
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", RACE], cwd=repo, capture_output=True,
                             text=True, timeout=300)
        assert "ERRORS []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
