"""Memory-mapped access to the token shards, for training and evaluation.

``open_shards(tokenize_dir)`` gives ``{source: {split: ShardSet}}``. A ``ShardSet`` is
every shard of one source+split seen as one sequence of documents, and also as one
long token stream (documents in order, each ending in EOS) that ``window`` cuts from.
Nothing is read until asked for: ``.bin`` files are ``np.memmap``-ed, so a training
worker touches only the pages of the windows it samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.tokenize.megatron import read_index

SPLITS = ("train", "val")


class ShardSet:
    """All ``*.bin``/``*.idx`` shards of one ``<source>/<split>/`` directory, in name order.

    ``len(s)`` documents (Megatron sequences), ``s.n_tokens`` tokens, ``s.total_bytes``
    UTF-8 bytes of the original text. A missing or empty directory is an empty set.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        idx_files = sorted(self.directory.glob("*.idx")) if self.directory.is_dir() else []
        self.prefixes = [p.with_suffix("") for p in idx_files]
        self._tokens: list[np.ndarray] = []       # memmap of each .bin
        self._lengths: list[np.ndarray] = []      # int32 per document, per shard
        self._doc_starts: list[np.ndarray] = []   # token offset of each document in its shard
        self._bytes: list[np.ndarray | None] = []
        self.dtype = None
        for prefix in self.prefixes:
            info = read_index(prefix.with_name(prefix.name + ".idx"))
            bin_path = prefix.with_name(prefix.name + ".bin")
            n = int(info.lengths.sum(dtype=np.int64))
            size = bin_path.stat().st_size if bin_path.exists() else -1
            if size != n * info.dtype.itemsize:
                raise ValueError(f"{bin_path}: {size} bytes, but {prefix.name}.idx describes "
                                 f"{n} tokens of {info.dtype} ({n * info.dtype.itemsize} bytes)")
            if self.dtype is not None and info.dtype != self.dtype:
                raise ValueError(f"{self.directory}: shards mix {self.dtype} and {info.dtype}")
            self.dtype = info.dtype
            self._tokens.append(np.memmap(bin_path, mode="r", dtype=info.dtype)
                                if n else np.zeros(0, dtype=info.dtype))
            self._lengths.append(info.lengths)
            self._doc_starts.append(info.pointers // info.dtype.itemsize)
            bytes_path = prefix.with_name(prefix.name + ".bytes.npy")
            self._bytes.append(np.load(bytes_path, mmap_mode="r") if bytes_path.exists() else None)
        self._shard_docs = np.cumsum([0] + [len(x) for x in self._lengths], dtype=np.int64)
        self._shard_tokens = np.cumsum([0] + [len(t) for t in self._tokens], dtype=np.int64)
        self.n_tokens = int(self._shard_tokens[-1])

    def __len__(self) -> int:
        return int(self._shard_docs[-1])

    def __repr__(self) -> str:
        return (f"ShardSet({str(self.directory)!r}, shards={len(self.prefixes)}, "
                f"documents={len(self)}, tokens={self.n_tokens})")

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents in {self.directory}")
        i %= n
        shard = int(np.searchsorted(self._shard_docs, i, side="right")) - 1
        return shard, i - int(self._shard_docs[shard])

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (EOS included), a read-only view into the memmap."""
        shard, j = self._locate(i)
        start = int(self._doc_starts[shard][j])
        return self._tokens[shard][start:start + int(self._lengths[shard][j])]

    def document_bytes(self, i: int) -> int:
        """UTF-8 bytes of the original text of document ``i`` (for bits per byte)."""
        shard, j = self._locate(i)
        b = self._bytes[shard]
        if b is None:
            raise FileNotFoundError(f"{self.prefixes[shard]}.bytes.npy is missing: these shards "
                                    "were not written by forgeflow's tokenize stage")
        return int(b[j])

    @property
    def document_lengths(self) -> np.ndarray:
        """Tokens per document, all shards (int64)."""
        return (np.concatenate(self._lengths).astype(np.int64) if self._lengths
                else np.zeros(0, dtype=np.int64))

    @property
    def total_bytes(self) -> int:
        if any(b is None for b in self._bytes):
            raise FileNotFoundError(f"{self.directory}: some shards have no .bytes.npy")
        return int(sum(int(b.sum(dtype=np.int64)) for b in self._bytes))

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the whole stream (int64), wrapping around
        modulo ``n_tokens`` so any start and any length are valid on a non-empty set."""
        if self.n_tokens == 0:
            raise ValueError(f"{self.directory} holds no tokens")
        if length < 0:
            raise ValueError(f"window length must be >= 0, got {length}")
        out = np.empty(length, dtype=np.int64)
        pos = start % self.n_tokens
        filled = 0
        while filled < length:
            shard = int(np.searchsorted(self._shard_tokens, pos, side="right")) - 1
            local = pos - int(self._shard_tokens[shard])
            take = min(length - filled, len(self._tokens[shard]) - local)
            out[filled:filled + take] = self._tokens[shard][local:local + take]
            filled += take
            pos = (pos + take) % self.n_tokens
        return out


def open_shards(tokenize_dir: Path) -> dict[str, dict[str, ShardSet]]:
    """``{source: {split: ShardSet}}`` for a tokenize artifact (``<dir>/<source>/<split>/``)."""
    tokenize_dir = Path(tokenize_dir)
    if not tokenize_dir.is_dir():
        raise FileNotFoundError(f"tokenize output {tokenize_dir} does not exist")
    stats_path = tokenize_dir / "stats.json"
    if stats_path.exists():
        sources = sorted(json.loads(stats_path.read_text()))
    else:
        sources = sorted(p.name for p in tokenize_dir.iterdir()
                         if p.is_dir() and any((p / s).is_dir() for s in SPLITS))
    return {src: {split: ShardSet(tokenize_dir / src / split) for split in SPLITS}
            for src in sources}
