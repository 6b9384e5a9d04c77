"""Stage entry points of the filter family: train the models it needs, then filter.

* ``required_models(cfg)`` — which models ("langid", "quality", "toxicity") the pipeline
  must train before filtering (enabled steps without a user-given model file).
* ``model_inputs(kind, cfg)`` — what determines such a model: config fields, user files
  (hashed by content by the runner), corpus sources (``"*"`` = every source).
* ``train_model(kind, cfg, docs_dirs, ctx)`` — writes ``model.bin`` + ``eval.json``.
* ``filter_files(cfg)`` — user files the filter step reads itself (lists, model files).
* ``run_filter(cfg, docs_dirs, models, ctx)`` — streams every source's documents through
  the chain on Ray Data (``map_batches`` over the Parquet files, as tasks fused with the
  read; each worker process builds the chain and loads its models once), or in this
  process when there are at most ``run.in_process_max_docs`` documents, and writes kept rows to ``ctx.out_dir/data/`` and removed rows
  (``reason``, ``detail``) to ``ctx.out_dir/rejected/`` as ``part-NNNNN.parquet``, in
  input order (sources sorted by name, files sorted), so outputs are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.engine import ensure_ray, in_process, parquet_files
from pipeline.filters.chain import CANONICAL, FilterChain
from pipeline.filters.config import FiltersConfig
from pipeline.filters.registry import FILTERS
from pipeline.filters.report import FilterReport

MODEL_KINDS = ("langid", "quality", "toxicity")


def _step_for(kind: str, cfg: FiltersConfig):
    for step in cfg.steps:
        cls = FILTERS[step.type]
        if step.enabled and cls.model_kind == kind and _needs_training(step):
            return step
    raise ValueError(f"no enabled filter step needs a trained '{kind}' model")


def _needs_training(step) -> bool:
    if step.type == "langid":
        return step.backend == "fasttext" and not step.model_path and bool(step.train_paths)
    return getattr(step, "model_path", "set") is None


def required_models(cfg: FiltersConfig) -> list[str]:
    kinds = []
    for step in cfg.steps:
        kind = FILTERS[step.type].model_kind
        if step.enabled and kind and _needs_training(step):
            if kind in kinds:
                raise ValueError(f"two filter steps need a trained '{kind}' model; give one a model_path")
            kinds.append(kind)
    return kinds


def model_inputs(kind: str, cfg: FiltersConfig) -> tuple[dict, list[Path], list[str]]:
    step = _step_for(kind, cfg)
    d = step.identity_dict()
    if kind == "langid":
        fields = {k: d[k] for k in ("train_paths", "train")}
        return fields, [Path(p) for p in step.train_paths], []
    if kind == "quality":
        fields = {k: d[k] for k in ("reference_sources", "reference_paths", "reference_text_field",
                                    "max_docs_per_class", "holdout_fraction", "train",
                                    "keep_top_fraction", "threshold_sample")}
        # negatives are sampled from every corpus source
        return fields, [Path(p) for p in step.reference_paths], ["*"]
    if kind == "toxicity":
        fields = {k: d[k] for k in ("train_path", "text_field", "label_field", "holdout_fraction", "train")}
        return fields, [Path(step.train_path)] if step.train_path else [], []
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


def filter_files(cfg: FiltersConfig) -> list[Path]:
    """Every user file ``run_filter`` itself reads (bad-word lists, URL blocklists, user
    model files), so the runner can hash their content into the filter's identity."""
    out: list[str] = []
    for step in cfg.steps:
        if not step.enabled:
            continue
        for field in ("badwords_paths", "paths", "domain_paths", "keyword_paths"):
            out += list(getattr(step, field, []) or [])
        if getattr(step, "model_path", None):
            out.append(step.model_path)
    return [Path(p) for p in out]


def train_model(kind: str, cfg: FiltersConfig, docs_dirs: dict[str, Path], ctx) -> dict:
    step = _step_for(kind, cfg)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "langid":
        from pipeline.filters.langid import train_langid
        metrics = train_langid(step, ctx)
    else:
        metrics = FILTERS[step.type].train_model(step, {k: Path(v) for k, v in docs_dirs.items()}, ctx)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    ctx.metrics(metrics)
    ctx.note(f"**{kind} model** held-out: " + ", ".join(
        f"{k}={metrics[k]:.3f}" for k in ("precision", "recall", "f1", "accuracy") if k in metrics))
    return metrics


# ---------------------------------------------------------------------------- filtering
_CHAINS: dict[tuple, FilterChain] = {}


def _process_batch(batch: pa.Table, cfg_json: str, models: dict[str, str]) -> pa.Table:
    """Ray Data batch function. Runs as tasks (fused with the Parquet read, so a fixed
    CPU count can never deadlock between readers and an actor pool); the chain and its
    models are built once per worker process and cached."""
    key = (cfg_json, tuple(sorted(models.items())))
    chain = _CHAINS.get(key)
    if chain is None:
        _CHAINS.clear()
        chain = _CHAINS[key] = FilterChain(FiltersConfig.model_validate_json(cfg_json),
                                           {k: Path(v) for k, v in models.items()})
    return chain.process(batch)


def _input_files(docs_dirs: dict[str, Path]) -> tuple[list[str], list[str]]:
    """All Parquet files (sources sorted by name) and the columns they all share."""
    files = [f for src in sorted(docs_dirs) for f in parquet_files(Path(docs_dirs[src]))]
    common: list[str] | None = None
    for f in files:
        names = pq.read_schema(f).names
        common = names if common is None else [c for c in common if c in names]
    return files, common or []


class _RollingWriter:
    def __init__(self, out_dir: Path, sub: str, rows_per_file: int, schema: pa.Schema):
        self.dir = Path(out_dir) / sub
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_file, self.schema = rows_per_file, schema
        self.part, self.rows, self.writer = 0, 0, None

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                path = self.dir / f"part-{self.part:05d}.parquet"
                self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            take = min(table.num_rows, self.rows_per_file - self.rows)
            self.writer.write_table(table.slice(0, take).cast(self.schema))
            table = table.slice(take)
            self.rows += take
            if self.rows >= self.rows_per_file:
                self.writer.close()
                self.writer, self.rows, self.part = None, 0, self.part + 1

    def close(self) -> None:
        if self.writer is None and self.part == 0:      # always leave one (maybe empty) file
            pq.write_table(self.schema.empty_table(), self.dir / "part-00000.parquet")
        elif self.writer is not None:
            self.writer.close()


# Below this many documents the chain runs in this process on the chain built above: Ray
# Data would start worker processes that each import the filters and load every model
# (seconds) to do a second or two of work. Rows are filtered independently, so the output
# is the same either way (tests/test_filters_stage.py checks).


def _filtered_batches(files: list[str], columns: list[str], cfg: FiltersConfig,
                      models: dict[str, Path], chain: FilterChain, total: int):
    """The chain's output batches over ``files`` in input order."""
    if in_process(total):
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=cfg.batch_size, columns=columns):
                yield chain.process(pa.Table.from_batches([batch]))
        return
    ray = ensure_ray()
    ds = ray.data.read_parquet(files, columns=columns)
    ds = ds.map_batches(_process_batch, batch_format="pyarrow", batch_size=cfg.batch_size,
                        fn_kwargs={"cfg_json": cfg.model_dump_json(),
                                   "models": {k: str(v) for k, v in models.items()}})
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def run_filter(cfg: FiltersConfig, docs_dirs: dict[str, Path], models: dict[str, Path], ctx) -> dict:
    missing = [k for k in required_models(cfg) if k not in models]
    if missing:
        raise ValueError(f"run_filter needs trained model(s) {missing} (train_model first)")
    chain = FilterChain(cfg, models)           # fail fast on bad config / model paths
    files, columns = _input_files(docs_dirs)
    in_schema = pa.schema([pq.read_schema(files[0]).field(c) for c in columns]) if files else \
        pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("url", pa.string())])
    if files and "text" not in columns:
        raise ValueError(f"input documents have no common 'text' column: {files[0]}")
    for f in ("id", "source", "url"):
        if f not in in_schema.names:
            in_schema = in_schema.append(pa.field(f, pa.string()))
    out_schema = chain.output_schema(in_schema)
    score_cols = list(chain.columns)
    internal = ["_repaired"] + [f"_trim_{m}" for m in chain.modifiers]
    kept_cols = [c for c in out_schema.names if c not in ("reason", "detail", *internal)
                 and (cfg.keep_scores or c not in score_cols or c in CANONICAL)]
    rej_cols = [c for c in out_schema.names if c not in internal]
    kept_w = _RollingWriter(ctx.out_dir, "data", cfg.rows_per_file,
                            pa.schema([out_schema.field(c) for c in kept_cols]))
    rej_w = _RollingWriter(ctx.out_dir, "rejected", cfg.rows_per_file,
                           pa.schema([out_schema.field(c) for c in rej_cols]))
    report = FilterReport(chain, cfg.rejected_sample, ctx.rng("rejected-sample"))

    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    progress = ctx.progress(total, "docs", desc=f"{ctx.name} filter")
    if files:
        kept_total = 0
        for out in _filtered_batches(files, columns, cfg, models, chain, total):
            out = out.cast(out_schema) if out.schema != out_schema else out
            report.add(out)
            removed = out.column("reason").is_valid()
            kept = out.filter(pc.invert(removed))
            kept_w.write(kept.select(kept_cols))
            rej_w.write(out.filter(removed).select(rej_cols))
            kept_total += kept.num_rows
            progress.update(out.num_rows, kept=kept_total)
    progress.close()
    kept_w.close()
    rej_w.close()
    metrics = report.publish(ctx)
    (ctx.out_dir / "filter_stats.json").write_text(json.dumps(
        {"metrics": metrics, "filters": report.summary_rows(), "sources": report.source_rows()},
        indent=1))
    return metrics
