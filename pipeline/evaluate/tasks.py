"""Zero-shot multiple-choice tasks, scored as lm-eval-harness does.

Each item is a context and a list of continuations. A choice's score is the summed
log-likelihood of its continuation tokens given the context; ``acc`` picks the highest
score, ``acc_norm`` the highest score divided by the continuation's length in
characters (RESEARCH.md "Evaluation"). Prompts follow lm-eval-harness:
``"Question: {question}\\nAnswer:"`` + ``" {choice}"`` for ARC-Easy and PIQA. The context
is preceded by EOS, the token every training document follows.

Readers never stop on a bad record: it is counted and reported as ``file:line: why``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("forgeflow")


@dataclass
class MCItem:
    id: str
    context: str
    choices: list[str]      # continuations, with their leading space
    gold: int


@dataclass
class TaskData:
    items: list[MCItem] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)   # "file:line: reason"


def _jsonl(path: Path, data: TaskData):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                data.bad.append(f"{path}:{lineno}: not valid JSON ({exc.msg})")


def read_arc(path: Path, limit: int | None = None) -> TaskData:
    """ARC (AI2 JSONL): ``{"id", "question": {"stem", "choices": [{"text", "label"}]},
    "answerKey"}``; labels are letters or digits."""
    path, data = Path(path), TaskData()
    for lineno, rec in _jsonl(path, data):
        if limit is not None and len(data.items) >= limit:
            break
        try:
            q = rec["question"]
            stem = q["stem"]
            choices = q["choices"]
            labels = [str(c["label"]) for c in choices]
            texts = [c["text"] for c in choices]
            answer = str(rec["answerKey"])
        except (KeyError, TypeError) as exc:
            data.bad.append(f"{path}:{lineno}: missing field {exc}")
            continue
        if answer not in labels:
            data.bad.append(f"{path}:{lineno}: answerKey {answer!r} is not one of {labels}")
            continue
        if len(texts) < 2 or not all(isinstance(t, str) and t for t in texts + [stem]):
            data.bad.append(f"{path}:{lineno}: needs a question and at least 2 non-empty choices")
            continue
        data.items.append(MCItem(str(rec.get("id", lineno)), f"Question: {stem}\nAnswer:",
                                 [f" {t}" for t in texts], labels.index(answer)))
    return data


def read_piqa(path: Path, labels_path: Path, limit: int | None = None) -> TaskData:
    """PIQA: JSONL ``{"goal", "sol1", "sol2"}`` and a labels file, one 0/1 per line."""
    path, labels_path, data = Path(path), Path(labels_path), TaskData()
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    for lineno, rec in _jsonl(path, data):
        if limit is not None and len(data.items) >= limit:
            break
        if lineno > len(labels):
            data.bad.append(f"{path}:{lineno}: no label ({labels_path} has {len(labels)} lines)")
            continue
        label = labels[lineno - 1].strip()
        if label not in ("0", "1"):
            data.bad.append(f"{labels_path}:{lineno}: label {label!r} is not 0 or 1")
            continue
        try:
            goal, sols = rec["goal"], [rec["sol1"], rec["sol2"]]
        except (KeyError, TypeError) as exc:
            data.bad.append(f"{path}:{lineno}: missing field {exc}")
            continue
        if not all(isinstance(t, str) and t.strip() for t in [goal, *sols]):
            data.bad.append(f"{path}:{lineno}: goal, sol1 and sol2 must be non-empty strings")
            continue
        data.items.append(MCItem(str(rec.get("id", lineno)), f"Question: {goal}\nAnswer:",
                                 [f" {s}" for s in sols], int(label)))
    return data


def load_task(cfg) -> TaskData:
    """Read the task named by a ``TaskConfig``; bad records are logged, not fatal."""
    if cfg.name == "arc_easy":
        data = read_arc(Path(cfg.path), cfg.limit)
    else:
        data = read_piqa(Path(cfg.path), Path(cfg.labels_path), cfg.limit)
    for msg in data.bad[:20]:
        log.warning("skipped bad record: %s", msg)
    if len(data.bad) > 20:
        log.warning("... and %d more bad records in %s", len(data.bad) - 20, cfg.path)
    return data


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval-harness' split: encode context+continuation together (so BPE merges across
    the boundary are the real ones), then cut at the length of the encoded context."""
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    if whole[:len(ctx)] != ctx or len(whole) <= len(ctx):   # merge across the boundary
        return ctx, tok.encode(continuation, add_special_tokens=False)
    return whole[:len(ctx)], whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tok, requests: list[tuple[str, str]], eos_id: int, max_len: int,
                   batch_size: int = 8, device="cpu") -> list[float]:
    """Summed log P(continuation | EOS + context) for each ``(context, continuation)``."""
    encoded = []
    for context, cont in requests:
        c, k = encode_pair(tok, context, cont)
        seq = ([eos_id] + c + k)[-(max_len + 1):]
        # a continuation longer than the window is scored on its last max_len tokens
        encoded.append((seq, min(len(k), len(seq) - 1)))
    out = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(encoded[i][0]) for i in idx) - 1
        x = torch.full((len(idx), width), eos_id, dtype=torch.long)
        for j, i in enumerate(idx):
            seq = encoded[i][0]
            x[j, :len(seq) - 1] = torch.tensor(seq[:-1])
        logp = F.log_softmax(model(input_ids=x.to(device)).logits.float(), dim=-1).cpu()
        for j, i in enumerate(idx):
            seq, n_cont = encoded[i]
            targets = torch.tensor(seq[-n_cont:])
            pos = torch.arange(len(seq) - 1 - n_cont, len(seq) - 1)
            out[i] = float(logp[j, pos, targets].sum())
    return out


def evaluate_items(model, tok, items: list[MCItem], eos_id: int, max_len: int,
                   batch_size: int = 8, device="cpu") -> tuple[dict, list[dict]]:
    """``({"acc", "acc_norm", "items"}, per-item rows)``."""
    requests = [(it.context, ch) for it in items for ch in it.choices]
    lls = loglikelihoods(model, tok, requests, eos_id, max_len, batch_size, device)
    rows, k = [], 0
    for it in items:
        ll = np.array(lls[k:k + len(it.choices)])
        k += len(it.choices)
        norm = ll / np.array([len(c) for c in it.choices], dtype=float)
        pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
        rows.append({"id": it.id, "gold": it.gold, "pred": pred, "pred_norm": pred_norm,
                     "correct": pred == it.gold, "correct_norm": pred_norm == it.gold,
                     "loglikelihoods": [round(float(v), 4) for v in ll]})
    n = len(rows)
    summary = {"items": n,
               "acc": sum(r["correct"] for r in rows) / n if n else float("nan"),
               "acc_norm": sum(r["correct_norm"] for r in rows) / n if n else float("nan")}
    return summary, rows
