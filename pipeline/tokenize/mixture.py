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


class _Blend:
    """Normalised weights over sources and their cumulative distribution."""

    def __init__(self, weights: dict[str, float], what: str) -> None:
        bad = {k: w for k, w in weights.items() if not (float(w) >= 0.0 and np.isfinite(w))}
        if bad:
            raise ValueError(f"{what} weights must be finite and >= 0, got {bad}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError(f"{what} weights sum to 0: {weights}")
        # sorted names: the draw does not depend on the order the YAML lists sources in
        self.sources = sorted(k for k, w in weights.items() if w > 0)
        self.weights = {s: float(weights[s]) / total for s in self.sources}
        self.cum = np.cumsum([self.weights[s] for s in self.sources])
        self.cum[-1] = 1.0

    def pick(self, u: float) -> str:
        return self.sources[min(int(np.searchsorted(self.cum, u, side="right")),
                                len(self.sources) - 1)]


class MixtureSampler:
    """``MixtureSampler(shards, weights, seq_len, seed)``: rows of ``seq_len + 1`` tokens
    (inputs = row[:-1], targets = row[1:]) from a source chosen with probability
    proportional to its weight and a uniform window position inside that source.

    Continual phases add two things, both still pure functions of ``(seed, step)``:

    * ``replay_weights`` / ``replay_fraction``: exactly ``round(s * B * r)`` of the first
      ``s`` global batches' rows are drawn from the replay blend (each step takes the
      difference, so every step is within one row of ``B * r`` and a phase realises the
      stated fraction to ``1 / (S * B)``); which rows of a step replay is a seeded
      permutation of the step.
    * ``switch_step`` / ``switch_weights``: from that step on the non-replay rows come from
      ``switch_weights`` (a blend switch inside a phase, Parmar et al. 2024).
    """

    def __init__(self, shards: dict[str, ShardSet], weights: dict[str, float],
                 seq_len: int, seed: int, *, replay_weights: dict[str, float] | None = None,
                 replay_fraction: float = 0.0, switch_step: int | None = None,
                 switch_weights: dict[str, float] | None = None) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not weights:
            raise ValueError(f"the mixture is empty; available sources: {sorted(shards)}")
        if not 0.0 <= replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {replay_fraction}")
        blends = {"mixture": weights}
        if replay_weights and replay_fraction > 0:
            blends["replay mixture"] = replay_weights
        if switch_weights is not None and switch_step is not None:
            blends["switch mixture"] = switch_weights
        for what, mix in blends.items():
            unknown = sorted(set(mix) - set(shards))
            if unknown:
                raise ValueError(f"{what} names unknown source(s) {unknown}; "
                                 f"available sources: {sorted(shards)}")
        self.main = _Blend(weights, "mixture")
        self.replay = _Blend(replay_weights, "replay mixture") \
            if "replay mixture" in blends else None
        self.replay_fraction = float(replay_fraction) if self.replay else 0.0
        self.switch = _Blend(switch_weights, "switch mixture") \
            if "switch mixture" in blends else None
        self.switch_step = int(switch_step) if self.switch else None
        used = set(self.main.sources)
        for b in (self.replay, self.switch):
            if b is not None:
                used |= set(b.sources)
        self.sources = sorted(used)
        empty = [s for s in self.sources if shards[s].n_tokens == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have positive mixture weight but no tokens "
                             f"(shards: {[str(shards[s].directory) for s in empty]})")
        self.shards = {s: shards[s] for s in self.sources}
        self.weights = self.main.weights   # the blend before replay and switch
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self._replay_rows_cache: tuple[int, int, frozenset] | None = None

    # ---- replay rows -----------------------------------------------------------------
    def replay_rows(self, step: int, batch_size: int) -> frozenset[int]:
        """Indices of the rows of the global batch for ``step`` that replay."""
        if self.replay is None:
            return frozenset()
        cached = self._replay_rows_cache
        if cached is not None and cached[:2] == (step, batch_size):
            return cached[2]
        r = self.replay_fraction * batch_size
        n = int(round((step + 1) * r)) - int(round(step * r))
        perm = np.random.default_rng([self.seed, int(step), 0x5E]).permutation(batch_size)
        rows = frozenset(int(i) for i in perm[:n])
        self._replay_rows_cache = (step, batch_size, rows)
        return rows

    # ---- one row ---------------------------------------------------------------------
    def _row_choice(self, step: int, row: int, batch_size: int | None = None) -> tuple[str, int]:
        """(source, window start) for one row: a pure function of (seed, step, row)."""
        rng = np.random.default_rng([self.seed, int(step), int(row)])
        u, v = rng.random(2)
        if batch_size is not None and row in self.replay_rows(step, batch_size):
            blend = self.replay
        elif self.switch is not None and step >= self.switch_step:
            blend = self.switch
        else:
            blend = self.main
        src = blend.pick(u)
        n = self.shards[src].n_tokens
        span = self.seq_len + 1
        # windows stay inside the stream when it is long enough; otherwise they wrap
        positions = n - span + 1 if n >= span else n
        return src, min(int(v * positions), positions - 1)

    def _rows(self, step: int, rows, batch_size: int) -> tuple[np.ndarray, list[str]]:
        rows = list(rows)
        out = np.empty((len(rows), self.seq_len + 1), dtype=np.int64)
        names = []
        for i, row in enumerate(rows):
            src, start = self._row_choice(step, row, batch_size)
            out[i] = self.shards[src].window(start, self.seq_len + 1)
            names.append(src)
        return out, names

    def row_windows(self, step: int, batch_size: int) -> list[tuple[str, int]]:
        """``(source, window start)`` of every row of the global batch (no tokens read)."""
        return [self._row_choice(step, row, batch_size) for row in range(batch_size)]

    # ---- batches ---------------------------------------------------------------------
    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        """int64 ``[batch_size, seq_len + 1]`` for ``step``."""
        return self._rows(step, range(batch_size), batch_size)[0]

    def global_batch_sources(self, step: int, batch_size: int) -> list[str]:
        """The source of each row of ``global_batch(step, batch_size)`` (cheap: no tokens read)."""
        return [src for src, _ in self.row_windows(step, batch_size)]

    def rank_batch(self, step: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
        """Rows ``rank::world_size`` of the global batch (only those rows are read)."""
        return self.rank_batch_with_sources(step, batch_size, rank, world_size)[0]

    def rank_batch_with_sources(self, step: int, batch_size: int, rank: int,
                                world_size: int) -> tuple[np.ndarray, list[str]]:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        return self._rows(step, range(rank, batch_size, world_size), batch_size)

    def tokens_per_source(self, step: int, batch_size: int) -> dict[str, int]:
        """Tokens each source contributes to ``step`` (for logging the realised mixture)."""
        counts = dict.fromkeys(self.sources, 0)
        for name in self.global_batch_sources(step, batch_size):
            counts[name] += self.seq_len
        return counts

    def realised(self, steps: int, batch_size: int) -> dict:
        """What ``steps`` global batches actually drew: tokens per source, replay rows
        and tokens per source among the replay rows (for logging and tests)."""
        tokens = dict.fromkeys(self.sources, 0)
        replay_tokens = dict.fromkeys(self.sources, 0)
        replay_rows = 0
        for step in range(steps):
            rep = self.replay_rows(step, batch_size)
            replay_rows += len(rep)
            for row, src in enumerate(self.global_batch_sources(step, batch_size)):
                tokens[src] += self.seq_len
                if row in rep:
                    replay_tokens[src] += self.seq_len
        rows = steps * batch_size
        return {"tokens": tokens, "replay_tokens": replay_tokens, "rows": rows,
                "replay_rows": replay_rows,
                "replay_fraction": replay_rows / rows if rows else 0.0}


def sampler_for(shards: dict, spec: dict, seq_len: int, default_seed: int) -> MixtureSampler:
    """The sampler a training ``spec`` (``pipeline.train.stage.loop_spec``) describes:
    ``mixture``, optional ``replay_mixture`` + ``replay``, ``switch_step`` +
    ``switch_mixture``, ``seed``. ``shards`` is ``open_shards(...)`` (train splits used)."""
    names = set(spec["mixture"]) | set(spec.get("replay_mixture") or {}) | \
        set(spec.get("switch_mixture") or {})
    unknown = sorted(names - set(shards))
    if unknown:
        raise ValueError(f"mixture names unknown source(s) {unknown}; "
                         f"available sources: {sorted(shards)}")
    return MixtureSampler({s: shards[s]["train"] for s in names}, spec["mixture"], seq_len,
                          spec.get("seed", default_seed),
                          replay_weights=spec.get("replay_mixture"),
                          replay_fraction=float(spec.get("replay", 0.0) or 0.0),
                          switch_step=spec.get("switch_step"),
                          switch_weights=spec.get("switch_mixture"))
