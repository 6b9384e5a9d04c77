"""Stage entry points: ``run_pretrain`` and ``run_continual``.

Both build a plain-values ``spec`` for ``pipeline.train.loop.train_worker`` and run it on
Ray Train (``TorchTrainer``, DDP; Gloo on CPU, NCCL on GPU) or, with ``num_workers: 0``
or one worker on a local Ray, in this process (``in_process``). Outputs under ``ctx.out_dir``:

  checkpoint/state.pt   full training state (model, AdamW, step): exact resume
  hf/                   save_pretrained weights + the tokenizer (AutoModelForCausalLM loads it)
  train_log.jsonl       one line per step: loss, lr, grad norm, tokens/s, val losses
  mixture.json          the expected source weights over the stage (after replay and switch)
  lineage.json          where the stage sits in the chain: parent, global steps, start/end
                        lr, pretraining mixture, data seed, realised and cumulative tokens
                        per source, realised replay fraction (``write_lineage``)
  summary.json          final metrics (also returned and logged to MLflow)
  plots/loss.png, plots/lr.png

If ``ctx.out_dir/checkpoint/`` exists when a stage starts (the runner keeps a killed
run's directory), training resumes from it instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from pipeline.stage import StageContext
from pipeline.train.config import PhaseConfig, ScheduleConfig, TrainConfig
from pipeline.train.loop import STATE_FILE, latest_checkpoint, ray_train_func, train_worker
from pipeline.train.model import resolve_transformers
from pipeline.train.schedules import chain, end_lr, lr_at, lr_curve, switch_step

resolve_transformers()        # before any thread builds a model (see its docstring)

LINEAGE = "lineage.json"


# ---- mixtures ---------------------------------------------------------------------------

def normalize(weights: dict[str, float]) -> dict[str, float]:
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"mixture weights sum to {total}: {weights}")
    return {k: float(v) / total for k, v in sorted(weights.items()) if v > 0}


def resolve_mixture(mixture: dict[str, float], shards: dict) -> dict[str, float]:
    """Normalised weights; an empty mixture weights every source by its train tokens."""
    if not mixture:
        mixture = {s: float(sets["train"].n_tokens) for s, sets in shards.items()
                   if sets["train"].n_tokens > 0}
        if not mixture:
            raise ValueError("the tokenize artifact holds no training tokens")
    unknown = sorted(set(mixture) - set(shards))
    if unknown:
        raise ValueError(f"mixture names unknown source(s) {unknown}; "
                         f"the tokenize artifact has {sorted(shards)}")
    return normalize(mixture)


def blend_mixture(new: dict[str, float], previous: dict[str, float],
                  replay: float) -> dict[str, float]:
    """``(1 - replay) * new + replay * previous`` (both normalised): replaying a fraction
    of the old mixture limits forgetting (Ibrahim et al. 2024: 1-5%, ~25% for a new
    language)."""
    new_n = normalize(new)
    if replay <= 0 or not previous:
        return new_n
    prev_n = normalize(previous)
    out = {s: (1.0 - replay) * new_n.get(s, 0.0) + replay * prev_n.get(s, 0.0)
           for s in set(new_n) | set(prev_n)}
    return normalize(out)


# ---- building and running the loop ------------------------------------------------------

def _fingerprint(cfg: TrainConfig, schedule: ScheduleConfig, steps: int,
                 mixture: dict[str, float], extra: str = "") -> str:
    """What a checkpoint must agree on to be resumed (resources may differ)."""
    blob = json.dumps({"train": cfg.identity_dict(), "schedule": schedule.identity_dict(),
                       "steps": steps, "mixture": mixture, "extra": extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def init_facts(cfg: TrainConfig, init_dir: Path | None = None) -> dict:
    """What training reads from the model it starts from (``train.init``, or ``init_dir``,
    the previous stage's ``hf/``): its config, context limit and vocabulary. The spec's
    ``train.model`` must agree with it (an error names both values). Empty when training
    from scratch."""
    from pipeline.train.model import (check_model_matches, describe_hf_config, init_hf_config,
                                      resolve_init)

    if init_dir is None and cfg.init is None:
        return {}
    init = resolve_init(init_dir if init_dir is not None else cfg.init.path)
    hf_cfg = init_hf_config(init)
    check_model_matches(cfg.model, hf_cfg, f"at {init.path}")
    desc = describe_hf_config(hf_cfg)
    max_ctx = desc["seq_len"]
    context = cfg.seq_len or max_ctx or cfg.model.seq_len
    if max_ctx and context > max_ctx:
        raise ValueError(f"train.seq_len={context} exceeds the init model's context "
                         f"{max_ctx} ({init.config_dir / 'config.json'})")
    return {"init": init, "hf_config": hf_cfg, "context": int(context), "model": desc}


def loop_spec(cfg: TrainConfig, shards_dir: Path, out_dir: Path, *, name: str,
              mixture: dict[str, float], schedule: ScheduleConfig, steps: int,
              tracking_uri: str | None = None, run_id: str | None = None,
              init_hf_dir: Path | None = None, init_optimizer: Path | None = None,
              show_progress: bool = True) -> dict:
    """The plain-values description of one training run that every worker receives."""
    from pipeline.tokenize.tokenizer import load_tokenizer, resolve_tokenizer_dir

    tok_dir = resolve_tokenizer_dir(Path(shards_dir))
    _, eos_id, vocab_size = load_tokenizer(tok_dir)
    facts = init_facts(cfg, init_hf_dir)
    init_path = None
    if facts:
        from pipeline.tokenize.tokenizer import read_extension

        model_vocab = facts["model"]["vocab_size"]
        ext = read_extension(tok_dir)
        if ext and ext["base_vocab_size"] <= model_vocab:
            model_vocab = max(model_vocab, ext["vocab_size"])   # grown by extend_embeddings
        if vocab_size > model_vocab:
            raise ValueError(f"the tokenizer {tok_dir} has {vocab_size} tokens but the init "
                             f"model {facts['init'].path} embeds only {model_vocab}")
        if init_hf_dir is None:          # train.init (a continual phase gets init_hf_dir)
            init_path = str(facts["init"].path.resolve())
            if cfg.init.load_optimizer:
                if facts["init"].state_file is None:
                    raise FileNotFoundError(f"train.init.load_optimizer: {cfg.init.path} holds no "
                                            "forgeflow checkpoint with optimizer state")
                init_optimizer = facts["init"].state_file
    return {
        "name": name,
        "train": cfg.model_dump(mode="json"),
        "schedule": schedule.model_dump(mode="json"),
        "steps": int(steps),
        "mixture": mixture,
        "seed": cfg.seed,
        "context": facts.get("context", cfg.context),
        "shards_dir": str(Path(shards_dir).resolve()),
        "tokenizer_dir": str(Path(tok_dir).resolve()),
        "vocab_size": vocab_size,
        "eos_token_id": eos_id,
        "out_dir": str(Path(out_dir).resolve()),
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "init_hf_dir": str(init_hf_dir) if init_hf_dir else None,
        "init_path": init_path,
        "init_optimizer": str(init_optimizer) if init_optimizer else None,
        "show_progress": show_progress,
        "fingerprint": _fingerprint(cfg, schedule, steps, mixture,
                                    extra=str(init_hf_dir is not None)),
    }


def in_process(cfg: TrainConfig) -> bool:
    """Whether the loop runs in this process: ``num_workers: 0``, or one worker on a local
    Ray (the same loop, as rank 0 of a world of 1, without starting a Ray Train worker
    group: seconds per training stage). With a Ray cluster address one worker still runs
    on the cluster."""
    from pipeline.engine import ray_address

    return cfg.num_workers == 0 or (cfg.num_workers == 1 and not ray_address())


def execute(spec: dict, cfg: TrainConfig, num_cpus: int | None = None) -> dict:
    """Run the loop in this process (see ``in_process``) or on Ray Train; return the
    rank-0 summary."""
    if in_process(cfg):
        _fit_local(spec)
    else:
        _fit_ray(spec, cfg, num_cpus)
    summary_path = Path(spec["out_dir"]) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"training finished without writing {summary_path}")
    return json.loads(summary_path.read_text())


def _fit_local(spec: dict) -> None:
    """``train_worker`` here; it sets torch's thread count to ``cpus_per_worker`` as a Ray
    worker would, and this process gets its own back afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        train_worker(spec)
    finally:
        torch.set_num_threads(threads)


def _fit_ray(spec: dict, cfg: TrainConfig, num_cpus: int | None) -> None:
    from pipeline.engine import ensure_ray

    ray = ensure_ray(num_cpus)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    need = cfg.num_workers * cfg.cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        raise ValueError(f"train.num_workers={cfg.num_workers} x cpus_per_worker="
                         f"{cfg.cpus_per_worker} needs {need} CPUs; the Ray cluster has {have:g}")
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.use_gpu and cfg.num_workers > gpus:
        raise ValueError(f"train.use_gpu with num_workers={cfg.num_workers} needs as many GPUs; "
                         f"the Ray cluster has {gpus:g}")
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    # Ray Train's own run state goes to a throwaway directory: our checkpoints live in
    # out_dir (shared storage is required for multi-node clusters, see docs).
    with tempfile.TemporaryDirectory(prefix="forgeflow-raytrain-") as storage:
        trainer = TorchTrainer(
            ray_train_func,
            train_loop_config=spec,
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            run_config=RunConfig(name=spec["name"].replace(".", "-"), storage_path=storage,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures)),
        )
        trainer.fit()


# ---- reporting --------------------------------------------------------------------------

def read_log(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _plots(ctx: StageContext, records: list[dict], schedule: ScheduleConfig, steps: int,
           title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", lw=1)
    val_keys = sorted({k for r in records for k in r if k.startswith("val_loss.")})
    for k in val_keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot(*zip(*pts), marker="o", ms=3, label=k.replace("val_loss.", "val "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=7)
    ctx.figure(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(steps + 1), lr_curve(steps, schedule), lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: {schedule.kind} schedule")
    ctx.figure(fig, "lr.png")


def _finish(ctx: StageContext, summary: dict, mixture: dict[str, float],
            schedule: ScheduleConfig, steps: int, title: str) -> dict:
    records = read_log(ctx.out_dir)
    if records:
        _plots(ctx, records, schedule, steps, title)
        ctx.artifact(ctx.out_dir / "train_log.jsonl")
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    ctx.metrics(metrics)
    ctx.note(f"**{title}**: {int(summary['steps'])} steps, {summary['tokens_seen']:,} tokens, "
             f"{int(summary.get('params', 0)):,} params, final loss {summary['final_loss']:.4f}, "
             f"{summary['tokens_per_s']:,.0f} tokens/s")
    if summary.get("tracking_failures"):
        ctx.note(f"- **warning**: {int(summary['tracking_failures'])} MLflow metric logging call(s) "
                 f"failed (last at {summary.get('tracking_last_error')}); train_log.jsonl has every step")
    for k in sorted(k for k in summary if k.startswith("final_val_loss.")):
        ctx.note(f"- val loss {k.split('.', 1)[1]}: {summary[k]:.4f}")
    ctx.note("- mixture: " + ", ".join(f"{s} {w:.3f}" for s, w in mixture.items()))
    return metrics


def _log_model(ctx: StageContext, cfg: TrainConfig, metrics: dict) -> None:
    """The final HF export as an MLflow model on the stage's run (``train.log_model``),
    registered as ``train.register_as`` when set (see ``pipeline/train/export.py``)."""
    if not (cfg.log_model and ctx.tracking_uri and ctx.mlflow_run_id):
        return
    from pipeline.train.export import log_hf_model

    try:
        info = log_hf_model(ctx.out_dir / "hf", ctx.tracking_uri, ctx.mlflow_run_id,
                            register_as=cfg.register_as, description=f"forgeflow stage {ctx.name}")
    except Exception as exc:        # tracking must never fail a finished training run
        ctx.note(f"- WARNING: logging the model to MLflow failed: {exc}")
        return
    ctx.note(f"- MLflow model `{info['model_uri']}`" + (
        f", registered as `{cfg.register_as}` version {info['registered_version']}"
        if cfg.register_as else ""))
    if info["registered_version"] is not None:
        metrics["registered_version"] = float(info["registered_version"])


# ---- entry points -----------------------------------------------------------------------

def run_pretrain(cfg: TrainConfig, shards_dir: Path, ctx: StageContext) -> dict:
    """Pretrain ``cfg.model`` on the tokenize artifact ``shards_dir``; resumes from
    ``ctx.out_dir/checkpoint/`` when present. Returns flat metrics."""
    from pipeline.tokenize.reader import open_shards

    shards_dir = Path(shards_dir)
    mixture = resolve_mixture(cfg.mixture, open_shards(shards_dir))
    for src, w in mixture.items():
        ctx.param(f"mix.{src}", round(w, 6))
    (ctx.out_dir / "mixture.json").write_text(json.dumps(mixture, indent=1))
    resumed = latest_checkpoint(ctx.out_dir)
    if resumed:
        ctx.note(f"resumed from {resumed}")
    spec = loop_spec(cfg, shards_dir, ctx.out_dir, name=ctx.name, mixture=mixture,
                     schedule=cfg.schedule, steps=cfg.steps, tracking_uri=ctx.tracking_uri,
                     run_id=ctx.mlflow_run_id, show_progress=ctx.show_progress)
    summary = execute(spec, cfg, ctx.num_cpus)
    write_lineage(ctx, spec, cfg, label="pretrain", parent=None, pretrain_mixture=mixture)
    metrics = _finish(ctx, summary, mixture, cfg.schedule, cfg.steps, ctx.name)
    _log_model(ctx, cfg, metrics)
    return metrics


def run_continual(phase: PhaseConfig, train_cfg: TrainConfig, shards_dir: Path,
                  init_dir: Path, ctx: StageContext,
                  replay_mixture: dict[str, float] | None = None) -> dict:
    """Continue training ``<init_dir>/hf`` (the artifact of the pretrain stage or of the
    phase this one starts from) under ``phase``:

    * data: ``phase.mixture`` with exactly ``phase.replay`` of the rows drawn from the
      replay blend — ``phase.replay_mixture``, else ``replay_mixture``, else the original
      pretraining mixture recorded in ``<init_dir>/lineage.json`` — with the phase's own
      data seed (``PhaseConfig.data_seed``), and an optional blend switch;
    * schedule: ``previous`` resolved to the lr where ``init_dir``'s stage ended (``chain``);
    * budget: ``phase.steps`` or ``phase.tokens``.
    """
    from pipeline.tokenize.mixture import sampler_for
    from pipeline.tokenize.reader import open_shards

    init_dir, shards_dir = Path(init_dir), Path(shards_dir)
    if not (init_dir / "hf").is_dir():
        raise FileNotFoundError(f"{init_dir / 'hf'} does not exist: continual phase "
                                f"{phase.name!r} needs the previous stage's weights")
    parent = read_lineage(init_dir)
    shards = open_shards(shards_dir)
    new_mix = resolve_mixture(phase.mixture, shards)
    replay_from = phase.replay_mixture or replay_mixture or parent.get("pretrain_mixture") or {}
    replay_mix = resolve_mixture(replay_from, shards) if replay_from and phase.replay > 0 else {}
    if phase.replay > 0 and not replay_mix:
        raise ValueError(f"phase {phase.name!r} sets replay={phase.replay} but {init_dir} records "
                         "no pretraining mixture; give replay_mixture")
    schedule = chain(phase.schedule, parent.get("end_lr"))
    steps = phase.steps_for(train_cfg.batch_size * train_cfg.context)
    switch_at, switch_mix = None, None
    if phase.switch is not None:
        switch_mix = resolve_mixture(phase.switch.mixture, shards)
        switch_at = switch_step(steps, schedule, at_lr_ratio=phase.switch.at_lr_ratio,
                                at_fraction=phase.switch.at_fraction)
    mixture = expected_mixture(new_mix, replay_mix, phase.replay, steps, switch_at, switch_mix)
    for src, w in mixture.items():
        ctx.param(f"mix.{src}", round(w, 6))
    ctx.param("replay", phase.replay)
    ctx.param("start_lr", lr_at(0, steps, schedule))
    (ctx.out_dir / "mixture.json").write_text(json.dumps(mixture, indent=1))
    update = {"steps": steps, "mixture": new_mix, "schedule": schedule,
              "seed": phase.data_seed(train_cfg.seed)}
    if phase.eval_every is not None:
        update["eval_every"] = phase.eval_every
    cfg = train_cfg.model_copy(update=update)
    last = latest_checkpoint(init_dir)
    init_opt = last / STATE_FILE if phase.load_optimizer and last else None
    if phase.load_optimizer and init_opt is None:
        raise FileNotFoundError(f"phase {phase.name!r} sets load_optimizer but {init_dir} "
                                "holds no checkpoint")
    spec = loop_spec(cfg, shards_dir, ctx.out_dir, name=ctx.name, mixture=new_mix,
                     schedule=schedule, steps=steps, tracking_uri=ctx.tracking_uri,
                     run_id=ctx.mlflow_run_id, init_hf_dir=init_dir / "hf",
                     init_optimizer=init_opt, show_progress=ctx.show_progress)
    data = {"replay": phase.replay if replay_mix else 0.0, "replay_mixture": replay_mix or None,
            "switch_step": switch_at, "switch_mixture": switch_mix}
    spec.update(data)
    spec["fingerprint"] = _fingerprint(cfg, schedule, steps, new_mix,
                                       extra=json.dumps(data, sort_keys=True) + ":init")
    sampler_for(shards, spec, cfg.context, cfg.seed)      # a bad mixture fails before Ray starts
    summary = execute(spec, cfg, ctx.num_cpus)
    lineage = write_lineage(ctx, spec, cfg, label=f"continual.{phase.name}", parent=parent,
                            pretrain_mixture=parent.get("pretrain_mixture") or replay_mix)
    summary["replay_fraction_realised"] = lineage["replay_fraction_realised"]
    if switch_at is not None:
        summary["switch_step"] = switch_at
        ctx.note(f"- blend switched at step {switch_at} (lr {lr_at(switch_at, steps, schedule):.2e})")
    metrics = _finish(ctx, summary, mixture, schedule, steps,
                      f"{ctx.name} ({schedule.kind}, replay {phase.replay:g})")
    _log_model(ctx, cfg, metrics)
    return metrics


def expected_mixture(new: dict[str, float], replay: dict[str, float], fraction: float,
                     steps: int, switch_at: int | None = None,
                     switched: dict[str, float] | None = None) -> dict[str, float]:
    """The source weights a phase draws in expectation over its ``steps``: ``1 - fraction``
    of ``new`` (``switched`` from step ``switch_at`` on) and ``fraction`` of ``replay``."""
    main = normalize(new)
    if switch_at is not None and switched:
        a = min(max(switch_at, 0), steps) / steps
        sw = normalize(switched)
        main = {s: a * main.get(s, 0.0) + (1 - a) * sw.get(s, 0.0) for s in set(main) | set(sw)}
    return blend_mixture(main, replay, fraction) if replay else normalize(main)


# ---- lineage: how stages chain ------------------------------------------------------------

def read_lineage(art_dir: Path) -> dict:
    """``<art_dir>/lineage.json``; for an artifact written before it existed, what can be
    recovered (its mixture as the pretraining mixture, the last logged lr and step)."""
    art_dir = Path(art_dir)
    path = art_dir / LINEAGE
    if path.exists():
        return json.loads(path.read_text())
    out: dict = {"label": art_dir.name, "global_step_end": 0, "cumulative_tokens_per_source": {}}
    if (art_dir / "mixture.json").exists():
        out["pretrain_mixture"] = json.loads((art_dir / "mixture.json").read_text())
    records = read_log(art_dir)
    if records:
        out["end_lr"] = records[-1]["lr"]
        out["global_step_end"] = records[-1]["step"]
    return out


def write_lineage(ctx: StageContext, spec: dict, cfg: TrainConfig, *, label: str,
                  parent: dict | None, pretrain_mixture: dict[str, float]) -> dict:
    """Record where this stage sits in the chain (read by the next phase and by evaluate):
    global step range, schedule start/end, the data it actually drew, cumulative tokens."""
    from pipeline.tokenize.mixture import sampler_for
    from pipeline.tokenize.reader import open_shards

    steps = int(spec["steps"])
    schedule = ScheduleConfig.model_validate(spec["schedule"])
    sampler = sampler_for(open_shards(Path(spec["shards_dir"])), spec, cfg.context, cfg.seed)
    realised = sampler.realised(steps, cfg.batch_size)
    parent = parent or {}
    cum = dict(parent.get("cumulative_tokens_per_source") or {})
    for src, n in realised["tokens"].items():
        cum[src] = cum.get(src, 0) + n
    g0 = int(parent.get("global_step_end", 0))
    lineage = {
        "label": label, "parent": parent.get("label"),
        "ancestors": [*parent.get("ancestors", []), parent["label"]] if parent.get("label") else [],
        "pretrain_mixture": pretrain_mixture, "mixture": spec["mixture"],
        "replay": spec.get("replay", 0.0), "replay_mixture": spec.get("replay_mixture"),
        "switch_step": spec.get("switch_step"), "switch_mixture": spec.get("switch_mixture"),
        "seed": spec.get("seed", cfg.seed), "steps": steps,
        "tokens_per_step": cfg.batch_size * cfg.context,
        "global_step_start": g0, "global_step_end": g0 + steps,
        "start_lr": lr_at(0, steps, schedule), "peak_lr": max(lr_curve(steps, schedule)),
        "end_lr": end_lr(steps, schedule), "schedule": spec["schedule"],
        "tokens_per_source": realised["tokens"], "cumulative_tokens_per_source": cum,
        "replay_tokens_per_source": realised["replay_tokens"],
        "replay_fraction_realised": realised["replay_fraction"],
    }
    (ctx.out_dir / LINEAGE).write_text(json.dumps(lineage, indent=1))
    ctx.metrics({**{f"tokens.{s}": float(n) for s, n in realised["tokens"].items()},
                 **{f"cum_tokens.{s}": float(n) for s, n in cum.items()},
                 "global_step_end": float(g0 + steps),
                 "replay_fraction_realised": realised["replay_fraction"]})
    return lineage
