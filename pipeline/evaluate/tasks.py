"""Multiple-choice tasks from local files, scored as lm-eval-harness 0.4 scores them.

A task reads records in one of the **layouts** below (or any JSONL with a field mapping)
into items ``(query, choices, gold)``: ``query`` is lm-eval's ``doc_to_text``, ``choices``
its ``doc_to_choice`` (plain texts, *without* the target delimiter), ``gold`` the index
of the right choice. Prompts follow lm-eval-harness' task YAMLs:

================  ==========================================  ================================
layout            query (``doc_to_text``)                      choices / gold
================  ==========================================  ================================
``arc_easy``,     ``Question: {stem}\\nAnswer:``                 ``question.choices[].text``;
``arc_challenge``                                              ``answerKey`` among the labels
``openbookqa``    ``{question.stem}`` (no prefix)               as ARC (AI2 layout)
``piqa``          ``Question: {goal}\\nAnswer:``                 ``sol1``, ``sol2``; labels file 0/1
``siqa``          ``Q: {context} {question}\\nA:``               ``answerA/B/C``; labels 1-3
``hellaswag``     ``preprocess(activity_label: ctx_a Ctx_b)``  ``preprocess(endings)``; ``label``
``jsonl``         ``prompt`` template over the record          ``choices`` field(s), ``label``
================  ==========================================  ================================

(ARC and OpenBookQA also accept the Hugging Face layout: ``question`` / ``question_stem``
with ``choices: {text, label}``.) HellaSwag's ``preprocess`` is lm-eval's: strip, ``" [title]"``
-> ``". "``, drop ``[...]`` headers, collapse double spaces.

**Scoring.** Each choice is the continuation ``target_delimiter + choice`` (a space) of the
context; its score is the summed log-likelihood of its tokens (lm-eval's ``_encode_pair``:
trailing spaces of the context move into the continuation, context + continuation are
encoded together and cut at the encoded context's length). ``acc`` = argmax of the
scores; ``acc_norm`` = argmax of score / ``len(choice)`` in characters, the choice as
``doc_to_choice`` gives it, without the delimiter; both with the standard error of the
mean (``sample_stddev / sqrt(n)``). ``context_prefix: eos`` (forgeflow's default) puts
EOS before the context — the token every training document follows; ``none`` scores the
context as is, exactly as lm-eval's HF model does.

**Few-shot** (``num_fewshot: k``): k solved examples ``query + delimiter + gold choice``
drawn with ``random.Random(fewshot_seed).sample`` (one generator, advanced item by item
in file order, seed 1234 as lm-eval) from a separate split (``fewshot_path``), or from the
evaluated file itself minus the item, joined and followed by ``fewshot_delimiter``
(a blank line) before the item's query.

Readers never stop on a bad record: it is counted and reported as ``file:line: why``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("forgeflow")


@dataclass
class MCItem:
    id: str
    query: str              # lm-eval doc_to_text
    choices: list[str]      # lm-eval doc_to_choice: plain texts, no target delimiter
    gold: int
    context: str = ""       # the prompt scored (few-shot examples + query); default query
    delimiter: str = " "    # lm-eval target_delimiter

    def __post_init__(self):
        if not self.context:
            self.context = self.query

    @property
    def continuations(self) -> list[str]:
        return [self.delimiter + c for c in self.choices]

    @property
    def solved(self) -> str:
        """The item as a few-shot example: query + delimiter + the gold choice."""
        return self.query + self.delimiter + self.choices[self.gold]


@dataclass
class TaskData:
    items: list[MCItem] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)   # "file:line: reason"


class BadRecord(ValueError):
    pass


# ---- layouts: record -> (query, choices, gold) -----------------------------------------

def _letter_index(answer, labels: list[str]) -> int:
    answer = str(answer).strip()
    if answer not in labels:
        raise BadRecord(f"answerKey {answer!r} is not one of {labels}")
    return labels.index(answer)


def _ai2_choices(rec: dict) -> tuple[str, list[str], list[str]]:
    """(stem, texts, labels) from AI2 JSONL (``question: {stem, choices: [...]}``) or the
    Hugging Face layout (``question``/``question_stem`` + ``choices: {text, label}``)."""
    q = rec["question"] if "question" in rec else rec["question_stem"]
    if isinstance(q, dict):
        stem, choices = q["stem"], q["choices"]
        texts, labels = [c["text"] for c in choices], [str(c["label"]) for c in choices]
    else:
        stem = rec.get("question_stem", q)
        texts, labels = list(rec["choices"]["text"]), [str(x) for x in rec["choices"]["label"]]
    return stem, texts, labels


def _arc(rec: dict, label):
    stem, texts, labels = _ai2_choices(rec)
    return f"Question: {stem}\nAnswer:", texts, _letter_index(rec["answerKey"], labels)


def _openbookqa(rec: dict, label):
    stem, texts, labels = _ai2_choices(rec)
    return stem, texts, _letter_index(str(rec["answerKey"]).lstrip(), labels)


def _int_label(label, lo: int, hi: int, offset: int = 0) -> int:
    s = str(label).strip()
    if not re.fullmatch(r"-?\d+", s) or not lo <= int(s) <= hi:
        raise BadRecord(f"label {label!r} is not an integer in {lo}..{hi}")
    return int(s) - offset


def _piqa(rec: dict, label):
    label = rec.get("label") if label is None else label
    if label is None:
        raise BadRecord("no label (give labels_path, the file with one 0/1 per line)")
    return f"Question: {rec['goal']}\nAnswer:", [rec["sol1"], rec["sol2"]], _int_label(label, 0, 1)


def _siqa(rec: dict, label):
    label = rec.get("label") if label is None else label
    if label is None:
        raise BadRecord("no label (give labels_path, the file with one 1-3 per line)")
    return (f"Q: {rec['context']} {rec['question']}\nA:",
            [rec["answerA"], rec["answerB"], rec["answerC"]], _int_label(label, 1, 3, offset=1))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess`` (brackets are WikiHow artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag(rec: dict, label):
    ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
    query = hellaswag_preprocess(rec["activity_label"] + ": " + ctx)
    choices = [hellaswag_preprocess(e) for e in rec["endings"]]
    label = rec.get("label") if label is None else label
    return query, choices, _int_label(label, 0, len(choices) - 1)


def _get(rec, path: str):
    """``a.b.0.c`` into nested dicts/lists."""
    cur = rec
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit():
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(path)
    return cur


class _RecordFormatter(string.Formatter):
    def get_field(self, field_name, args, kwargs):
        return _get(kwargs["__rec__"], field_name), field_name


def _mapped(cfg) -> Callable:
    """The ``jsonl`` layout: ``prompt`` (``{field}`` / ``{a.b}`` placeholders), ``choices``
    (a field holding a list of strings or of ``{text: ...}``, or a list of fields) and
    ``label`` (an index minus ``label_offset``, or one of ``choice_labels``, or a letter)."""
    fmt = _RecordFormatter()

    def parse(rec: dict, label):
        query = fmt.vformat(cfg.prompt, (), {"__rec__": rec})
        if isinstance(cfg.choices, list):
            choices = [_get(rec, f) for f in cfg.choices]
        else:
            choices = _get(rec, cfg.choices)
            if not isinstance(choices, list):
                raise BadRecord(f"field {cfg.choices!r} is not a list")
            choices = [c["text"] if isinstance(c, dict) else c for c in choices]
        label = _get(rec, cfg.label) if label is None else label
        if cfg.choice_labels:
            return query, choices, _letter_index(label, [str(x) for x in _get(rec, cfg.choice_labels)])
        s = str(label).strip()
        if re.fullmatch(r"-?\d+", s):
            return query, choices, _int_label(s, cfg.label_offset,
                                              len(choices) - 1 + cfg.label_offset, cfg.label_offset)
        if len(s) == 1 and s.upper() in string.ascii_uppercase:
            return query, choices, _letter_index(s.upper(), list(string.ascii_uppercase[:len(choices)]))
        raise BadRecord(f"label {label!r} is neither an index nor a letter")

    return parse


LAYOUTS: dict[str, Callable] = {
    "arc_easy": _arc, "arc_challenge": _arc, "openbookqa": _openbookqa,
    "piqa": _piqa, "siqa": _siqa, "hellaswag": _hellaswag,
}


# ---- reading ----------------------------------------------------------------------------

def _jsonl(path: Path, data: TaskData):
    """``(line number, record ordinal, record)``; invalid JSON is recorded as bad."""
    ordinal = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            ordinal += 1
            try:
                yield lineno, ordinal, json.loads(line)
            except json.JSONDecodeError as exc:
                data.bad.append(f"{path}:{lineno}: not valid JSON ({exc.msg})")


def read_items(path: Path, layout: str, labels_path: Path | None = None,
               limit: int | None = None, parse: Callable | None = None,
               delimiter: str = " ") -> TaskData:
    """Read ``path`` in ``layout``; a labels file gives record *i* the label on line *i*."""
    path, data = Path(path), TaskData()
    parse = parse or LAYOUTS[layout]
    labels = Path(labels_path).read_text(encoding="utf-8").splitlines() if labels_path else None
    for lineno, ordinal, rec in _jsonl(path, data):
        if limit is not None and len(data.items) >= limit:
            break
        label = None
        if labels is not None:
            if ordinal > len(labels):
                data.bad.append(f"{path}:{lineno}: no label ({labels_path} has {len(labels)} lines)")
                continue
            label = labels[ordinal - 1].strip()
        try:
            if not isinstance(rec, dict):
                raise BadRecord("a record must be a JSON object")
            query, choices, gold = parse(rec, label)
        except BadRecord as exc:
            where = f"{labels_path}:{ordinal}" if labels is not None and "label" in str(exc) \
                else f"{path}:{lineno}"
            data.bad.append(f"{where}: {exc}")
            continue
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            data.bad.append(f"{path}:{lineno}: missing field {exc}")
            continue
        if len(choices) < 2 or not all(isinstance(t, str) and t.strip() for t in [query, *choices]):
            data.bad.append(f"{path}:{lineno}: needs a non-empty query and at least 2 non-empty "
                            "string choices")
            continue
        data.items.append(MCItem(str(rec.get("id", rec.get("ind", lineno))), query,
                                 list(choices), int(gold), delimiter=delimiter))
    return data


def read_arc(path: Path, limit: int | None = None) -> TaskData:
    return read_items(path, "arc_easy", limit=limit)


def read_piqa(path: Path, labels_path: Path, limit: int | None = None) -> TaskData:
    return read_items(path, "piqa", labels_path, limit)


def fewshot_contexts(items: list[MCItem], pool: list[MCItem] | None, k: int, seed: int,
                     fewshot_delimiter: str = "\n\n") -> None:
    """Set every item's ``context`` to ``k`` solved examples + its query (lm-eval's
    ``ContextSampler``: one ``random.Random(seed)``, ``sample`` per item in order; from
    ``pool``, or, when ``pool`` is None, from ``items`` minus the item itself)."""
    if k <= 0:
        return
    rnd = random.Random(seed)
    same = pool is None
    pool = items if same else pool
    need = k + 1 if same else k
    if len(pool) < need:
        raise ValueError(f"num_fewshot={k} needs {need} examples; the few-shot split has {len(pool)}")
    for it in items:
        drawn = rnd.sample(pool, need)
        if same:
            drawn = [d for d in drawn if d is not it][:k]
        it.context = "".join(d.solved + fewshot_delimiter for d in drawn) + it.query


def load_task(cfg) -> TaskData:
    """Read the task a ``TaskConfig`` names, with its few-shot contexts; bad records are
    logged, not fatal."""
    parse = _mapped(cfg) if cfg.layout == "jsonl" else None
    data = read_items(Path(cfg.path), cfg.layout, cfg.labels_path and Path(cfg.labels_path),
                      cfg.limit, parse, cfg.target_delimiter)
    if cfg.num_fewshot:
        pool = None
        if cfg.fewshot_path:
            shots = read_items(Path(cfg.fewshot_path), cfg.layout,
                               cfg.fewshot_labels_path and Path(cfg.fewshot_labels_path),
                               None, parse, cfg.target_delimiter)
            data.bad += shots.bad
            pool = shots.items
        fewshot_contexts(data.items, pool, cfg.num_fewshot, cfg.fewshot_seed,
                         cfg.fewshot_delimiter)
    for msg in data.bad[:20]:
        log.warning("skipped bad record: %s", msg)
    if len(data.bad) > 20:
        log.warning("... and %d more bad records in %s", len(data.bad) - 20, cfg.path)
    return data


# ---- scoring ----------------------------------------------------------------------------

def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval-harness' ``_encode_pair``: trailing spaces of the context move to the
    continuation; context + continuation are encoded together (so BPE merges across the
    boundary are the real ones) and cut at the length of the encoded context."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tok, requests: list[tuple[str, str]], eos_id: int, max_len: int,
                   batch_size: int = 8, device="cpu", prefix_eos: bool = True) -> list[float]:
    """Summed log P(continuation | [EOS +] context) for each ``(context, continuation)``."""
    encoded = []
    for context, cont in requests:
        c, k = encode_pair(tok, context, cont)
        if not k:
            raise ValueError(f"continuation {cont!r} encodes to no tokens")
        prefix = [eos_id] if prefix_eos or not c else []   # lm-eval: EOS only for an empty context
        seq = (prefix + c + k)[-(max_len + 1):]
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


def mean_stderr(values) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation (n - 1) / sqrt(n)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan")
    return float(np.std(v, ddof=1) / math.sqrt(len(v)))


def score_items(items: list[MCItem], lls: list[float]) -> tuple[dict, list[dict]]:
    """acc / acc_norm (lm-eval: divide by ``len(choice)``, no delimiter) from the
    log-likelihoods of every choice of every item, in order."""
    rows, k = [], 0
    for it in items:
        ll = np.array(lls[k:k + len(it.choices)])
        k += len(it.choices)
        norm = ll / np.array([float(len(c)) for c in it.choices])
        pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
        rows.append({"id": it.id, "gold": it.gold, "pred": pred, "pred_norm": pred_norm,
                     "correct": pred == it.gold, "correct_norm": pred_norm == it.gold,
                     "loglikelihoods": [round(float(v), 4) for v in ll]})
    n = len(rows)
    acc = [float(r["correct"]) for r in rows]
    acc_norm = [float(r["correct_norm"]) for r in rows]
    summary = {"items": n,
               "acc": float(np.mean(acc)) if n else float("nan"),
               "acc_norm": float(np.mean(acc_norm)) if n else float("nan"),
               "acc_stderr": mean_stderr(acc), "acc_norm_stderr": mean_stderr(acc_norm)}
    return summary, rows


def evaluate_items(model, tok, items: list[MCItem], eos_id: int, max_len: int,
                   batch_size: int = 8, device="cpu", prefix_eos: bool = True
                   ) -> tuple[dict, list[dict]]:
    """``({"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "items"}, per-item rows)``."""
    requests = [(it.context, cont) for it in items for cont in it.continuations]
    lls = loglikelihoods(model, tok, requests, eos_id, max_len, batch_size, device, prefix_eos)
    return score_items(items, lls)
