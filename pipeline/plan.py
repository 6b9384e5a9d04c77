"""From a spec to a DAG of stage nodes.

Each node names its stage family, the config that changes its output (its identity),
its upstream nodes, and how to run it. The Prefect layer (``flows/``) and the plain
runner both execute this plan; neither knows what a stage does.

The DAG for a spec with sources A (crawl) and B (files):

    crawl.A ─> ingest.A ─┐                       ┌─> model.quality ─┐
               ingest.B ─┼─> (model.langid, model.toxicity) ───────┼─> filter ─> dedup
                         └──────────────────────────────────────────┘
    dedup ─> tokenizer ─> tokenize ─> pretrain ─> continual.<phase>... ─> evaluate
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.spec import PipelineSpec, SpecError, digest_paths
from pipeline.stage import StageContext
from pipeline.store import Artifact, files_digest

RunFn = Callable[[StageContext, dict[str, Artifact]], dict]


@dataclass
class Node:
    key: str                          # unique in the plan, e.g. "ingest.prose"
    stage: str                        # stage family = artifact sub-directory
    name: str                         # artifact name inside the family
    version: str                      # bump when the stage's output format/logic changes
    config: dict                      # identity-relevant config (plain data)
    inputs: dict[str, str]            # input name -> upstream node key
    run: RunFn
    resumable: bool = False
    dataset: str | None = None        # log the output as an MLflow dataset input with this context
    description: str = ""


def build_plan(spec: PipelineSpec) -> list[Node]:
    """Nodes in a topological order."""
    from pipeline.crawl.stage import run_crawl
    from pipeline.dedup.stage import run_dedup
    from pipeline.evaluate.stage import run_evaluate
    from pipeline.filters import stage as filters_stage
    from pipeline.ingest.stage import run_ingest
    from pipeline.tokenize.stage import run_tokenize, run_train_tokenizer
    from pipeline.train.stage import run_continual, run_pretrain

    seed = spec.run.seed
    nodes: list[Node] = []
    ingest_keys: dict[str, str] = {}

    # ---- sources: crawl + ingest ----------------------------------------------------------
    for src in spec.sources:
        ingest_inputs: dict[str, str] = {}
        reader = {"type": src.type, "text_field": src.text_field, "id_field": src.id_field,
                  "url_field": src.url_field, "text_unit": src.text_unit}
        if src.type == "crawl":
            crawl_key = f"crawl.{src.name}"
            nodes.append(Node(
                key=crawl_key, stage="crawl", name=src.name, version="1",
                config={"crawl": src.crawl.identity_dict(),
                        "local_site": src.local_site.identity_dict() if src.local_site else None},
                inputs={}, resumable=True,
                run=lambda ctx, inp, src=src: run_crawl(src.crawl, src.name, ctx, local_site=src.local_site),
                description=f"crawl {len(src.crawl.seeds)} seed(s) into WARC"))
            ingest_inputs = {"warc": crawl_key}
            files, files_id = [], None
        else:
            files = spec.source_files(src)      # resolved once: hashed here, read by the stage
            files_id = files_digest(files)

        def ingest_run(ctx, inp, src=src, files=files):
            if src.type == "crawl":
                files = sorted((inp["warc"].dir / "warc").glob("*.warc*"))
            kind = "warc" if src.type == "crawl" else src.type
            return run_ingest(src.name, kind, files, spec.extract, ctx,
                              text_field=src.text_field, id_field=src.id_field,
                              url_field=src.url_field, text_unit=src.text_unit)

        key = f"ingest.{src.name}"
        nodes.append(Node(
            key=key, stage="ingest", name=src.name, version="1",
            config={"reader": reader, "extract": spec.extract.identity_dict(), "files": files_id},
            inputs=ingest_inputs, run=ingest_run, dataset="ingested",
            description=f"{src.type} -> documents Parquet"))
        ingest_keys[src.name] = key

    # ---- filter models (trained by the pipeline) ------------------------------------------
    all_docs = {f"docs.{name}": key for name, key in ingest_keys.items()}
    model_keys: dict[str, str] = {}
    for kind in filters_stage.required_models(spec.filters):
        cfg_part, user_files, corpus_sources = filters_stage.model_inputs(kind, spec.filters)
        user_files = [Path(p) for p in user_files]
        for p in user_files:
            if not p.exists():
                raise SpecError(f"filters ({kind} model): file not found: {p}")
        inputs = {f"docs.{s}": ingest_keys[s] for s in corpus_sources if s in ingest_keys}
        if "*" in corpus_sources:
            inputs = dict(all_docs)

        def model_run(ctx, inp, kind=kind):
            docs = {k.split(".", 1)[1]: a.dir for k, a in inp.items()}
            return filters_stage.train_model(kind, spec.filters, docs, ctx)

        key = f"model.{kind}"
        nodes.append(Node(
            key=key, stage="models", name=kind, version="1",
            config={"kind": kind, "config": cfg_part, "files": files_digest(user_files), "seed": seed},
            inputs=inputs, run=model_run, description=f"train the {kind} fastText classifier"))
        model_keys[kind] = key

    def filter_run(ctx, inp):
        docs = {k.split(".", 1)[1]: a.dir for k, a in inp.items() if k.startswith("docs.")}
        models = {k.split(".", 1)[1]: a.dir for k, a in inp.items() if k.startswith("model.")}
        return filters_stage.run_filter(spec.filters, docs, models, ctx)

    nodes.append(Node(
        key="filter", stage="filter", name="filtered", version="1",
        config={"filters": spec.filters.identity_dict(), "seed": seed},
        inputs={**all_docs, **{f"model.{k}": v for k, v in model_keys.items()}},
        run=filter_run, dataset="filtered", description="language ID, heuristics, classifiers"))

    nodes.append(Node(
        key="dedup", stage="dedup", name="deduped", version="1",
        config={"dedup": spec.dedup.identity_dict(), "seed": seed},
        inputs={"docs": "filter"},
        run=lambda ctx, inp: run_dedup(spec.dedup, inp["docs"].dir, ctx),
        dataset="deduplicated", description="exact + MinHash LSH near-duplicate removal"))

    # ---- tokenization ---------------------------------------------------------------------------
    tok_cfg = spec.tokenize.tokenizer
    if tok_cfg.path and not Path(tok_cfg.path).is_dir():
        raise SpecError(f"tokenize.tokenizer.path: directory not found: {tok_cfg.path}")

    nodes.append(Node(
        key="tokenizer", stage="tokenizer", name="bpe", version="1",
        config={"tokenizer": tok_cfg.identity_dict(), "seed": seed},
        inputs={"docs": "dedup"},     # a given tokenizer still reads the corpus for fertility
        run=lambda ctx, inp: run_train_tokenizer(spec.tokenize, inp["docs"].dir, ctx),
        description="train a byte-level BPE (or load a given one)"))

    nodes.append(Node(
        key="tokenize", stage="tokenize", name="shards", version="1",
        config={"tokenize": spec.tokenize.identity_dict(), "seed": seed},
        inputs={"docs": "dedup", "tokenizer": "tokenizer"},
        run=lambda ctx, inp: run_tokenize(spec.tokenize, inp["docs"].dir,
                                          inp["tokenizer"].dir / "tokenizer", ctx),
        dataset="tokenized", description="Megatron .bin/.idx shards per source and split"))

    # ---- training ---------------------------------------------------------------------------------
    train_id = spec.train.identity_dict()          # carries train.seed
    nodes.append(Node(
        key="pretrain", stage="train", name="pretrain", version="1",
        config={"train": train_id}, inputs={"shards": "tokenize"}, resumable=True,
        run=lambda ctx, inp: run_pretrain(spec.train, inp["shards"].dir, ctx),
        description="pretrain on Ray Train (DDP)"))
    model_nodes = {"pretrain": "pretrain"}
    parents: dict[str, str] = {}          # model label -> the label it was continued from
    if spec.continual.enabled:
        phase_parent = spec.continual.parents()
        for phase in spec.continual.phases:
            key = f"continual.{phase.name}"
            parent = phase_parent[phase.name]
            parent_key = "pretrain" if parent == "pretrain" else f"continual.{parent}"

            # replay reads the original pretraining mixture from <init>/lineage.json; the
            # schedule's `previous` is where <init>'s stage ended (branches: init_from)
            def cont_run(ctx, inp, phase=phase):
                return run_continual(phase, spec.train, inp["shards"].dir, inp["init"].dir, ctx)

            nodes.append(Node(
                key=key, stage="train", name=f"continual-{phase.name}", version="2",
                config={"phase": phase.identity_dict(), "train": train_id},
                inputs={"shards": "tokenize", "init": parent_key}, resumable=True, run=cont_run,
                description=f"continual pretraining phase {phase.name} (from {parent})"))
            model_nodes[key] = key
            parents[key] = parent_key

    # ---- evaluation ---------------------------------------------------------------------------------
    def eval_run(ctx, inp):
        models = {label: inp[f"model:{label}"].dir for label in model_nodes}
        return run_evaluate(spec.evaluate, models, inp["shards"].dir, ctx, parents=parents)

    nodes.append(Node(
        key="evaluate", stage="evaluate", name="eval", version="2",
        config={"evaluate": spec.evaluate.identity_dict()},
        inputs={"shards": "tokenize", **{f"model:{label}": key for label, key in model_nodes.items()}},
        run=eval_run, description="bits-per-byte per source, forgetting, multiple-choice tasks"))
    for node in nodes:      # file paths in configs count by content, never by location
        node.config = digest_paths(node.config)
    return nodes
