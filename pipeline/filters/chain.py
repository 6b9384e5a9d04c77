"""Run the configured filter steps over one Arrow batch.

``FilterChain.process(table)`` returns every input row, each with its score columns
(null where the row never reached that filter), ``reason`` (null = kept, else the name of
the step that removed it) and ``detail`` (which rule, which value). Each filter only sees
the rows that survived the previous ones; a filter that rewrites text (C4) passes the
new text on, and removed rows keep the text that the removing filter judged.

Input checks come first, under the reason ``input``: null/empty/whitespace-only text
(``detail: empty``) and text over ``max_doc_chars`` (``too_long``). Text that is not valid
UTF-8 (possible in hand-made Parquet) is repaired with U+FFFD and counted
(``_repaired``). If a filter raises on a batch, the batch is retried one document at a
time and the documents that still fail are removed with ``detail: error: ...``, so one
bad record never stops a run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine import DOC_SCHEMA
from pipeline.filters.base import Filter, FilterResult
from pipeline.filters.registry import FILTERS, build
from pipeline.filters.text import TextBatch

log = logging.getLogger("forgeflow")

CANONICAL = ("lang", "lang_score", "quality_score", "toxicity_score")


def sanitize_text(col) -> tuple[pa.Array, np.ndarray]:
    """Text as a valid ``string`` array with nulls as ""; a mask of repaired rows."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], pa.string())
    repaired = np.zeros(len(col), dtype=bool)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        col = col.cast(pa.large_binary())
        col = _decode(col.to_pylist(), repaired)
    try:
        col.validate(full=True)
        col = col.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raw = col.view(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
        col = _decode(raw.to_pylist(), repaired)
    return col.fill_null(""), repaired


def _decode(values: list, repaired: np.ndarray) -> pa.Array:
    out = []
    for i, b in enumerate(values):
        if b is None:
            out.append(None)
            continue
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(b.decode("utf-8", errors="replace"))
            repaired[i] = True
    return pa.array(out, pa.string())


class FilterChain:
    def __init__(self, cfg, models: dict[str, Path] | None = None):
        models = models or {}
        self.cfg = cfg
        self.filters: list[Filter] = []
        for step in cfg.steps:
            if step.enabled:
                kind = FILTERS[step.type].model_kind
                self.filters.append(build(step, models.get(kind) if kind else None))
        self.columns: dict[str, pa.DataType] = {}
        for f in self.filters:
            self.columns.update(f.output_columns())
        self.modifiers = [f.name for f in self.filters if type(f).apply is not Filter.apply]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [pa.field(n, input_schema.field(n).type if n != "text" else pa.string())
                  for n in input_schema.names if n not in self.columns]
        fields += [pa.field(c, t) for c, t in self.columns.items()]
        fields += [pa.field("reason", pa.string()), pa.field("detail", pa.string()),
                   pa.field("_repaired", pa.bool_())]
        fields += [pa.field(f"_trim_{m}", pa.int64()) for m in self.modifiers]
        return pa.schema(fields)

    # ------------------------------------------------------------------------------
    def process(self, table: pa.Table) -> pa.Table:
        table = _with_doc_columns(table)
        n = table.num_rows
        text, repaired = sanitize_text(table.column("text"))
        others = table.drop_columns(["text"])
        reason = np.full(n, None, dtype=object)
        detail = np.full(n, None, dtype=object)
        scores: dict[str, np.ndarray] = {
            c: (np.full(n, None, dtype=object) if pa.types.is_string(t) else np.full(n, np.nan))
            for c, t in self.columns.items()}
        trims = {m: np.zeros(n, dtype=np.int64) for m in self.modifiers}

        chars = np.asarray(pc.utf8_length(text), dtype=np.int64)
        empty = np.asarray(pc.equal(pc.utf8_trim_whitespace(text), ""), dtype=bool)
        too_long = chars > self.cfg.max_doc_chars
        reason[empty | too_long] = "input"
        detail[empty] = "empty"
        for i in np.flatnonzero(too_long):
            detail[i] = f"too_long chars={chars[i]} > {self.cfg.max_doc_chars}"
        active = np.flatnonzero(~(empty | too_long))
        parts = [(np.flatnonzero(empty | too_long), text.filter(pa.array(empty | too_long)))]
        cur = text.take(pa.array(active))

        carry: dict | None = None      # tokenizations of `cur`, from the previous filter
        for f in self.filters:
            if len(active) == 0:
                break
            res = self._apply_scoped(f, cur, others, active, carry)
            for col, vals in res.scores.items():
                full = f.column_name(col)
                if full in scores:
                    scores[full][active] = np.asarray(vals, dtype=scores[full].dtype)
            if "lang" in res.scores and "lang" in scores:
                # later filters see the language langid wrote (per-language tokenizers, thresholds)
                col = pa.array(scores["lang"].tolist(), pa.string())
                others = (others.set_column(others.schema.get_field_index("lang"), "lang", col)
                          if "lang" in others.column_names else others.append_column("lang", col))
            removed = ~res.keep
            reason[active[removed]] = f.name
            detail[active[removed]] = res.detail[removed]
            parts.append((active[removed], cur.filter(pa.array(removed))))
            keepmask = pa.array(res.keep)
            # the next filter sees the kept documents: their tokens stay valid unless this
            # filter rewrote text or changed the languages
            carry = ({k: t.subset_docs(res.keep) for k, t in res.tokens.items()}
                     if res.tokens and res.new_text is None and "lang" not in res.scores else None)
            if res.new_text is not None:
                before = np.asarray(pc.utf8_length(cur), dtype=np.int64)
                after = np.asarray(pc.utf8_length(res.new_text), dtype=np.int64)
                trims[f.name][active[res.keep]] = (before - after)[res.keep]
                cur = res.new_text.filter(keepmask)
            else:
                cur = cur.filter(keepmask)
            active = active[res.keep]
        parts.append((active, cur))

        idx = np.concatenate([p[0] for p in parts])
        merged = pa.concat_arrays([p[1].cast(pa.string()) for p in parts])
        final_text = merged.take(pa.array(np.argsort(idx, kind="stable")))

        out = table.set_column(table.schema.get_field_index("text"), "text", final_text)
        out = out.drop_columns([c for c in self.columns if c in out.column_names])
        for c, t in self.columns.items():
            v = scores[c]
            if pa.types.is_string(t):
                out = out.append_column(c, pa.array(v.tolist(), t))
            else:
                out = out.append_column(c, pa.array(v, t, mask=np.isnan(v)))
        out = out.append_column("reason", pa.array(reason.tolist(), pa.string()))
        out = out.append_column("detail", pa.array(detail.tolist(), pa.string()))
        out = out.append_column("_repaired", pa.array(repaired))
        for m, v in trims.items():
            out = out.append_column(f"_trim_{m}", pa.array(v))
        return out

    def _apply_scoped(self, f: Filter, cur: pa.Array, others: pa.Table,
                      active: np.ndarray, tokens: dict | None = None) -> FilterResult:
        """Apply ``f`` to the rows of its ``sources`` only; other rows pass untouched
        (kept, no score, text unchanged). ``tokens``: tokenizations of ``cur``."""
        if f.cfg.sources is None:
            return self._apply(f, cur, others, active, tokens)
        src = others.column("source").take(pa.array(active))
        inside = np.asarray(pc.fill_null(pc.is_in(src, pa.array(f.cfg.sources, pa.string())), False),
                            dtype=bool)
        if inside.all():
            return self._apply(f, cur, others, active, tokens)
        n = len(active)
        keep = np.ones(n, dtype=bool)
        detail = np.full(n, None, dtype=object)
        scores = {c: (np.full(n, None, dtype=object) if pa.types.is_string(t) else np.full(n, np.nan))
                  for c, t in f.columns.items()}
        idx = np.flatnonzero(inside)
        if len(idx) == 0:
            return FilterResult(keep, detail, scores, None)
        res = self._apply(f, cur.take(pa.array(idx)), others, active[idx])
        keep[idx] = res.keep
        detail[idx] = res.detail
        for col, vals in res.scores.items():
            if col in scores:
                scores[col][idx] = np.asarray(vals, dtype=scores[col].dtype)
        new_text = None
        if res.new_text is not None:
            texts = cur.to_pylist()
            for j, t in zip(idx, res.new_text.to_pylist()):
                texts[j] = t
            new_text = pa.array(texts, pa.string())
        return FilterResult(keep, detail, scores, new_text)

    def _apply(self, f: Filter, cur: pa.Array, others: pa.Table, active: np.ndarray,
               tokens: dict | None = None) -> FilterResult:
        sub = others.take(pa.array(active)) if others.num_columns else None
        try:
            batch = TextBatch(cur, sub, tokens=tokens)
            res = _checked(f.apply(batch), len(cur))
            res.tokens = batch.token_cache()
            return res
        except Exception as e:  # noqa: BLE001 - isolate the bad document, never end the run
            log.warning("filter %s failed on a batch of %d (%s: %s); retrying per document",
                        f.name, len(cur), type(e).__name__, e)
        results = []
        for i in range(len(cur)):
            one = sub.slice(i, 1) if sub is not None else None
            try:
                results.append(_checked(f.apply(TextBatch(cur.slice(i, 1), one)), 1))
            except Exception as e:  # noqa: BLE001
                results.append(FilterResult(np.array([False]), np.array([f"error: {type(e).__name__}: {e}"[:300]],
                                                                        dtype=object), {}, None))
        keep = np.concatenate([r.keep for r in results])
        det = np.concatenate([r.detail for r in results])
        scores = {}
        for col, t in f.columns.items():
            vals = []
            for r in results:
                v = r.scores.get(col)
                vals.append(v[0] if v is not None else (None if pa.types.is_string(t) else np.nan))
            scores[col] = np.array(vals, dtype=object if pa.types.is_string(t) else np.float64)
        new_text = None
        if any(r.new_text is not None for r in results):
            new_text = pa.array([(r.new_text[0].as_py() if r.new_text is not None else cur[i].as_py())
                                 for i, r in enumerate(results)], pa.string())
        return FilterResult(keep, det, scores, new_text)


def _checked(res: FilterResult, n: int) -> FilterResult:
    if len(res.keep) != n:
        raise ValueError(f"filter returned {len(res.keep)} decisions for {n} documents")
    res.keep = np.asarray(res.keep, dtype=bool)
    return res


def _with_doc_columns(table: pa.Table) -> pa.Table:
    """Make sure the DOC_SCHEMA columns exist (missing ones as nulls, ids as strings)."""
    if "text" not in table.column_names:
        raise ValueError(f"document batch has no 'text' column (columns: {table.column_names})")
    for field in DOC_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
        elif field.name != "text" and table.schema.field(field.name).type != field.type:
            i = table.schema.get_field_index(field.name)
            table = table.set_column(i, field.name, table.column(field.name).cast(field.type))
    return table
