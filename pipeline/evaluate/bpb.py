"""Bits per byte on held-out documents.

BPB = sum of token negative log-likelihoods (nats) / (ln 2 * sum of UTF-8 bytes)
(RESEARCH.md "Evaluation"). It does not depend on the tokenizer, so models with
different vocabularies compare, and it is what "loss on source X" means in a report.

Each document is scored whole: its text tokens are predicted after an EOS token (in
training every document follows an EOS), and the trailing EOS itself is not scored,
as in lm-eval-harness' ``loglikelihood_rolling``. A document longer than the context
is cut into windows that each score ``stride`` new tokens with as much preceding
context as fits (``stride == seq_len`` is lm-eval's rolling windows: the first window
predicts from the start, later windows carry the previous tokens as context). The
byte count is that of exactly the documents scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class BpbResult:
    nll: float = 0.0          # nats, summed
    tokens: int = 0           # tokens scored
    bytes: int = 0            # UTF-8 bytes of the documents scored
    documents: int = 0

    @property
    def bpb(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")

    @property
    def nll_per_token(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")


def rolling_windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows over a sequence ``s`` of length ``n`` whose targets are ``s[1:]``.

    Returns ``(i0, i1, a, b)``: feed ``s[i0:i1]`` (at most ``seq_len`` tokens) and score
    the targets ``s[a:b]``; every target in ``1..n-1`` is scored exactly once, each with
    at least ``seq_len - stride`` tokens of context (or all preceding tokens)."""
    if not 1 <= stride <= seq_len:
        raise ValueError(f"need 1 <= stride <= seq_len, got stride={stride}, seq_len={seq_len}")
    out, a = [], 1
    while a < n:
        b = min(a + stride, n)
        i1 = b - 1
        i0 = max(0, i1 - seq_len)
        out.append((i0, i1, a, b))
        a = b
    return out


@torch.no_grad()
def score_windows(model, rows: list[tuple[np.ndarray, int, int]], batch_size: int,
                  device, pad_id: int) -> float:
    """Sum of NLL (nats) over ``rows`` of ``(input_ids, first_target_pos, n_targets)``:
    the model's prediction at input position ``p`` is scored against ``input[p + 1]``,
    except the last position, scored against the provided next token. Right padding is
    harmless under causal attention."""
    total = 0.0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    for k in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[k:k + batch_size]]
        width = max(len(r[0]) for r in chunk) - 1
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for j, (seq, first, count) in enumerate(chunk):
            seq_t = torch.as_tensor(np.asarray(seq, dtype=np.int64))
            x[j, :len(seq) - 1] = seq_t[:-1]
            # targets: seq[1:], only the last `count` of them (positions first..first+count)
            y[j, first:first + count] = seq_t[1 + first:1 + first + count]
        logits = model(input_ids=x.to(device)).logits.float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                       y.to(device).reshape(-1), ignore_index=-100,
                                       reduction="sum"))
    return total


def document_rows(doc: np.ndarray, eos_id: int, seq_len: int, stride: int):
    """Rows for ``score_windows`` covering one document's text tokens."""
    doc = np.asarray(doc, dtype=np.int64)
    text = doc[:-1] if len(doc) and doc[-1] == eos_id else doc
    s = np.concatenate([[eos_id], text])
    rows = []
    for i0, i1, a, b in rolling_windows(len(s), seq_len, stride):
        # feed s[i0:i1] and score s[a:b]; include s[i1] as the final label so that
        # row = s[i0:i1 + 1] and targets are row[1:], of which we score the last b - a
        row = s[i0:i1 + 1]
        first = a - 1 - i0
        rows.append((row, first, b - a))
    return rows, len(text)


def bits_per_byte(model, shard_set, eos_id: int, seq_len: int, stride: int | None = None,
                  max_tokens: int | None = None, batch_size: int = 8,
                  device="cpu") -> BpbResult:
    """BPB of ``model`` on the documents of ``shard_set`` (a tokenize ``ShardSet``), in
    order, whole documents only, until about ``max_tokens`` tokens are covered."""
    stride = stride or seq_len
    res = BpbResult()
    rows: list = []
    model.eval()
    for i in range(len(shard_set)):
        doc = shard_set.document(i)
        if max_tokens is not None and res.documents and res.tokens + len(doc) > max_tokens:
            break
        doc_rows, n_text = document_rows(doc, eos_id, seq_len, stride)
        rows.extend(doc_rows)
        res.tokens += n_text
        res.bytes += shard_set.document_bytes(i)
        res.documents += 1
    res.nll = score_windows(model, rows, batch_size, device, eos_id)
    return res


class RetokenizedSet:
    """A ``ShardSet``'s documents re-encoded with another tokenizer, for BPB of a model
    whose vocabulary differs from the shards' (BPB exists to compare across tokenizers).

    Each document is decoded with the shards' tokenizer (byte-level BPE round-trips the
    text exactly) and encoded with the model's; its byte count stays the stored one, so
    every model is charged for exactly the same bytes."""

    def __init__(self, shard_set, source_tokenizer, target_tokenizer, source_eos: int,
                 target_eos: int) -> None:
        self.shard_set = shard_set
        self.src, self.dst = source_tokenizer, target_tokenizer
        self.src_eos, self.dst_eos = int(source_eos), int(target_eos)

    def __len__(self) -> int:
        return len(self.shard_set)

    def text(self, i: int) -> str:
        ids = self.shard_set.document(i)
        if len(ids) and ids[-1] == self.src_eos:
            ids = ids[:-1]
        return self.src.decode([int(t) for t in ids], skip_special_tokens=False)

    def document(self, i: int) -> np.ndarray:
        ids = self.dst.encode(self.text(i), add_special_tokens=False)
        ids = getattr(ids, "ids", ids)          # tokenizers.Encoding or a list
        return np.asarray(list(ids) + [self.dst_eos], dtype=np.int64)

    def document_bytes(self, i: int) -> int:
        return self.shard_set.document_bytes(i)
