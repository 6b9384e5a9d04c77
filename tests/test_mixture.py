"""The mixture sampler: determinism, world-size independence, weights, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.tokenize.megatron import RollingShardWriter
from pipeline.tokenize.mixture import MixtureSampler
from pipeline.tokenize.reader import ShardSet, open_shards

SEQ = 16


def _source(d: Path, name: str, base: int, n_docs: int, max_bytes: int = 512) -> ShardSet:
    """A source whose tokens are ``base + k`` (k < 1000), so every token tells its source;
    small max_bytes -> several shards, so windows cross shard boundaries."""
    rng = np.random.default_rng(base)
    w = RollingShardWriter(d / name / "train", f"{name}_train", np.uint16, max_bytes)
    for _ in range(n_docs):
        doc = base + rng.integers(1, 1000, size=int(rng.integers(5, 60)))
        w.add_document(np.append(doc, base), text_bytes=len(doc) * 3)
    w.close()
    (d / name / "val").mkdir(parents=True, exist_ok=True)
    return ShardSet(d / name / "train")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    out = {"web": _source(d, "web", 1000, 300), "code": _source(d, "code", 3000, 80),
           "books": _source(d, "books", 5000, 40)}
    (d / "empty" / "train").mkdir(parents=True)
    out["empty"] = ShardSet(d / "empty" / "train")
    return out


def _src_of(row: np.ndarray) -> int:
    bases = set((row // 2000 * 2000 + 1000).tolist())
    assert len(bases) == 1, "a row mixes sources"
    return bases.pop()


def test_batch_shape_dtype_and_rows_are_windows_of_one_source(shards):
    s = MixtureSampler(shards, {"web": 0.5, "code": 0.3, "books": 0.2}, SEQ, seed=7)
    b = s.global_batch(3, 8)
    assert b.shape == (8, SEQ + 1) and b.dtype == np.int64
    names = s.global_batch_sources(3, 8)
    base = {"web": 1000, "code": 3000, "books": 5000}
    for row, name in zip(b, names):
        assert _src_of(row) == base[name]
        stream = np.concatenate([shards[name].document(i) for i in range(len(shards[name]))])
        # the row is a contiguous slice of the source's token stream
        starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(stream, SEQ + 1)
                                .__eq__(row).all(axis=1))
        assert len(starts) >= 1


def test_pure_function_of_seed_and_step(shards):
    w = {"web": 0.5, "code": 0.5}
    a = MixtureSampler(shards, w, SEQ, seed=1)
    b = MixtureSampler(shards, dict(reversed(list(w.items()))), SEQ, seed=1)   # order irrelevant
    for step in (0, 5, 10_000):
        assert np.array_equal(a.global_batch(step, 8), b.global_batch(step, 8))
    b.global_batch(1, 8)                                      # no hidden iteration state
    assert np.array_equal(a.global_batch(2, 8), b.global_batch(2, 8))
    assert not np.array_equal(a.global_batch(0, 8), a.global_batch(1, 8))
    assert not np.array_equal(a.global_batch(0, 8), MixtureSampler(shards, w, SEQ, 2).global_batch(0, 8))


def test_rank_batches_concatenate_to_the_global_batch(shards):
    s = MixtureSampler(shards, {"web": 0.6, "code": 0.3, "books": 0.1}, SEQ, seed=3)
    for step in range(4):
        g = s.global_batch(step, 12)
        assert np.array_equal(s.rank_batch(step, 12, 0, 1), g)
        for world in (2, 3, 4):
            parts = [s.rank_batch(step, 12, r, world) for r in range(world)]
            assert all(p.shape == (12 // world, SEQ + 1) for p in parts)
            rebuilt = np.empty_like(g)
            for r, p in enumerate(parts):
                rebuilt[r::world] = p
            assert np.array_equal(rebuilt, g)
    with pytest.raises(ValueError, match="not divisible"):
        s.rank_batch(0, 10, 0, 3)
    with pytest.raises(ValueError, match="not in a world"):
        s.rank_batch(0, 12, 2, 2)


def test_source_frequencies_follow_weights(shards):
    weights = {"web": 6.0, "code": 3.0, "books": 1.0}     # normalised to 0.6 / 0.3 / 0.1
    s = MixtureSampler(shards, weights, SEQ, seed=11)
    n, counts = 0, dict.fromkeys(weights, 0)
    for step in range(100):
        for name in s.global_batch_sources(step, 64):
            counts[name] += 1
            n += 1
    for name, w in weights.items():
        p = w / 10.0
        assert abs(counts[name] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (name, counts)
    assert s.weights == pytest.approx({"web": 0.6, "code": 0.3, "books": 0.1})
    assert sum(s.tokens_per_source(0, 64).values()) == 64 * SEQ


def test_zero_weight_source_never_sampled_and_may_be_empty(shards):
    s = MixtureSampler(shards, {"web": 1.0, "code": 0.0, "empty": 0.0}, SEQ, seed=0)
    assert set(s.global_batch_sources(0, 64)) == {"web"}


def test_errors_name_the_problem(shards):
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['wiki'\].*available sources: "
                                         r"\['books', 'code', 'empty', 'web'\]"):
        MixtureSampler(shards, {"wiki": 1.0, "web": 1.0}, SEQ, seed=0)
    with pytest.raises(ValueError, match=r"\['empty'\] have positive mixture weight but no tokens"):
        MixtureSampler(shards, {"empty": 0.5, "web": 0.5}, SEQ, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        MixtureSampler(shards, {"web": -1.0}, SEQ, seed=0)
    with pytest.raises(ValueError, match="sum to 0"):
        MixtureSampler(shards, {"web": 0.0}, SEQ, seed=0)


def test_short_source_wraps(shards, tmp_path):
    tiny = {"tiny": _source(tmp_path, "tiny", 7000, 1)}
    n = tiny["tiny"].n_tokens
    s = MixtureSampler(tiny, {"tiny": 1.0}, seq_len=3 * n, seed=0)
    row = s.global_batch(0, 1)[0]
    assert len(row) == 3 * n + 1 and set(row.tolist()) <= set(tiny["tiny"].window(0, n).tolist())


def test_open_shards_feeds_the_sampler(shards):
    root = shards["web"].directory.parent.parent
    opened = open_shards(root)
    assert {"web", "code", "books"} <= set(opened)
    assert opened["web"]["train"].n_tokens == shards["web"].n_tokens
    assert len(opened["web"]["val"]) == 0
    train = {k: v["train"] for k, v in opened.items()}
    s = MixtureSampler(train, {"web": 1.0, "books": 1.0}, SEQ, seed=5)
    assert s.global_batch(0, 4).shape == (4, SEQ + 1)
