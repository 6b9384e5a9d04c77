"""The data mixture: sample training windows from per-source shards by weight.

A mixture is only weights over sources, so changing it re-uses the same shards and
re-runs only training. Each row of a batch is drawn independently from an RNG seeded
by ``(seed, step, row)``: the batch for a step is a pure function of
``(seed, step, batch_size, weights)``, never of world size or of what was read
before. That gives exact resume (no sampler state to checkpoint) and lets a run change
its worker count: rank ``r`` of ``w`` takes rows ``r::w`` of the same global batch.
"""

from __future__ import annotations

import numpy as np

from pipeline.tokenize.reader import ShardSet


class MixtureSampler:
    """``MixtureSampler(shards, weights, seq_len, seed)``: rows of ``seq_len + 1`` tokens
    (inputs = row[:-1], targets = row[1:]) from a source chosen with probability
    proportional to its weight and a uniform window position inside that source."""

    def __init__(self, shards: dict[str, ShardSet], weights: dict[str, float],
                 seq_len: int, seed: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not weights:
            raise ValueError(f"the mixture is empty; available sources: {sorted(shards)}")
        unknown = sorted(set(weights) - set(shards))
        if unknown:
            raise ValueError(f"mixture names unknown source(s) {unknown}; "
                             f"available sources: {sorted(shards)}")
        bad = {k: w for k, w in weights.items() if not (float(w) >= 0.0 and np.isfinite(w))}
        if bad:
            raise ValueError(f"mixture weights must be finite and >= 0, got {bad}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError(f"mixture weights sum to 0: {weights}")
        # sorted names: the draw does not depend on the order the YAML lists sources in
        self.sources = sorted(k for k, w in weights.items() if w > 0)
        empty = [s for s in self.sources if shards[s].n_tokens == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have positive mixture weight but no tokens "
                             f"(shards: {[str(shards[s].directory) for s in empty]})")
        self.shards = {s: shards[s] for s in self.sources}
        self.weights = {s: float(weights[s]) / total for s in self.sources}
        self._cum = np.cumsum([self.weights[s] for s in self.sources])
        self._cum[-1] = 1.0
        self.seq_len = int(seq_len)
        self.seed = int(seed)

    # ---- one row ---------------------------------------------------------------------
    def _row_choice(self, step: int, row: int) -> tuple[int, int]:
        """(source index, window start) for one row: a pure function of (seed, step, row)."""
        rng = np.random.default_rng([self.seed, int(step), int(row)])
        u, v = rng.random(2)
        k = min(int(np.searchsorted(self._cum, u, side="right")), len(self.sources) - 1)
        n = self.shards[self.sources[k]].n_tokens
        span = self.seq_len + 1
        # windows stay inside the stream when it is long enough; otherwise they wrap
        positions = n - span + 1 if n >= span else n
        return k, min(int(v * positions), positions - 1)

    def _rows(self, step: int, rows) -> tuple[np.ndarray, list[str]]:
        rows = list(rows)
        out = np.empty((len(rows), self.seq_len + 1), dtype=np.int64)
        names = []
        for i, row in enumerate(rows):
            k, start = self._row_choice(step, row)
            out[i] = self.shards[self.sources[k]].window(start, self.seq_len + 1)
            names.append(self.sources[k])
        return out, names

    # ---- batches ---------------------------------------------------------------------
    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        """int64 ``[batch_size, seq_len + 1]`` for ``step``."""
        return self._rows(step, range(batch_size))[0]

    def global_batch_sources(self, step: int, batch_size: int) -> list[str]:
        """The source of each row of ``global_batch(step, batch_size)`` (cheap: no tokens read)."""
        return [self.sources[self._row_choice(step, row)[0]] for row in range(batch_size)]

    def rank_batch(self, step: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
        """Rows ``rank::world_size`` of the global batch (only those rows are read)."""
        return self.rank_batch_with_sources(step, batch_size, rank, world_size)[0]

    def rank_batch_with_sources(self, step: int, batch_size: int, rank: int,
                                world_size: int) -> tuple[np.ndarray, list[str]]:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        return self._rows(step, range(rank, batch_size, world_size))

    def tokens_per_source(self, step: int, batch_size: int) -> dict[str, int]:
        """Tokens each source contributes to ``step`` (for logging the realised mixture)."""
        counts = dict.fromkeys(self.sources, 0)
        for name in self.global_batch_sources(step, batch_size):
            counts[name] += self.seq_len
        return counts
