"""The Megatron indexed-dataset format (``.bin`` + ``.idx``), written and read with numpy.

Layout (RESEARCH.md "Token shard formats"; megatron-core
``megatron/core/datasets/indexed_dataset.py``, ``_IndexWriter`` / ``_IndexReader``):

``.bin``  token ids back to back, no header; uint16 if the vocabulary has <= 65,536
          entries, else int32.
``.idx``  ``MMIDIDX\\x00\\x00`` (9 bytes) | uint64 version = 1 | uint8 dtype code
          (8 = uint16, 4 = int32) | uint64 sequence count N | uint64 document count
          (N + 1) | int32[N] sequence lengths | int64[N] byte offsets into ``.bin`` |
          int64[N + 1] document indices (0, 1, ..., N: every document is one sequence).

All integers little-endian. Megatron-LM, NeMo and GPT-NeoX read these files as is.

Beside the pair we keep ``<prefix>.bytes.npy`` (int64 per sequence: UTF-8 bytes of the
original text it came from), which bits-per-byte needs and Megatron ignores.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
               np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
               np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else int32 (RESEARCH.md)."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


class IndexedDatasetWriter:
    """Streams documents into ``prefix.bin`` and writes ``prefix.idx`` on ``close()``.

    Only the sequence lengths (4 bytes per document) stay in memory; token data goes
    straight to disk, so a shard of any size is written with bounded memory.
    """

    def __init__(self, prefix: Path, dtype) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self.bin_path, "wb")
        self._lengths: list[int] = []
        self.n_tokens = 0
        self.closed = False

    @property
    def bin_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".bin")

    @property
    def idx_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".idx")

    @property
    def n_documents(self) -> int:
        return len(self._lengths)

    @property
    def nbytes(self) -> int:
        """Bytes of token data written so far (the size of ``.bin``)."""
        return self.n_tokens * self.dtype.itemsize

    def add_document(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"a document is a 1-D array of token ids, got shape {tokens.shape}")
        if tokens.dtype != self.dtype:
            if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
                raise ValueError(f"token ids outside {self.dtype} in document {self.n_documents} "
                                 f"of {self.prefix}")
            tokens = tokens.astype(self.dtype)
        self._bin.write(np.ascontiguousarray(tokens).tobytes())
        self._lengths.append(int(tokens.size))
        self.n_tokens += int(tokens.size)

    def close(self) -> None:
        if self.closed:
            return
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(self.idx_path, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", INDEX_VERSION))
            f.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(lengths.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(doc_idx.astype("<i8").tobytes())
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclass
class IndexInfo:
    dtype: np.dtype
    lengths: np.ndarray        # int32[N]
    pointers: np.ndarray       # int64[N], byte offsets into .bin
    doc_idx: np.ndarray        # int64[N + 1]

    def __len__(self) -> int:
        return len(self.lengths)


def read_index(idx_path: Path) -> IndexInfo:
    """Parse a ``.idx`` file; a file that is not one gives an error naming it and why."""
    idx_path = Path(idx_path)
    with open(idx_path, "rb") as f:
        header = f.read(len(INDEX_HEADER))
        if header != INDEX_HEADER:
            raise ValueError(f"{idx_path}: not a Megatron index (header {header!r}, "
                             f"expected {INDEX_HEADER!r})")
        version, = struct.unpack("<Q", f.read(8))
        if version != INDEX_VERSION:
            raise ValueError(f"{idx_path}: index version {version}, only {INDEX_VERSION} is known")
        code, = struct.unpack("<B", f.read(1))
        if code not in CODE_DTYPES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        n_seq, = struct.unpack("<Q", f.read(8))
        n_doc, = struct.unpack("<Q", f.read(8))
        offset = f.tell()
    buf = np.memmap(idx_path, mode="r", dtype=np.uint8)
    need = offset + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if buf.size < need:
        raise ValueError(f"{idx_path}: truncated ({buf.size} bytes, header says {need})")
    lengths = np.frombuffer(buf, dtype="<i4", count=n_seq, offset=offset)
    offset += 4 * n_seq
    pointers = np.frombuffer(buf, dtype="<i8", count=n_seq, offset=offset)
    offset += 8 * n_seq
    doc_idx = np.frombuffer(buf, dtype="<i8", count=n_doc, offset=offset)
    return IndexInfo(CODE_DTYPES[code], lengths, pointers, doc_idx)


class RollingShardWriter:
    """Writes one source+split as ``<dir>/<name>_NNNNN.{bin,idx,bytes.npy}``, starting a
    new shard once the current one holds ``max_bytes`` of token data (a document is never
    split across shards, so a shard may exceed the limit by one document)."""

    def __init__(self, directory: Path, name: str, dtype, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.name = name
        self.dtype = np.dtype(dtype)
        self.max_bytes = max_bytes
        self.shards: list[Path] = []
        self._writer: IndexedDatasetWriter | None = None
        self._bytes: list[int] = []
        self.n_documents = 0
        self.n_tokens = 0
        self.n_text_bytes = 0
        self.directory.mkdir(parents=True, exist_ok=True)

    def add_document(self, tokens: np.ndarray, text_bytes: int) -> None:
        if self._writer is None:
            prefix = self.directory / f"{self.name}_{len(self.shards):05d}"
            self._writer = IndexedDatasetWriter(prefix, self.dtype)
            self.shards.append(prefix)
        self._writer.add_document(tokens)
        self._bytes.append(int(text_bytes))
        self.n_documents += 1
        self.n_tokens += int(len(tokens))
        self.n_text_bytes += int(text_bytes)
        if self._writer.nbytes >= self.max_bytes:
            self._roll()

    def _roll(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        np.save(self._writer.prefix.with_name(self._writer.prefix.name + ".bytes.npy"),
                np.asarray(self._bytes, dtype=np.int64))
        self._writer, self._bytes = None, []

    def close(self) -> None:
        self._roll()
