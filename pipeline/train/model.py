"""Build the transformer (from ``ModelConfig`` or a pretrained directory), its loss, and
what it costs.

The model is a plain Hugging Face causal LM: ``LlamaForCausalLM`` / ``GPT2LMHeadModel``
built from a config object (no hub download), or any ``AutoModelForCausalLM`` decoder
loaded from a local directory (``train.init``), so the ``save_pretrained`` directory loads
with ``AutoModelForCausalLM.from_pretrained`` anywhere. Attention is PyTorch SDPA (flash /
memory-efficient kernels on GPU).

The loss is a chunked cross-entropy (``chunked_cross_entropy``): the LM head is applied
``chunk`` tokens at a time and its gradient is computed in the same pass, so fp32
``[B, T, V]`` logits never exist (with V = 128k and 8k tokens per micro-batch, full fp32
logits alone are 4 GiB, their gradient another 4). ``CausalLMLoss`` wraps the HF model so
DDP / FSDP see one module whose forward returns the loss.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.train.config import ModelConfig

# transformers builds and loads a model under process-wide switches (its meta-device and
# no-weight-init contexts patch torch for every thread), so two threads building models at
# once (continual branches or sweep trials training in-process side by side) corrupt each
# other: meta tensors ("Cannot copy out of meta tensor") or weights never initialised.
# Every model construction and load in forgeflow holds this lock.
MODEL_BUILD_LOCK = threading.RLock()


def resolve_transformers() -> None:
    """Resolve, once and under the lock, the transformers classes forgeflow uses.

    transformers imports its classes lazily on first use, and two threads resolving the same
    one at once can be handed a half-initialised module ("cannot import name 'AutoConfig'
    from 'transformers'", seen with four continual branches starting together). The stage
    modules that train and evaluate call this when they are imported."""
    with MODEL_BUILD_LOCK:
        from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer,  # noqa: F401
                                  GPT2Config, LlamaConfig, PreTrainedTokenizerFast)

# Dense bf16 peak FLOP/s per GPU, for MFU (RESEARCH.md: H100 SXM ~989 TFLOPS).
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def hf_config(cfg: ModelConfig, vocab_size: int, eos_token_id: int | None = None,
              attention: str = "sdpa"):
    """The transformers config object for ``cfg`` (dropout off, as in modern pretraining)."""
    if cfg.family == "llama":
        from transformers import LlamaConfig

        c = LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ff_width,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
            max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta, initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0,
            bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
            use_cache=False)
    else:
        from transformers import GPT2Config

        c = GPT2Config(
            vocab_size=vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.ff_width, n_positions=cfg.seq_len,
            layer_norm_epsilon=cfg.norm_eps, initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
            pad_token_id=eos_token_id, use_cache=False)
    c._attn_implementation = attention
    return c


def build_model(cfg: ModelConfig, vocab_size: int, eos_token_id: int | None = None,
                attention: str = "sdpa", seed: int | None = None) -> torch.nn.Module:
    """A freshly initialised causal LM (seeded when ``seed`` is given)."""
    from transformers import AutoModelForCausalLM

    with MODEL_BUILD_LOCK:
        if seed is not None:
            torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, eos_token_id, attention),
                                                attn_implementation=attention)


def quiet_transformers() -> None:
    """transformers' per-file progress bars are chatter in a training log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(hf_dir, attention: str = "sdpa") -> torch.nn.Module:
    """Weights from a ``save_pretrained`` directory, in fp32 (training master weights)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    with MODEL_BUILD_LOCK:
        return AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation=attention,
                                                    dtype=torch.float32)


# ---- starting from a pretrained model (train.init) --------------------------------------

@dataclass
class InitSource:
    """What ``train.init`` points at, resolved: the directory holding the HF ``config.json``
    (and, for an HF directory or artifact, the weights and usually the tokenizer), and the
    training-state file to take the weights from when the init is a checkpoint."""

    path: Path                 # what the user gave
    kind: str                  # "hf" | "artifact" | "checkpoint"
    config_dir: Path           # holds config.json
    weights_dir: Path | None   # save_pretrained weights (hf, artifact)
    state_file: Path | None    # checkpoint state.pt (checkpoint; artifact: its latest)
    tokenizer_dir: Path | None


def resolve_init(path) -> InitSource:
    """Resolve ``train.init.path``: a Hugging Face ``save_pretrained`` directory, a
    forgeflow train artifact (its ``hf/``), or a forgeflow checkpoint (``checkpoint/`` or
    one ``checkpoint/step-N/``). A clear error names what was expected."""
    from pipeline.tokenize.tokenizer import has_tokenizer
    from pipeline.train.loop import CHECKPOINT, STATE_FILE, latest_checkpoint

    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"train.init.path: directory not found: {p}")

    def tok(d):
        return d if d is not None and has_tokenizer(d) else None

    if (p / "config.json").is_file() and (p / STATE_FILE).is_file():      # checkpoint/step-N
        return InitSource(p, "checkpoint", p, None, p / STATE_FILE, tok(p.parent.parent / "hf"))
    if (p / "config.json").is_file():
        return InitSource(p, "hf", p, p, None, tok(p))
    if (p / "hf" / "config.json").is_file():
        last = latest_checkpoint(p)
        return InitSource(p, "artifact", p / "hf", p / "hf",
                          last / STATE_FILE if last else None, tok(p / "hf"))
    ckpt_root = p if p.name == CHECKPOINT else p / CHECKPOINT
    last = latest_checkpoint(ckpt_root.parent) if ckpt_root.is_dir() else None
    if last is not None:
        return InitSource(p, "checkpoint", last, None, last / STATE_FILE,
                          tok(ckpt_root.parent / "hf"))
    raise FileNotFoundError(
        f"train.init.path {p} is neither a Hugging Face model directory (config.json + "
        "weights, as written by save_pretrained), a forgeflow train artifact (hf/) nor a "
        f"forgeflow checkpoint ({CHECKPOINT}/step-N/{STATE_FILE})")


def init_hf_config(init: InitSource):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(init.config_dir))
    except Exception as exc:
        raise ValueError(f"{init.config_dir / 'config.json'} cannot be read by transformers "
                         f"AutoConfig: {exc}") from None


def describe_hf_config(c) -> dict:
    """The ``ModelConfig`` view of a transformers config (the fields a spec may state)."""
    n_heads = c.num_attention_heads
    d_ff = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None)
    if d_ff is None and c.model_type == "gpt2":
        d_ff = 4 * c.hidden_size
    rope = getattr(c, "rope_parameters", None) or {}
    return {
        "family": c.model_type,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": getattr(c, "num_key_value_heads", None) or n_heads,
        "d_ff": d_ff,
        "seq_len": getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None),
        "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "rope_theta": rope.get("rope_theta", getattr(c, "rope_theta", None)),
        "norm_eps": getattr(c, "rms_norm_eps", None) or getattr(c, "layer_norm_epsilon", None),
        "vocab_size": c.vocab_size,
    }


def check_model_matches(cfg: ModelConfig, hf_cfg, where: str) -> None:
    """A spec ``train.model`` field the user set explicitly must agree with the init
    model; the error names both values. Unset fields are simply read from the model."""
    have = describe_hf_config(hf_cfg)
    wrong = []
    for name in sorted(cfg.model_fields_set):
        want = getattr(cfg, name)
        if name == "n_kv_heads" and want is None:
            continue
        got = have.get(name)
        if got is None or name == "init_std":
            continue
        same = abs(float(want) - float(got)) <= 1e-12 * max(1.0, abs(float(got))) \
            if isinstance(want, float) else want == got
        if not same:
            wrong.append(f"train.model.{name}={want!r} but the init model has {name}={got!r}")
    if wrong:
        raise ValueError(f"train.model disagrees with the init model {where}: " + "; ".join(wrong)
                         + " (leave train.model out to take everything from the model)")


def load_init_model(init: InitSource, attention: str = "sdpa") -> torch.nn.Module:
    """The init model in fp32: from its save_pretrained weights, or built from the
    checkpoint's config.json and given the checkpoint's weights."""
    if init.weights_dir is not None:
        return load_model(init.weights_dir, attention)
    from transformers import AutoModelForCausalLM

    with MODEL_BUILD_LOCK:
        model = AutoModelForCausalLM.from_config(init_hf_config(init), attn_implementation=attention,
                                                 dtype=torch.float32)
    state = torch.load(init.state_file, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model


def extend_embeddings(model, extension: dict) -> int:
    """Grow the input embeddings and the LM head to the extended tokenizer's vocabulary
    and initialise each new row (input and, when untied, output) as the mean of the rows
    of the base tokens it decomposes into (ChipNeMo). Rows of old ids are untouched.
    Returns the number of rows added (0 when the model is already that large)."""
    new_size = int(extension["vocab_size"])
    old = model.get_input_embeddings().weight.shape[0]
    if new_size <= old:
        return 0
    if old < int(extension["base_vocab_size"]):
        raise ValueError(f"the model embeds {old} tokens, fewer than the base tokenizer's "
                         f"{extension['base_vocab_size']} that the extension starts from")
    with MODEL_BUILD_LOCK:
        model.resize_token_embeddings(new_size, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
    with torch.no_grad():
        for t in extension["new_tokens"]:
            if t["id"] >= old:
                for w in tables:
                    w[t["id"]] = w[torch.tensor(t["base_ids"])].mean(0)
        if head is not None and getattr(head, "bias", None) is not None:
            for t in extension["new_tokens"]:
                if t["id"] >= old:
                    head.bias[t["id"]] = head.bias[torch.tensor(t["base_ids"])].mean()
    return new_size - old


# ---- the loss: chunked cross-entropy over the LM head -------------------------------------

class _ChunkedLinearCE(torch.autograd.Function):
    """Sum over tokens of ``CE(h @ W.T + b, y)``, ``chunk`` rows of ``h`` at a time.

    Forward computes, per chunk, the logits (in h's dtype), their fp32 log-sum-exp, and,
    when a gradient is needed, ``dlogits = softmax - onehot`` and from it the chunk's
    gradients for ``h``, ``W`` and ``b``; the logits are freed before the next chunk.
    Backward only scales the stored gradients. Peak extra memory: ``chunk x V`` fp32.
    Targets ``< 0`` (ignore_index -100) contribute nothing."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk):
        need = ctx.needs_input_grad
        acc = torch.promote_types(h.dtype, torch.float32)      # fp32 (fp64 stays fp64)
        total = torch.zeros((), dtype=acc, device=h.device)
        dh = torch.empty_like(h) if need[0] else None
        dw = torch.zeros_like(weight, dtype=acc) if need[1] else None
        db = torch.zeros_like(bias, dtype=acc) if (bias is not None and need[2]) else None
        w = weight.to(h.dtype)
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s:s + chunk], targets[s:s + chunk]
            logits = (hc @ w.t()).to(acc)
            if bias is not None:
                logits += bias.to(acc)
            valid = yc >= 0
            yv = torch.where(valid, yc, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, yv[:, None])[:, 0]
            total += ((lse - picked) * valid).sum()
            if dh is None and dw is None and db is None:
                continue
            g = torch.softmax(logits, dim=-1)          # in place of logits from here on
            del logits
            g.scatter_add_(1, yv[:, None], -torch.ones_like(g[:, :1]))
            g *= valid[:, None]
            if dh is not None:
                dh[s:s + chunk] = (g.to(h.dtype) @ w).to(h.dtype)
            if dw is not None:
                dw += g.t() @ hc.to(acc)
            if db is not None:
                db += g.sum(0)
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        dh, dw, db = ctx.saved_tensors
        return (dh * grad_out.to(dh.dtype) if dh is not None else None,
                (dw * grad_out).to(ctx.dtypes[0]) if dw is not None else None,
                (db * grad_out).to(ctx.dtypes[1]) if db is not None else None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, chunk: int = 4096,
                          reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``hidden [N, d]`` through the head ``weight [V, d]``
    (+ ``bias``) against ``targets [N]`` without materialising ``[N, V]`` fp32 logits."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    total = _ChunkedLinearCE.apply(h, weight, bias, y, int(chunk))
    if reduction == "sum":
        return total
    return total / (y >= 0).sum().clamp(min=1)


def supports_chunked_loss(model) -> bool:
    """The head is a plain linear layer on the last hidden state (no logit scaling or
    soft-capping, which Gemma / Cohere apply after it)."""
    c = model.config
    head = model.get_output_embeddings()
    return (isinstance(head, torch.nn.Linear) and not getattr(c, "final_logit_softcapping", None)
            and getattr(c, "logit_scale", None) in (None, 1.0)
            and hasattr(model, "base_model") and model.base_model is not model)


class CausalLMLoss(torch.nn.Module):
    """``forward(rows [B, T+1]) -> mean next-token loss``: the HF decoder's last hidden
    state, then ``chunked_cross_entropy`` through the LM head (or, for heads it cannot
    reproduce, the model's own logits and a plain fp32 cross-entropy). DDP / FSDP wrap
    this module, so every parameter is used inside its forward."""

    def __init__(self, lm: torch.nn.Module, chunk: int = 4096):
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.chunked = chunk > 0 and supports_chunked_loss(lm)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x, y = rows[:, :-1], rows[:, 1:]
        if not self.chunked:
            logits = self.lm(input_ids=x).logits
            return torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        hidden = self.lm.base_model(input_ids=x).last_hidden_state
        head = self.lm.get_output_embeddings()
        return chunked_cross_entropy(hidden, head.weight, head.bias, y, self.chunk)


def enable_activation_checkpointing(model) -> None:
    """Recompute every decoder block in backward (transformers' per-layer checkpointing,
    non-reentrant): activations kept per block are its input only."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):       # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(model: torch.nn.Module, cfg: ModelConfig | None, seq_len: int) -> float:
    """Training FLOPs per token ~ 6*N + 12*L*d*T (RESEARCH.md; Kaplan et al. / PaLM).

    N counts the matrices a token is multiplied by: all parameters except embedding
    look-ups, plus the output projection (a real ``d x V`` matmul even when tied).
    L, d and tying are read from the model itself (``cfg`` is kept for callers).
    """
    n = count_params(model)
    n_matmul = n - model.get_input_embeddings().weight.numel()
    pos = getattr(getattr(model, "transformer", None), "wpe", None)
    if pos is not None:  # gpt2 learned positions are a look-up too
        n_matmul -= pos.weight.numel()
    head = model.get_output_embeddings().weight
    if head is model.get_input_embeddings().weight:  # tied: used once more, as the output matmul
        n_matmul += head.numel()
    c = model.config
    return 6.0 * n_matmul + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


def gpu_peak_flops() -> float | None:
    """Dense bf16 peak of the current GPU, or None (CPU / unknown GPU: no MFU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in GPU_PEAK_FLOPS.items():
        if key in name:
            return peak
    return None
