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

import importlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from pipeline import checks
from pipeline.spec import PipelineSpec, SpecError, digest_paths, resolve_snapshot
from pipeline.stage import StageContext
from pipeline.store import Artifact, files_digest

RunFn = Callable[[StageContext, dict[str, Artifact]], dict]

# Each stage's code version: part of every artifact identity of that stage. Bump it when a
# change to the stage's code changes its output (format, logic, defaults); committed
# artifacts of the old version are then recomputed instead of served. tests/test_stage_versions.py
# fails when a stage's config schema or its golden output on a tiny input changes without a bump.
STAGE_VERSIONS: dict[str, str] = {
    "crawl": "1",
    "ingest": "3",        # 2: WARC ids from URL + content; WARC metadata columns; 3: a crawl's documents in id order
    "models": "2",        # 2: label mapping, labelled reference files
    "filter": "2",        # 2: datatrove semantics, per-language thresholds
    "dedup": "2",         # 2: bands from the threshold, verification, rehydration weights
    "tokenizer": "2",     # 2: init-model tokenizers, extension
    "tokenize": "2",      # 2: upsampling by sampling weight
    "train": "2",         # pretrain and every continual phase (2: phase seeds, replay, chained schedules, init)
    "evaluate": "2",      # 2: acc_norm without the delimiter, bpb across tokenizers, tasks
}


@dataclass
class Node:
    key: str                          # unique in the plan, e.g. "ingest.prose"
    stage: str                        # stage family = artifact sub-directory
    name: str                         # artifact name inside the family
    version: str                      # STAGE_VERSIONS[stage]: bump when its output changes
    config: dict                      # identity-relevant config (plain data)
    inputs: dict[str, str]            # input name -> upstream node key
    run: RunFn
    resumable: bool = False
    dataset: str | None = None        # log the output as an MLflow dataset input with this context
    description: str = ""
    check: Callable[[Artifact], None] | None = None   # raises EmptyOutputError on a useless output


def _entry(module: str, name: str) -> Callable:
    """The stage entry point ``module.name``, imported on its first call."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


def build_plan(spec: PipelineSpec, now: datetime | None = None) -> list[Node]:
    """Nodes in a topological order. ``now`` (UTC, default the current time) resolves
    sources' ``snapshot`` templates."""
    from pipeline.filters import stage as filters_stage

    # Stage modules are imported when their stage runs: planning and an all-cached run
    # never import torch, Ray or the crawler.
    run_crawl = _entry("pipeline.crawl.stage", "run_crawl")
    run_dedup = _entry("pipeline.dedup.stage", "run_dedup")
    run_evaluate = _entry("pipeline.evaluate.stage", "run_evaluate")
    run_ingest = _entry("pipeline.ingest.stage", "run_ingest")
    run_tokenize = _entry("pipeline.tokenize.stage", "run_tokenize")
    run_train_tokenizer = _entry("pipeline.tokenize.stage", "run_train_tokenizer")
    run_pretrain = _entry("pipeline.train.stage", "run_pretrain")
    run_continual = _entry("pipeline.train.stage", "run_continual")

    seed = spec.run.seed
    nodes: list[Node] = []
    ingest_keys: dict[str, str] = {}

    # ---- sources: crawl + ingest ----------------------------------------------------------
    for src in spec.sources:
        ingest_inputs: dict[str, str] = {}
        reader = {"type": src.type, "text_field": src.text_field, "id_field": src.id_field,
                  "url_field": src.url_field, "text_unit": src.text_unit}
        # a snapshot enters the identity of the source's first node only when set, so
        # specs without one keep their identities
        snapshot = resolve_snapshot(src.snapshot, now)
        snap = {"snapshot": snapshot} if snapshot is not None else {}
        if src.type == "crawl":
            crawl_key = f"crawl.{src.name}"
            nodes.append(Node(
                key=crawl_key, stage="crawl", name=src.name, version=STAGE_VERSIONS["crawl"],
                config={"crawl": src.crawl.identity_dict(),
                        "local_site": src.local_site.identity_dict() if src.local_site else None,
                        **snap},
                inputs={}, resumable=True,
                run=lambda ctx, inp, src=src, snapshot=snapshot: run_crawl(
                    src.crawl, src.name, ctx, local_site=src.local_site, snapshot=snapshot),
                description=f"crawl {len(src.crawl.seeds)} seed(s) into WARC"
                            + (f" (snapshot {snapshot})" if snapshot else "")))
            snap = {}       # the crawl carries it; ingest follows through its input
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
                              url_field=src.url_field, text_unit=src.text_unit,
                              # a crawl's fetch order is not reproducible; its documents are
                              order="id" if src.type == "crawl" else "input")

        key = f"ingest.{src.name}"
        nodes.append(Node(
            key=key, stage="ingest", name=src.name, version=STAGE_VERSIONS["ingest"],
            config={"reader": reader, "extract": spec.extract.identity_dict(), "files": files_id,
                    **snap},
            inputs=ingest_inputs, run=ingest_run, dataset="ingested",
            description=f"{src.type} -> documents Parquet",
            check=lambda art, name=src.name: checks.check_ingest(art, name)))
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
            key=key, stage="models", name=kind, version=STAGE_VERSIONS["models"],
            config={"kind": kind, "config": cfg_part, "files": files_digest(user_files), "seed": seed},
            inputs=inputs, run=model_run, description=f"train the {kind} fastText classifier"))
        model_keys[kind] = key

    def filter_run(ctx, inp):
        docs = {k.split(".", 1)[1]: a.dir for k, a in inp.items() if k.startswith("docs.")}
        models = {k.split(".", 1)[1]: a.dir for k, a in inp.items() if k.startswith("model.")}
        return filters_stage.run_filter(spec.filters, docs, models, ctx)

    nodes.append(Node(
        key="filter", stage="filter", name="filtered", version=STAGE_VERSIONS["filter"],
        config={"filters": spec.filters.identity_dict(), "seed": seed},
        inputs={**all_docs, **{f"model.{k}": v for k, v in model_keys.items()}},
        run=filter_run, dataset="filtered", description="language ID, heuristics, classifiers",
        check=lambda art: checks.check_filter(art, spec.trained_sources())))

    nodes.append(Node(
        key="dedup", stage="dedup", name="deduped", version=STAGE_VERSIONS["dedup"],
        config={"dedup": spec.dedup.identity_dict(), "seed": seed},
        inputs={"docs": "filter"},
        run=lambda ctx, inp: run_dedup(spec.dedup, inp["docs"].dir, ctx),
        dataset="deduplicated", description="exact + MinHash LSH near-duplicate removal"))

    # ---- tokenization ---------------------------------------------------------------------------
    tok_cfg = spec.tokenize.tokenizer
    if tok_cfg.path and not Path(tok_cfg.path).is_dir():
        raise SpecError(f"tokenize.tokenizer.path: directory not found: {tok_cfg.path}")
    tokenize_cfg, tok_config = spec.tokenize, {"tokenizer": tok_cfg.identity_dict()}
    if spec.train is not None and spec.train.init is not None:
        # continuing a pretrained model: its own tokenizer, unless the spec names one
        from pipeline.train.stage import init_facts

        try:
            facts = init_facts(spec.train)
        except (FileNotFoundError, ValueError) as exc:
            raise SpecError(str(exc)) from None
        if not tok_cfg.path:
            tok_dir = facts["init"].tokenizer_dir
            if tok_dir is None:
                raise SpecError(f"train.init.path {spec.train.init.path} has no tokenizer "
                                "(tokenizer.json + tokenizer_config.json): set "
                                "tokenize.tokenizer.path")
            tokenize_cfg = spec.tokenize.model_copy(update={"tokenizer": tok_cfg.model_copy(
                update={"path": str(tok_dir)})})
            from pipeline.tokenize.tokenizer import tokenizer_files

            # by the content of the tokenizer files only (not the model's weights)
            tok_config = {"tokenizer": {**tok_cfg.identity_dict(), "path": "init"},
                          "init_tokenizer_files": [str(f) for f in tokenizer_files(tok_dir)]}

    nodes.append(Node(
        key="tokenizer", stage="tokenizer", name="bpe", version=STAGE_VERSIONS["tokenizer"],
        config={**tok_config, "seed": seed},
        inputs={"docs": "dedup"},     # a given tokenizer still reads the corpus for fertility
        run=lambda ctx, inp: run_train_tokenizer(tokenize_cfg, inp["docs"].dir, ctx),
        description="train a byte-level BPE (or load a given one)"))

    nodes.append(Node(
        key="tokenize", stage="tokenize", name="shards", version=STAGE_VERSIONS["tokenize"],
        config={"tokenize": spec.tokenize.identity_dict(), "seed": seed},
        inputs={"docs": "dedup", "tokenizer": "tokenizer"},
        run=lambda ctx, inp: run_tokenize(tokenize_cfg, inp["docs"].dir,
                                          inp["tokenizer"].dir / "tokenizer", ctx),
        dataset="tokenized", description="Megatron .bin/.idx shards per source and split"))

    if spec.train is None:            # a data-only pipeline ends with the token shards
        return _finish_plan(nodes)

    # ---- training ---------------------------------------------------------------------------------
    train_id = spec.train.identity_dict()          # carries train.seed
    nodes.append(Node(
        key="pretrain", stage="train", name="pretrain", version=STAGE_VERSIONS["train"],
        config={"train": train_id}, inputs={"shards": "tokenize"}, resumable=True,
        run=lambda ctx, inp: run_pretrain(spec.train, inp["shards"].dir, ctx),
        description="pretrain on Ray Train (DDP)" if spec.train.init is None
        else f"continue pretraining {spec.train.init.path} on Ray Train"))
    model_nodes = {"pretrain": "pretrain"}
    parents: dict[str, str] = {}          # model label -> the label it was continued from
    if spec.continual is not None and spec.continual.enabled:
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
                key=key, stage="train", name=f"continual-{phase.name}", version=STAGE_VERSIONS["train"],
                config={"phase": phase.identity_dict(), "train": train_id},
                inputs={"shards": "tokenize", "init": parent_key}, resumable=True, run=cont_run,
                description=f"continual pretraining phase {phase.name} (from {parent})"))
            model_nodes[key] = key
            parents[key] = parent_key

    if spec.evaluate is None:
        return _finish_plan(nodes)

    # ---- evaluation ---------------------------------------------------------------------------------
    def eval_run(ctx, inp):
        models = {label: inp[f"model:{label}"].dir for label in model_nodes}
        return run_evaluate(spec.evaluate, models, inp["shards"].dir, ctx, parents=parents)

    nodes.append(Node(
        key="evaluate", stage="evaluate", name="eval", version=STAGE_VERSIONS["evaluate"],
        config={"evaluate": spec.evaluate.identity_dict()},
        inputs={"shards": "tokenize", **{f"model:{label}": key for label, key in model_nodes.items()}},
        run=eval_run, description="bits-per-byte per source, forgetting, multiple-choice tasks"))
    return _finish_plan(nodes)


def _finish_plan(nodes: list[Node]) -> list[Node]:
    for node in nodes:      # file paths in configs count by content, never by location
        node.config = digest_paths(node.config)
    return nodes


def stage_names(plan: list[Node]) -> list[str]:
    """What ``--until`` accepts for this plan: node keys, their families (``crawl``,
    ``ingest``, ``model``, ``continual``) and stage directories (``train``, ``models``)."""
    names: list[str] = []
    for node in plan:
        for name in (node.key.split(".", 1)[0], node.stage, node.key):
            if name not in names:
                names.append(name)
    return names


def prefix_until(plan: list[Node], stage: str | None) -> list[Node]:
    """The prefix of the DAG that ends with ``stage``: every node it names (a key such as
    ``ingest.docs``, a family such as ``ingest`` or ``continual``, or a stage directory such
    as ``train``) plus everything they depend on, in plan order. Identities are unchanged,
    so a later full run reuses every artifact of the prefix."""
    if not stage:
        return plan
    targets = [n for n in plan if n.key == stage or n.key.startswith(stage + ".") or n.stage == stage]
    if not targets:
        raise SpecError(f"--until {stage!r}: no such stage in this plan; "
                        f"choose one of: {', '.join(stage_names(plan))}")
    by_key = {n.key: n for n in plan}
    keep: set[str] = set()
    todo = [n.key for n in targets]
    while todo:
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo.extend(by_key[key].inputs.values())
    return [n for n in plan if n.key in keep]
