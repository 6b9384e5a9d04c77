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
from pipeline.tokenize.tokenizer import read_extension
from pipeline.train.model import (CausalLMLoss, build_model, count_params,
                                  enable_activation_checkpointing, extend_embeddings, flops_per_token,
                                  gpu_peak_flops, load_init_model, load_model, quiet_transformers,
                                  resolve_init)
from pipeline.train.schedules import lr_at

CHECKPOINT = "checkpoint"
STATE_FILE = "state.pt"
SHARDED_DIR = "sharded"     # FSDP: torch.distributed.checkpoint shards of model + AdamW


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

def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                   sharded: bool = False):
    """AdamW with weight decay on matrices only (biases and norm gains are not decayed,
    as in nanoGPT / GPT-3); the lr is set every step from the schedule.
    ``optimizer.kind``: torch's AdamW, bitsandbytes' 8-bit AdamW, or GaLore-AdamW, which
    projects the gradients of the blocks' 2-D weights (embeddings and LM head stay
    full-rank, as in the GaLore paper)."""
    opt = cfg.optimizer
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    if opt.kind != "adamw" and sharded:
        raise ValueError(f"train.optimizer.kind={opt.kind} works on whole tensors, not on "
                         "FSDP shards: use parallelism: ddp")
    groups = [{"params": decay, "weight_decay": opt.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    common = dict(lr=0.0, betas=tuple(opt.betas), eps=opt.eps)
    if opt.kind == "adamw8bit":
        bnb = _optional_package("bitsandbytes", opt.kind)
        return bnb.optim.AdamW8bit(groups, **common)
    if opt.kind == "galore_adamw":
        galore = _optional_package("galore_torch", opt.kind)
        full_rank = {id(m.weight) for m in (model.get_input_embeddings(),
                                            model.get_output_embeddings()) if m is not None}
        low = [p for p in decay if id(p) not in full_rank]
        g = opt.galore
        groups = [{"params": [p for p in decay if id(p) in full_rank], "weight_decay": opt.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0},
                  {"params": low, "weight_decay": opt.weight_decay, "rank": g.rank,
                   "update_proj_gap": g.update_proj_gap, "scale": g.scale, "proj_type": g.proj_type}]
        return galore.GaLoreAdamW([grp for grp in groups if grp["params"]], **common)
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, **common, **kw)


def _optional_package(module: str, kind: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"train.optimizer.kind={kind} needs the {module.replace('_', '-')} package: "
                         "pip install -c constraints.txt -e '.[optim]'") from exc


def lm_loss(model, batch: torch.Tensor, autocast) -> torch.Tensor:
    """Mean next-token cross-entropy of rows ``[B, T+1]`` (inputs row[:-1], targets row[1:]).
    ``model`` is a ``CausalLMLoss`` (chunked over the LM head), possibly DDP/FSDP-wrapped,
    or a bare HF causal LM (full logits)."""
    with autocast():
        if isinstance(getattr(model, "module", model), CausalLMLoss) or isinstance(model, CausalLMLoss):
            return model(batch)
        logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


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
             device, autocast, lockstep: bool = False) -> dict[str, float]:
    """Mean token NLL per source over fixed windows, split across ranks and summed.
    ``lockstep`` (FSDP: every forward all-gathers, so all ranks must run as many): ranks
    short of windows score a repeat with weight 0."""
    out = {}
    model.eval()
    for src in sorted(val_sets):
        windows = val_windows(val_sets[src].n_tokens, context, budget)
        acc = torch.zeros(2, dtype=torch.float64, device=device)
        mine = [(w, 1) for w in windows[rank::world]]
        if lockstep and windows:
            mine += [(windows[0], 0)] * (-(-len(windows) // world) - len(mine))
        for (start, length), weight in mine:
            row = torch.from_numpy(val_sets[src].window(start, length)).to(device)[None]
            acc[0] += lm_loss(model, row, autocast).double() * (length - 1) * weight
            acc[1] += (length - 1) * weight
        _all_reduce_sum(acc)
        if acc[1] > 0:
            out[src] = float(acc[0] / acc[1])
    model.train()
    return out


# ---- checkpoints --------------------------------------------------------------------------
#
# <out>/checkpoint/step-00000040/   state.pt (model, AdamW, step, meta; FSDP: sharded/ holds
#                                   model + AdamW as DCP shards), config.json (the HF
#                                   config, so a checkpoint alone rebuilds the model),
#                                   rng-rank<r>.pt (every rank's RNG states), meta.json
# <out>/checkpoint/meta.json        the latest step (written after the rename)
#
# All ranks write into .tmp-step-N/, then rank 0 renames it to step-N/: a directory named
# step-N is always complete. Data position = the step (the sampler is a function of it).

def _step_dir(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_steps(out_dir: Path) -> list[int]:
    """Steps of the complete checkpoints under ``<out_dir>/checkpoint/``, ascending."""
    root = Path(out_dir) / CHECKPOINT
    if not root.is_dir():
        return []
    return sorted(int(d.name[5:]) for d in root.glob("step-*")
                  if d.name[5:].isdigit() and (d / STATE_FILE).is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a train artifact, or None."""
    steps = checkpoint_steps(out_dir)
    return Path(out_dir) / CHECKPOINT / _step_dir(steps[-1]) if steps else None


def _rng_state() -> dict:
    import random

    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import random

    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(out_dir: Path, raw_model, optimizer, step: int, meta: dict, *,
                    rank: int = 0, keep_last: int = 2, keep_every: int = 0,
                    sharded=None) -> Path:
    """Every rank calls this. The full training state (DDP / one process: rank 0 writes
    model + AdamW; FSDP, ``sharded`` = the fully_shard root: every rank writes its shards
    of both with torch.distributed.checkpoint) goes to a temporary directory that rank 0
    renames into place (atomic); older checkpoints beyond the last ``keep_last`` are
    deleted, except those at multiples of ``keep_every``."""
    root = Path(out_dir) / CHECKPOINT
    tmp, final = root / f".tmp-{_step_dir(step)}", root / _step_dir(step)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    if sharded is not None:     # FSDP: every rank writes its shards (torch.distributed.checkpoint)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(sharded, optimizer)
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp / SHARDED_DIR))
    if rank == 0:
        full = {} if sharded is not None else {"model": raw_model.state_dict(),
                                               "optimizer": optimizer.state_dict()}
        torch.save({**full, "step": step, "meta": meta, "sharded": sharded is not None},
                   tmp / STATE_FILE)
        raw_model.config.to_json_file(str(tmp / "config.json"))
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
    torch.save(_rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / "meta.json.tmp"
        pointer.write_text(json.dumps({"step": step, "latest": final.name, **meta}, indent=1))
        os.replace(pointer, root / "meta.json")
        prune_checkpoints(out_dir, keep_last, keep_every)
    _barrier()
    return final


def prune_checkpoints(out_dir: Path, keep_last: int, keep_every: int = 0) -> list[int]:
    """Delete checkpoints older than the last ``keep_last`` unless ``step % keep_every == 0``;
    return the steps kept."""
    steps = checkpoint_steps(out_dir)
    keep = set(steps[-keep_last:]) | {s for s in steps if keep_every and s % keep_every == 0}
    for s in steps:
        if s not in keep:
            shutil.rmtree(Path(out_dir) / CHECKPOINT / _step_dir(s), ignore_errors=True)
    return sorted(keep)


def load_checkpoint(path: Path) -> dict:
    """``state.pt`` of a checkpoint directory (or the file itself)."""
    path = Path(path)
    return torch.load(path / STATE_FILE if path.is_dir() else path, map_location="cpu",
                      weights_only=False)


def load_sharded(ckpt: Path, sharded, optimizer) -> None:
    """Every rank reads its shards of model + AdamW back (FSDP resume)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(sharded, optimizer)
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(Path(ckpt) / SHARDED_DIR))
    set_state_dict(sharded, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def full_model(raw_model, sharded):
    """A plain CPU copy of the model for saving: the model itself, or under FSDP the
    full state dict gathered to rank 0 (None on other ranks) loaded into a fresh model."""
    if sharded is None:
        return raw_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=True))
    if not full:
        return None
    from pipeline.train.model import MODEL_BUILD_LOCK
    with MODEL_BUILD_LOCK, torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(raw_model.config)
    copy.load_state_dict({k.removeprefix("lm."): v for k, v in full.items()}, assign=True)
    copy.tie_weights()
    return copy


def export_hf(raw_model, hf_dir: Path, tokenizer_dir: Path) -> Path:
    """``save_pretrained`` + the tokenizer files, written beside and renamed into place."""
    from pipeline.tokenize.tokenizer import tokenizer_files

    quiet_transformers()
    hf_dir = Path(hf_dir)
    tmp = hf_dir.with_name(f".tmp-{hf_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    raw_model.save_pretrained(str(tmp))
    for f in tokenizer_files(Path(tokenizer_dir)):
        shutil.copy2(f, tmp / f.name)
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)
    return hf_dir


class _MlflowLogger:
    """Metrics to one MLflow run by explicit id (works from any Ray worker), buffered:
    ``add`` only appends; ``flush`` hands the batch to a background thread (``log_batch``,
    at most 1000 metrics a call), so the loop never waits on the tracking server."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, prefix: str = ""):
        self.client = None
        self.run_id = run_id
        self.prefix = prefix
        self.failures = 0
        self.last_error = ""
        self.buffer: list = []
        self._pool = None
        self._pending = []
        if tracking_uri and run_id:
            from concurrent.futures import ThreadPoolExecutor

            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")

    def add(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.buffer += [Metric(self.prefix + k, float(v), ts, step) for k, v in values.items()
                        if v is not None and math.isfinite(float(v))]

    def log(self, values: dict[str, float], step: int) -> None:
        self.add(values, step)
        self.flush()

    def flush(self) -> None:
        if self.client is None or not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(self._send, batch))

    def _send(self, metrics: list) -> None:
        try:
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        except Exception as exc:  # tracking must never end a training run, but is reported:
            self.failures += 1    # counted into the summary (metric tracking_failures, a note)
            step = metrics[-1].step if metrics else -1
            self.last_error = f"step {step}: {type(exc).__name__}: {str(exc)[:300]}"
            if self.failures == 1 or self.failures % 100 == 0:
                print(f"[train] MLflow logging failed ({self.failures}x, {len(metrics)} metrics), "
                      f"{self.last_error}", flush=True)

    def close(self) -> None:
        """Flush and wait for every batch to be written."""
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            self.client = None


class StepGuard:
    """Non-finite loss or gradients: the step is skipped (no optimizer update) and logged;
    ``max_bad`` of them in a row stop the run with a clear message. A finite loss above
    ``spike_factor`` x the running mean of the recent losses is logged as a spike."""

    def __init__(self, max_bad: int, spike_factor: float, name: str):
        self.max_bad, self.spike_factor, self.name = max_bad, spike_factor, name
        self.in_a_row = self.skipped = self.spikes = 0
        self.mean = None            # EMA of good losses (beta 0.9), after 5 of them
        self.n_good = 0

    def check(self, step: int, loss: float, grad_norm: float) -> tuple[bool, bool]:
        """``(ok, spike)`` for the step that just computed its gradients."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.in_a_row += 1
            self.skipped += 1
            print(f"[{self.name}] step {step}: non-finite loss={loss} grad_norm={grad_norm}; "
                  f"update skipped ({self.in_a_row} in a row)", flush=True)
            if self.in_a_row >= self.max_bad:
                raise FloatingPointError(
                    f"[{self.name}] {self.in_a_row} training steps in a row (the last is step "
                    f"{step}) had a non-finite loss or gradient norm (loss={loss}, "
                    f"grad_norm={grad_norm}); stopping (train.max_bad_steps="
                    f"{self.max_bad}). Lower schedule.max_lr, check the data, or resume from "
                    "the last checkpoint.")
            return False, False
        self.in_a_row = 0
        spike = self.mean is not None and self.n_good >= 5 and loss > self.spike_factor * self.mean
        if spike:
            self.spikes += 1
            print(f"[{self.name}] step {step}: loss spike {loss:.4f} > {self.spike_factor:g} x "
                  f"running mean {self.mean:.4f}", flush=True)
        self.mean = loss if self.mean is None else 0.9 * self.mean + 0.1 * loss
        self.n_good += 1
        return True, spike


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this rank: CUDA allocator peak on GPU, peak RSS of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


# ---- the loop ---------------------------------------------------------------------------

def train_worker(spec: dict) -> dict | None:
    """Run (or resume) training as described by ``spec``; rank 0 returns the summary."""
    from pipeline.tokenize.mixture import sampler_for
    from pipeline.tokenize.reader import open_shards

    in_ray = spec.get("in_ray", False)
    rank, world = _rank_world(in_ray)
    cfg = TrainConfig.model_validate(spec["train"])
    sched = ScheduleConfig.model_validate(spec["schedule"])
    total_steps, name = int(spec["steps"]), spec.get("name", "train")
    context = int(spec.get("context") or cfg.context)
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
    batch_size = cfg.global_batch(context)
    if batch_size % world:
        raise ValueError(f"global batch {batch_size} is not divisible by {world} workers")
    local_bs = batch_size // world
    micro = min(cfg.micro_batch_size or local_bs, local_bs)
    if local_bs % micro:
        raise ValueError(f"per-worker batch {local_bs} is not divisible by micro_batch_size {micro}")
    n_micro = local_bs // micro                       # gradient accumulation steps

    # -- model: fresh (seeded), a pretrained init / the previous stage's weights, or a
    #    checkpoint of this run to resume
    if spec.get("init_hf_dir"):
        raw = load_model(spec["init_hf_dir"], attention=cfg.attention)
    elif spec.get("init_path"):
        raw = load_init_model(resolve_init(spec["init_path"]), attention=cfg.attention)
    else:
        raw = build_model(cfg.model, spec["vocab_size"], spec.get("eos_token_id"),
                          attention=cfg.attention, seed=cfg.seed)
    extension = read_extension(Path(spec["tokenizer_dir"]))
    if extension and extend_embeddings(raw, extension) and rank == 0:   # domain tokenizer
        print(f"[{name}] embeddings grown to {extension['vocab_size']} rows "
              f"({len(extension['new_tokens'])} domain tokens, mean-initialised)", flush=True)
    raw.to(device)
    if cfg.activation_checkpointing:      # per decoder block, recomputed in backward
        enable_activation_checkpointing(raw)
    fpt = flops_per_token(raw, None, context)
    lossmod = CausalLMLoss(raw, cfg.loss_chunk_tokens)
    # FSDP2: each block, then the root (embeddings, final norm, LM head), is sharded
    # across the ranks; the optimizer is built on the sharded parameters
    shard_root = None
    if cfg.parallelism == "fsdp" and world > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if use_bf16 else torch.float32,
                                      reduce_dtype=torch.float32)
        for block in _blocks(raw):
            fully_shard(block, mp_policy=policy)
        shard_root = fully_shard(lossmod, mp_policy=policy)
    optimizer = make_optimizer(raw, cfg, device, sharded=shard_root is not None)
    ckpt = latest_checkpoint(out_dir)
    start_step = 0
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        if state["meta"].get("fingerprint") != spec["fingerprint"]:
            raise ValueError(f"{ckpt} was written by a different training config; "
                             "delete it to start over")
        if bool(state.get("sharded")) != (shard_root is not None):
            raise ValueError(f"{ckpt} holds {'sharded (FSDP)' if state.get('sharded') else 'full'} "
                             f"state; this run (parallelism={cfg.parallelism}, {world} workers) "
                             "needs the other kind")
        if shard_root is not None:
            load_sharded(ckpt, shard_root, optimizer)
        else:
            raw.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        rng = ckpt / f"rng-rank{rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=False))
        if rank == 0:
            print(f"[{name}] resuming from {ckpt} at step {start_step}/{total_steps}",
                  flush=True)
        del state
    elif spec.get("init_optimizer"):
        if shard_root is not None:
            raise ValueError("continuing AdamW moments (load_optimizer) under parallelism: fsdp "
                             "is not supported yet; use ddp for that phase")
        optimizer.load_state_dict(load_checkpoint(spec["init_optimizer"])["optimizer"])

    if cfg.compile and device.type == "cuda":
        for block in _blocks(raw):        # per block, after wrapping (torchtitan practice)
            block.compile()
    model = lossmod
    if in_ray and world > 1 and shard_root is None:
        import ray.train.torch

        model = ray.train.torch.prepare_model(lossmod, move_to_device=False)
    model.train()
    lockstep = shard_root is not None

    # -- bookkeeping (rank 0)
    log_path = out_dir / "train_log.jsonl"
    mlf = _MlflowLogger(spec.get("tracking_uri"), spec.get("run_id")) if rank == 0 else None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_step)
    tokens_per_step = batch_size * context
    peak = gpu_peak_flops() if device.type == "cuda" else None
    # Ray Train tees prints to sys.stdout/stderr into its logger too; the original
    # stream prints each progress line once.
    progress = Progress(name, total=total_steps - start_step, unit="steps", interval=0.0,
                        stream=sys.__stderr__ if in_ray else None,
                        enabled=rank == 0 and spec.get("show_progress", True))
    meta = {"fingerprint": spec["fingerprint"], "world_size": world}
    halt_after = spec.get("halt_after_step")   # tests: simulate a kill after this step
    # tests: multiply the loss of these (0-based) steps, e.g. by nan
    loss_scale = {int(k): float(v) for k, v in (spec.get("inject_loss_scale") or {}).items()}
    guard = StepGuard(cfg.max_bad_steps, cfg.spike_factor, name)
    last_loss, last_val, initial_val = float("nan"), {}, {}
    t_run = time.perf_counter()

    if start_step == 0 and (spec.get("init_path") or spec.get("init_hf_dir")):
        # continued pretraining: where the init model starts on this data
        initial_val = val_loss(lossmod, val_sets, context, cfg.val_tokens_per_source,
                               rank, world, device, autocast, lockstep)
        if rank == 0:
            mlf.add({f"val_loss.{s}": v for s, v in initial_val.items()}, 0)

    step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, sched)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(sampler.rank_batch(step, batch_size, rank, world)).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(n_micro):
            sync = i == n_micro - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()):
                loss = lm_loss(model, batch[i * micro:(i + 1) * micro], autocast) / n_micro
                if step in loss_scale:
                    loss = loss * loss_scale[step]
                loss.backward()
            loss_sum += loss.detach().double()
        clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), clip))
        step_loss = float(_all_reduce_sum(loss_sum) / world)   # global-batch mean loss
        ok, spike = guard.check(step + 1, step_loss, grad_norm)
        if ok:
            optimizer.step()
            last_loss = step_loss
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        record = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": step * tokens_per_step, "tokens_per_s": tok_s}
        if not ok:
            record["skipped"] = 1
        if spike:
            record["loss_spike"] = 1
        if peak:
            record["mfu"] = fpt * tok_s / (peak * world)
        if step % cfg.log_every == 0 or step == total_steps:
            mem = torch.zeros(world, dtype=torch.float64, device=device)
            mem[rank] = peak_memory_mb(device)
            _all_reduce_sum(mem)
            record.update({f"peak_mem_mb.rank{r}": float(m) for r, m in enumerate(mem.tolist())})

        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
            # the unwrapped module: ranks score different numbers of windows, and a DDP
            # forward may broadcast buffers (a collective) on every call
            last_val = val_loss(lossmod, val_sets, context, cfg.val_tokens_per_source,
                                rank, world, device, autocast, lockstep)
            record.update({f"val_loss.{s}": v for s, v in last_val.items()})

        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            mlf.add({**{k: v for k, v in record.items() if k != "step"},
                     "skipped_steps": guard.skipped, "loss_spikes": guard.spikes}, step)
            if step % cfg.log_every == 0 or step == total_steps or step == start_step + 1:
                mlf.flush()
                extra = {"val": round(float(np.mean(list(last_val.values()))), 4)} \
                    if any(k.startswith("val_loss.") for k in record) and last_val else {}
                progress.update(step - start_step - progress.n, step=f"{step}/{total_steps}", loss=round(step_loss, 4), lr=f"{lr:.2e}",
                                tok_s=round(tok_s), **extra)

        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total_steps:
            save_checkpoint(out_dir, raw, optimizer, step, meta, rank=rank,
                            keep_last=cfg.keep_last, keep_every=cfg.keep_every,
                            sharded=shard_root)
        if cfg.export_hf_every and step % cfg.export_hf_every == 0 and step < total_steps:
            full = full_model(raw, shard_root)          # FSDP: a gather on every rank
            if rank == 0:
                export_hf(full, out_dir / f"hf-step-{step:08d}", Path(spec["tokenizer_dir"]))
            _barrier()
        if halt_after is not None and step >= halt_after and step < total_steps:
            if rank == 0:
                mlf.close()
            return None
        if spec.get("kill_rank_after_step") is not None and step == spec["kill_rank_after_step"] \
                and rank == spec.get("kill_rank", 1) and not (out_dir / ".killed").exists():
            (out_dir / ".killed").write_text(str(os.getpid()))   # tests: a worker dies once
            os.kill(os.getpid(), 9)

    if start_step >= total_steps:   # killed after the final checkpoint, before hf/ was saved
        last_val = val_loss(lossmod, val_sets, context, cfg.val_tokens_per_source, rank, world,
                            device, autocast, lockstep)
        done = [json.loads(ln) for ln in log_path.read_text().splitlines()] \
            if rank == 0 and log_path.exists() else []
        last_loss = done[-1]["loss"] if done else float("nan")

    # -- the deliverable: a Hugging Face directory + the tokenizer beside it
    summary = None
    nodes = _nodes(in_ray, world)                       # a gather on every rank
    full = full_model(raw, shard_root)                  # FSDP: a gather on every rank
    if rank == 0:
        mlf.close()
        export_hf(full, out_dir / "hf", Path(spec["tokenizer_dir"]))
        elapsed = time.perf_counter() - t_run
        trained = (total_steps - start_step) * tokens_per_step
        summary = {"final_loss": last_loss, "tokens_seen": total_steps * tokens_per_step,
                   "tokens_per_s": trained / elapsed if elapsed > 0 else 0.0,
                   "steps": total_steps, "resumed_from_step": start_step,
                   "world_size": world, "nodes": len(set(nodes)), "flops_per_token": fpt, "params": count_params(raw),
                   "batch_size": batch_size, "grad_accum_steps": n_micro,
                   "skipped_steps": guard.skipped, "loss_spikes": guard.spikes,
                   "peak_mem_mb": peak_memory_mb(device),
                   **{f"final_val_loss.{s}": v for s, v in last_val.items()},
                   **{f"initial_val_loss.{s}": v for s, v in initial_val.items()}}
        if peak:
            summary["mfu"] = fpt * summary["tokens_per_s"] / (peak * world)
        if mlf is not None and mlf.failures:
            summary.update(tracking_failures=mlf.failures, tracking_last_error=mlf.last_error)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _barrier()
    return summary


def _nodes(in_ray: bool, world: int) -> list[str]:
    """The Ray node id of every rank (this host's name outside Ray), gathered to all ranks:
    the summary's ``nodes`` says how many machines the training really ran on."""
    if in_ray:
        import ray

        mine = ray.get_runtime_context().get_node_id()
    else:
        import socket

        mine = socket.gethostname()
    if world > 1 and dist.is_available() and dist.is_initialized():
        out: list = [None] * world
        dist.all_gather_object(out, mine)
        return [str(x) for x in out]
    return [mine]


def _blocks(model) -> list[torch.nn.Module]:
    """The decoder blocks of an HF causal LM (``model.layers`` / ``transformer.h``)."""
    base = model.base_model
    for attr in ("layers", "h", "blocks"):
        if isinstance(getattr(base, attr, None), torch.nn.ModuleList):
            return list(getattr(base, attr))
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


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
