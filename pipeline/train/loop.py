"""The training loop: one function, run by every worker, readable top to bottom.

``train_worker(spec)`` is what each Ray Train worker runs (and what the single-process
path runs directly when ``num_workers == 0``). ``spec`` is a plain dict of values (see
``pipeline.train.stage.loop_spec``), so it pickles to workers without dragging the
StageContext along. Per step:

1. the learning rate is ``lr_at(step)`` (a pure function of the step);
2. this rank reads rows ``rank::world`` of the global batch for ``step``
   (``MixtureSampler.rank_batch``: a pure function of (seed, step), so resuming or
   changing the worker count reproduces the same data order);
3. forward/backward over micro-batches (DDP averages gradients across ranks), clip,
   AdamW step;
4. rank 0 logs loss / lr / tokens/s / grad norm to MLflow (explicit run id), to
   ``train_log.jsonl`` and to the terminal; every ``eval_every`` steps all ranks compute
   the validation loss per source; every ``checkpoint_every`` steps rank 0 writes the
   full training state to ``<out>/checkpoint/state.pt`` (atomically).

A worker that finds ``<out>/checkpoint/state.pt`` resumes from it: the model and AdamW
state are restored and the loop continues at the saved step, so the run ends with the
same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.progress import Progress
from pipeline.train.config import ScheduleConfig, TrainConfig
from pipeline.train.model import (build_model, count_params, flops_per_token, gpu_peak_flops,
                                  load_model)
from pipeline.train.schedules import lr_at

CHECKPOINT = "checkpoint"
STATE_FILE = "state.pt"


# ---- distributed helpers (no-ops in the single-process path) ----------------------------

def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _rank_world(in_ray: bool) -> tuple[int, int]:
    if in_ray:
        import ray.train

        c = ray.train.get_context()
        return c.get_world_rank(), c.get_world_size()
    return 0, 1


# ---- pieces of the loop -----------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW with weight decay on matrices only (biases and norm gains are not decayed,
    as in nanoGPT / GPT-3); the lr is set every step from the schedule."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optimizer.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.optimizer.betas),
                             eps=cfg.optimizer.eps, **kw)


def lm_loss(model, batch: torch.Tensor, autocast) -> torch.Tensor:
    """Mean next-token cross-entropy of rows ``[B, T+1]`` (inputs row[:-1], targets row[1:])."""
    x, y = batch[:, :-1], batch[:, 1:]
    with autocast():
        logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def val_windows(n_tokens: int, context: int, budget: int) -> list[tuple[int, int]]:
    """Fixed, evenly spaced ``(start, length)`` windows covering about ``budget`` tokens of
    a validation stream (the same every evaluation, so val curves are comparable)."""
    if n_tokens < 2 or budget <= 0:
        return []
    length = min(context + 1, n_tokens)
    n = max(1, min(budget // (length - 1), n_tokens // (length - 1)))
    last = n_tokens - length
    return [(int(round(i * last / max(n - 1, 1))) if n > 1 else 0, length) for i in range(n)]


@torch.no_grad()
def val_loss(model, val_sets: dict, context: int, budget: int, rank: int, world: int,
             device, autocast) -> dict[str, float]:
    """Mean token NLL per source over fixed windows, split across ranks and summed."""
    out = {}
    model.eval()
    for src in sorted(val_sets):
        windows = val_windows(val_sets[src].n_tokens, context, budget)
        acc = torch.zeros(2, dtype=torch.float64, device=device)
        for start, length in windows[rank::world]:
            row = torch.from_numpy(val_sets[src].window(start, length)).to(device)[None]
            acc[0] += lm_loss(model, row, autocast).double() * (length - 1)
            acc[1] += length - 1
        _all_reduce_sum(acc)
        if acc[1] > 0:
            out[src] = float(acc[0] / acc[1])
    model.train()
    return out


def save_checkpoint(out_dir: Path, raw_model, optimizer, step: int, meta: dict) -> Path:
    """Full training state in one file, written to a temp name then renamed (atomic)."""
    d = Path(out_dir) / CHECKPOINT
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{STATE_FILE}.tmp"
    torch.save({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "meta": meta}, tmp)
    os.replace(tmp, d / STATE_FILE)
    (d / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
    return d / STATE_FILE


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class _MlflowLogger:
    """Metrics to one MLflow run by explicit id (works from any Ray worker)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, prefix: str = ""):
        self.client = None
        self.run_id = run_id
        self.prefix = prefix
        if tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(self.prefix + k, float(v), ts, step) for k, v in values.items()
                   if v is not None and math.isfinite(float(v))]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:  # tracking must never end a training run
            print(f"[train] MLflow logging failed at step {step}: {exc}", flush=True)


# ---- the loop ---------------------------------------------------------------------------

def train_worker(spec: dict) -> dict | None:
    """Run (or resume) training as described by ``spec``; rank 0 returns the summary."""
    from pipeline.tokenize.mixture import sampler_for
    from pipeline.tokenize.reader import open_shards

    in_ray = spec.get("in_ray", False)
    rank, world = _rank_world(in_ray)
    cfg = TrainConfig.model_validate(spec["train"])
    sched = ScheduleConfig.model_validate(spec["schedule"])
    total_steps, context, name = int(spec["steps"]), cfg.context, spec.get("name", "train")
    out_dir = Path(spec["out_dir"])
    torch.set_num_threads(max(1, cfg.cpus_per_worker))

    # -- device and precision: bf16 autocast, SDPA, torch.compile only on GPU
    if cfg.use_gpu and torch.cuda.is_available():
        if in_ray:
            import ray.train.torch

            device = ray.train.torch.get_device()
        else:
            device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    use_bf16 = cfg.precision == "bf16" and device.type == "cuda"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- data: rows of the global batch for this rank, a function of (seed, step)
    shards = open_shards(Path(spec["shards_dir"]))
    sampler = sampler_for(shards, spec, context, cfg.seed)   # mixture, replay, switch, seed
    val_sets = {s: shards[s]["val"] for s in shards if shards[s]["val"].n_tokens > 1}
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} workers")
    local_bs = cfg.batch_size // world
    micro = min(cfg.micro_batch_size or local_bs, local_bs)
    if local_bs % micro:
        raise ValueError(f"per-worker batch {local_bs} is not divisible by micro_batch_size {micro}")
    n_micro = local_bs // micro

    # -- model: fresh (seeded), or the previous stage's weights, or a checkpoint to resume
    if spec.get("init_hf_dir"):
        raw = load_model(spec["init_hf_dir"], attention=cfg.attention)
    else:
        raw = build_model(cfg.model, spec["vocab_size"], spec.get("eos_token_id"),
                          attention=cfg.attention, seed=cfg.seed)
    raw.to(device)
    optimizer = make_optimizer(raw, cfg, device)
    state_path = out_dir / CHECKPOINT / STATE_FILE
    start_step = 0
    if state_path.exists():
        state = load_checkpoint(state_path)
        if state["meta"].get("fingerprint") != spec["fingerprint"]:
            raise ValueError(f"{state_path} was written by a different training config; "
                             "delete it to start over")
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        if rank == 0:
            print(f"[{name}] resuming from {state_path} at step {start_step}/{total_steps}",
                  flush=True)
        del state
    elif spec.get("init_optimizer"):
        optimizer.load_state_dict(load_checkpoint(spec["init_optimizer"])["optimizer"])

    model = raw
    if cfg.compile and device.type == "cuda":
        model = torch.compile(model)
    if in_ray and world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model, move_to_device=False)
    model.train()

    # -- bookkeeping (rank 0)
    log_path = out_dir / "train_log.jsonl"
    mlf = _MlflowLogger(spec.get("tracking_uri"), spec.get("run_id")) if rank == 0 else None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_step)
    tokens_per_step = cfg.batch_size * context
    fpt = flops_per_token(raw, cfg.model, context)
    peak = gpu_peak_flops() if device.type == "cuda" else None
    # Ray Train tees prints to sys.stdout/stderr into its logger too; the original
    # stream prints each progress line once.
    progress = Progress(name, total=total_steps - start_step, unit="steps", interval=0.0,
                        stream=sys.__stderr__ if in_ray else None,
                        enabled=rank == 0 and spec.get("show_progress", True))
    meta = {"fingerprint": spec["fingerprint"], "world_size": world}
    halt_after = spec.get("halt_after_step")   # tests: simulate a kill after this step
    last_loss, last_val = float("nan"), {}
    t_run = time.perf_counter()

    step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, sched)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(sampler.rank_batch(step, cfg.batch_size, rank, world)).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(n_micro):
            sync = i == n_micro - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()):
                loss = lm_loss(model, batch[i * micro:(i + 1) * micro], autocast) / n_micro
                loss.backward()
            loss_sum += loss.detach().double()
        clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        last_loss = float(_all_reduce_sum(loss_sum) / world)   # global-batch mean loss
        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        record = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": step * tokens_per_step, "tokens_per_s": tok_s}
        if peak:
            record["mfu"] = fpt * tok_s / (peak * world)

        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
            # the unwrapped module: ranks score different numbers of windows, and a DDP
            # forward may broadcast buffers (a collective) on every call
            last_val = val_loss(raw, val_sets, context, cfg.val_tokens_per_source,
                                rank, world, device, autocast)
            record.update({f"val_loss.{s}": v for s, v in last_val.items()})

        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            mlf.log({k: v for k, v in record.items() if k != "step"}, step)
            if step % cfg.log_every == 0 or step == total_steps or step == start_step + 1:
                extra = {"val": round(float(np.mean(list(last_val.values()))), 4)} \
                    if any(k.startswith("val_loss.") for k in record) and last_val else {}
                progress.update(step - start_step - progress.n, step=f"{step}/{total_steps}", loss=round(last_loss, 4), lr=f"{lr:.2e}",
                                tok_s=round(tok_s), **extra)

        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total_steps:
            if rank == 0:
                save_checkpoint(out_dir, raw, optimizer, step, meta)
            _barrier()
        if halt_after is not None and step >= halt_after and step < total_steps:
            return None

    if start_step >= total_steps:   # killed after the final checkpoint, before hf/ was saved
        last_val = val_loss(raw, val_sets, context, cfg.val_tokens_per_source, rank, world,
                            device, autocast)
        done = [json.loads(ln) for ln in log_path.read_text().splitlines()] \
            if rank == 0 and log_path.exists() else []
        last_loss = done[-1]["loss"] if done else float("nan")

    # -- the deliverable: a Hugging Face directory + the tokenizer beside it
    summary = None
    if rank == 0:
        hf_dir = out_dir / "hf"
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        raw.save_pretrained(str(hf_dir))
        tok_dir = Path(spec["tokenizer_dir"])
        for f in tok_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, hf_dir / f.name)
        elapsed = time.perf_counter() - t_run
        trained = (total_steps - start_step) * tokens_per_step
        summary = {"final_loss": last_loss, "tokens_seen": total_steps * tokens_per_step,
                   "tokens_per_s": trained / elapsed if elapsed > 0 else 0.0,
                   "steps": total_steps, "resumed_from_step": start_step,
                   "world_size": world, "flops_per_token": fpt, "params": count_params(raw),
                   **{f"final_val_loss.{s}": v for s, v in last_val.items()}}
        if peak:
            summary["mfu"] = fpt * summary["tokens_per_s"] / (peak * world)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _barrier()
    return summary


def _truncate_log(path: Path, keep_until_step: int) -> None:
    """Drop log lines past the checkpoint we resume from (they will be re-done)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines()
             if ln.strip() and json.loads(ln)["step"] <= keep_until_step]
    path.write_text("".join(ln + "\n" for ln in lines))


def ray_train_func(spec: dict) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``)."""
    train_worker({**spec, "in_ray": True})
