"""Spec sections for pretraining (``train:``) and continual pretraining (``continual:``).

Defaults are tiny so the quickstart trains on a laptop CPU in minutes; the GPU knobs
(``precision: bf16``, ``compile: true``, ``use_gpu: true``) are the ones you change for a
real run. Worker counts and per-worker micro-batching are resources: they change how
fast a run goes, not what it computes (data order is a function of (seed, step) and the
global batch), so they stay out of the artifact identity.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.specbase import Model


class ModelConfig(Model):
    """A decoder-only transformer built from a transformers config (never from a hub).

    ``llama``: RMSNorm, SwiGLU MLP, rotary positions, optional grouped-query attention.
    ``gpt2``: LayerNorm, GELU MLP, learned positions. Vocabulary size comes from the
    tokenizer of the tokenize artifact.
    """

    family: Literal["llama", "gpt2"] = "llama"
    d_model: int = Field(128, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="GQA key/value heads (llama); default n_heads")
    d_ff: int | None = Field(None, ge=1, description="MLP width; default 8/3*d (llama, rounded to 32) or 4*d (gpt2)")
    seq_len: int = Field(256, ge=8, description="maximum context (position embeddings / RoPE range)")
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02  # GPT-2 / nanoGPT

    @model_validator(mode="after")
    def _check_heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}")
        if self.family == "gpt2" and kv != self.n_heads:
            raise ValueError("gpt2 has no grouped-query attention: leave n_kv_heads unset")
        return self

    @property
    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.family == "gpt2":
            return 4 * self.d_model
        return 32 * ((8 * self.d_model // 3 + 31) // 32)  # SwiGLU keeps params ~ 4d MLP


PREVIOUS = "previous"   # a learning rate taken from where the previous stage ended


class ScheduleConfig(Model):
    """Learning-rate schedule; formulas in ``pipeline/train/schedules.py``.

    In a continual phase ``max_lr`` and ``start_lr`` may be ``previous``: the learning
    rate at which the stage the phase starts from ended (its ``lr_at(T)``), so schedules
    chain across phases (``pipeline.train.schedules.chain``)."""

    kind: Literal["cosine", "wsd", "infinite", "constant", "rewarm_cosine"] = "cosine"
    max_lr: float | Literal["previous"] = Field(1e-3, description="peak; 'previous' = where the previous stage ended")
    min_lr: float | None = Field(None, ge=0, description="absolute floor; default min_lr_ratio * max_lr")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)   # eta_min = 0.1 * eta_max (RESEARCH.md)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_fraction")
    warmup_fraction: float = Field(0.01, ge=0, le=1)  # ~1% (re-warm: Gupta et al. 2023)
    start_lr: float | Literal["previous"] | None = Field(
        None, description="rewarm_cosine: warmup start; default 'previous' in a continual phase "
                          "(where the previous stage ended), min_lr otherwise")
    decay_fraction: float = Field(0.2, ge=0, le=1)    # wsd: MiniCPM decays the last 10-20%
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    cooldown_fraction: float = Field(0.2, ge=0, le=1)  # infinite: cosine max -> const
    const_lr_ratio: float = Field(0.25, gt=0, le=1)    # infinite: eta_const / eta_max
    anneal_fraction: float = Field(0.0, ge=0, le=1)    # infinite: 0 = no anneal

    @model_validator(mode="after")
    def _check_lrs(self):
        if isinstance(self.max_lr, float) and self.max_lr <= 0:
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}")
        if isinstance(self.start_lr, float) and self.start_lr < 0:
            raise ValueError(f"start_lr must be >= 0, got {self.start_lr}")
        return self

    @property
    def chained(self) -> bool:
        """True while ``max_lr`` or ``start_lr`` still says ``previous``."""
        return PREVIOUS in (self.max_lr, self.start_lr)

    @property
    def peak_lr(self) -> float:
        if self.max_lr == PREVIOUS:
            raise ValueError("max_lr is 'previous': chain the schedule to the previous stage "
                             "first (pipeline.train.schedules.chain)")
        return float(self.max_lr)

    @property
    def min_lr_value(self) -> float:
        return self.min_lr if self.min_lr is not None else self.min_lr_ratio * self.peak_lr

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return min(int(round(self.warmup_fraction * total_steps)), total_steps)


class GaLoreConfig(Model):
    """GaLore (Zhao et al. 2024): the gradient of each 2-D weight of the decoder blocks is
    projected onto its top-``rank`` singular subspace (recomputed every
    ``update_proj_gap`` steps), AdamW keeps its moments in that subspace, and the update is
    projected back and scaled by ``scale``. The paper's LLaMA settings: rank 128-512,
    gap 200, scale 0.25."""

    rank: int = Field(128, ge=1)
    update_proj_gap: int = Field(200, ge=1)
    scale: float = Field(0.25, gt=0)
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"


class OptimizerConfig(Model):
    """AdamW as in GPT-3 / Llama: betas (0.9, 0.95), weight decay 0.1 on matrices only,
    gradient clipping at global norm 1.0. The learning rate comes from the schedule.

    ``kind`` picks the implementation: ``adamw`` (torch), ``adamw8bit`` (bitsandbytes'
    block-wise 8-bit AdamW: the two moments in 8 bits, ~4x less optimizer memory) or
    ``galore_adamw`` (galore-torch's GaLoreAdamW with ``galore``). The last two need the
    optional packages (``pip install -c constraints.txt -e '.[optim]'``) and
    ``parallelism: ddp``."""

    kind: Literal["adamw", "adamw8bit", "galore_adamw"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    galore: GaLoreConfig = Field(default_factory=GaLoreConfig,
                                 description="settings of kind: galore_adamw")

    def identity_dict(self) -> dict:
        """Plain AdamW's identity is what it was before ``kind`` existed (artifacts trained
        with it stay cache hits); ``galore`` counts only for ``galore_adamw``."""
        out = super().identity_dict()
        if self.kind == "adamw":
            del out["kind"]
        if self.kind != "galore_adamw":
            del out["galore"]
        return out


class InitConfig(Model):
    """Start from a pretrained model instead of from scratch (continued pretraining).

    ``path``: a local Hugging Face ``save_pretrained`` directory (any
    ``AutoModelForCausalLM`` decoder: Llama, GPT-2, Qwen2, Mistral ...), a forgeflow
    train artifact (its ``hf/``), or a forgeflow checkpoint (``checkpoint/`` or
    ``checkpoint/step-N/``). Its identity is the content digest of the directory. The
    architecture, context length and vocabulary are read from the model; its tokenizer
    tokenizes the corpus unless ``tokenize.tokenizer.path`` names another."""

    path: str
    load_optimizer: bool = Field(False, description="continue the AdamW moments of a forgeflow "
                                                    "artifact / checkpoint init")


class TrainConfig(Model):
    """Pretraining: a model, a data mixture over tokenized sources, a schedule."""

    _resource_fields = frozenset({"num_workers", "use_gpu", "cpus_per_worker",
                                  "micro_batch_size", "log_every", "eval_every",
                                  "checkpoint_every", "compile", "activation_checkpointing",
                                  "loss_chunk_tokens", "keep_last", "keep_every",
                                  "export_hf_every", "max_bad_steps", "spike_factor",
                                  "register_as", "log_model", "max_failures", "parallelism"})

    init: InitConfig | None = Field(None, description="continue this pretrained model")
    model: ModelConfig = ModelConfig()
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch in sequences (all workers together)")
    batch_tokens: int | None = Field(None, ge=8, description="global batch in tokens; sets "
                                     "batch_size = batch_tokens / context (must divide)")
    seq_len: int | None = Field(None, ge=8, description="training context; default model.seq_len")
    mixture: dict[str, float] = Field(default_factory=dict,
                                      description="source -> weight; empty = all sources weighted by tokens")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast on GPU only; CPU runs fp32
    attention: Literal["sdpa", "eager"] = "sdpa"
    val_tokens_per_source: int = Field(16384, ge=0, description="val loss budget per source and eval")
    # ---- resources (not part of identity) ----
    num_workers: int = Field(2, ge=0, description="Ray Train workers; 0 = plain torch in-process")
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    micro_batch_size: int | None = Field(None, ge=1, description="per-worker micro batch (gradient accumulation)")
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: replicate the model; fsdp: FSDP2 fully_shard per block + root "
                           "(parameters, gradients and AdamW state sharded; sharded checkpoints)")
    compile: bool = False   # torch.compile on GPU only
    log_every: int = Field(10, ge=1, description="progress line + MLflow flush every N steps")
    eval_every: int = Field(100, ge=0, description="0 = only at the end")
    checkpoint_every: int = Field(100, ge=0, description="0 = only at the end")
    keep_last: int = Field(2, ge=1, description="checkpoints kept besides the keep_every ones")
    keep_every: int = Field(0, ge=0, description="also keep every checkpoint at a multiple of "
                                                  "this step forever (branch points); 0 = none")
    export_hf_every: int = Field(0, ge=0, description="also write hf-step-N/ exports; 0 = final only")
    activation_checkpointing: bool = Field(False, description="recompute each block in backward")
    loss_chunk_tokens: int = Field(4096, ge=0, description="chunked cross-entropy: tokens per "
                                   "LM-head chunk; 0 = full logits")
    max_bad_steps: int = Field(5, ge=1, description="stop after this many non-finite steps in a row")
    spike_factor: float = Field(2.0, gt=1, description="a loss above this x its running mean "
                                                       "is logged as a spike")
    log_model: bool = Field(True, description="log the final HF export as an MLflow model")
    register_as: str | None = Field(None, description="register the logged model under this name")
    max_failures: int = Field(0, ge=0, description="Ray Train restarts of a failed worker group "
                                                   "(from the last checkpoint)")

    @model_validator(mode="before")
    @classmethod
    def _init_shorthand(cls, data):
        if isinstance(data, dict) and isinstance(data.get("init"), str):   # init: /path
            data = {**data, "init": {"path": data["init"]}}
        return data

    @model_validator(mode="after")
    def _check(self):
        # with train.init the context limit is the init model's (checked when it is read)
        if self.init is None and self.context > self.model.seq_len:
            raise ValueError(f"seq_len={self.seq_len} exceeds model.seq_len={self.model.seq_len}")
        for src, w in self.mixture.items():
            if w < 0:
                raise ValueError(f"mixture weight for {src!r} is negative ({w})")
        if self.mixture and sum(self.mixture.values()) <= 0:
            raise ValueError("mixture weights sum to zero")
        return self

    @property
    def context(self) -> int:
        return self.seq_len or self.model.seq_len

    def global_batch(self, context: int) -> int:
        """Sequences per step: ``batch_tokens / context`` when given, else ``batch_size``."""
        if self.batch_tokens is None:
            return self.batch_size
        if self.batch_tokens % context:
            raise ValueError(f"train.batch_tokens={self.batch_tokens} is not a multiple of the "
                             f"context {context}")
        return self.batch_tokens // context


class SwitchConfig(Model):
    """Switch the phase's blend to ``mixture`` part-way through the phase: when the
    learning rate has decayed to ``at_lr_ratio`` of the phase's peak (Parmar et al. 2024,
    "Reuse, Don't Retrain": at max/5), or at ``at_fraction`` of the phase's steps."""

    mixture: dict[str, float] = Field(..., min_length=1)
    at_lr_ratio: float | None = Field(None, gt=0, le=1)
    at_fraction: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self):
        if (self.at_lr_ratio is None) == (self.at_fraction is None):
            raise ValueError("switch needs exactly one of at_lr_ratio or at_fraction")
        if any(w < 0 for w in self.mixture.values()) or sum(self.mixture.values()) <= 0:
            raise ValueError("switch.mixture weights must be >= 0 and not all zero")
        return self


class PhaseConfig(Model):
    """One continual-pretraining phase, started from the weights of the stage named by
    ``init_from`` (default: the phase before it in the list, or pretraining).

    * **Budget**: ``steps`` or ``tokens`` (rounded up to whole global batches).
    * **Data seed**: ``seed`` (default derived from ``train.seed`` and the phase name), so a
      phase never re-reads the windows pretraining read at the same step.
    * **Replay**: exactly ``replay`` of every phase's rows come from ``replay_mixture``
      (default: the original pretraining mixture, however many phases came before), the
      rest from ``mixture`` (1-5% limits forgetting; ~25% for a strong shift such as a new
      language — Ibrahim et al. 2024).
    * **Schedule**: by default re-warms from where the previous stage ended to a new max
      over 1% of the phase, then cosine decay (Gupta et al. 2023); ``max_lr: previous`` with
      ``warmup_steps: 0`` continues without re-warming (infinite / WSD schedules).
    * **Optimizer**: ``load_optimizer`` carries AdamW moments over; false resets them.
    """

    _resource_fields = frozenset({"eval_every"})

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    steps: int | None = Field(None, ge=1, description="default 100 unless tokens is given")
    tokens: int | None = Field(None, ge=1, description="token budget instead of steps")
    mixture: dict[str, float] = Field(..., min_length=1)
    replay: float = Field(0.05, ge=0, le=1)
    replay_mixture: dict[str, float] | None = Field(
        None, description="what replay draws from; default the original pretraining mixture")
    seed: int | None = Field(None, description="data seed; default derived from train.seed and name")
    init_from: str | None = Field(None, description="'pretrain' or an earlier phase's name "
                                                    "(branches); default the previous phase")
    switch: SwitchConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig(kind="rewarm_cosine", max_lr=5e-4, warmup_fraction=0.01)
    load_optimizer: bool = Field(False, description="continue AdamW moments from the previous stage")
    eval_every: int | None = Field(None, ge=0, description="val-loss every N steps; default train.eval_every")

    @model_validator(mode="after")
    def _check(self):
        for where, mix in (("mixture", self.mixture), ("replay_mixture", self.replay_mixture)):
            if mix is not None and (any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0):
                raise ValueError(f"phase {self.name!r}: {where} weights must be >= 0 and not all zero")
        if self.steps is not None and self.tokens is not None:
            raise ValueError(f"phase {self.name!r}: give steps or tokens, not both")
        return self

    def steps_for(self, tokens_per_step: int) -> int:
        """The phase's length in optimizer steps (``tokens`` rounded up to whole batches)."""
        if self.tokens is not None:
            return max(1, -(-self.tokens // tokens_per_step))
        return self.steps if self.steps is not None else 100

    def data_seed(self, train_seed: int) -> int:
        """``seed``, or a seed derived from (train.seed, phase name): never train.seed itself."""
        if self.seed is not None:
            return self.seed
        import hashlib

        digest = hashlib.sha256(f"{train_seed}:continual:{self.name}".encode()).digest()
        return int.from_bytes(digest[:4], "little")


class ContinualConfig(Model):
    enabled: bool = True
    phases: list[PhaseConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        if self.enabled and not self.phases:
            raise ValueError("continual.enabled is true but no phases are given")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"continual phase names must be unique, got {names}")
        if "pretrain" in names:
            raise ValueError("'pretrain' is reserved (init_from: pretrain); rename the phase")
        for i, p in enumerate(self.phases):
            if p.init_from is not None and p.init_from != "pretrain" and p.init_from not in names[:i]:
                raise ValueError(f"phase {p.name!r}: init_from {p.init_from!r} is not 'pretrain' "
                                 f"or an earlier phase ({names[:i]})")
        return self

    def parents(self) -> dict[str, str]:
        """phase name -> the stage it starts from ('pretrain' or a phase name)."""
        out, prev = {}, "pretrain"
        for p in self.phases:
            out[p.name] = p.init_from or prev
            prev = p.name
        return out
