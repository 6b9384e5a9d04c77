"""Build the transformer from ``ModelConfig`` and count what it costs.

The model is a plain Hugging Face ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` built from a
config object (no hub download), so the final ``save_pretrained`` directory loads with
``AutoModelForCausalLM.from_pretrained`` anywhere. Attention is PyTorch SDPA (flash /
memory-efficient kernels on GPU).
"""

from __future__ import annotations

import torch

from pipeline.train.config import ModelConfig

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

    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, eos_token_id, attention),
                                             attn_implementation=attention)
    return model


def load_model(hf_dir, attention: str = "sdpa") -> torch.nn.Module:
    """Weights from a ``save_pretrained`` directory, in fp32 (training master weights)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation=attention,
                                                dtype=torch.float32)


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(model: torch.nn.Module, cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token ~ 6*N + 12*L*d*T (RESEARCH.md; Kaplan et al. / PaLM).

    N counts the matrices a token is multiplied by: all parameters except embedding
    look-ups, plus the output projection (a real ``d x V`` matmul even when tied).
    """
    n = count_params(model)
    n_matmul = n - model.get_input_embeddings().weight.numel()
    pos = getattr(getattr(model, "transformer", None), "wpe", None)
    if pos is not None:  # gpt2 learned positions are a look-up too
        n_matmul -= pos.weight.numel()
    if cfg.tie_embeddings:  # the shared matrix is used once more, as the output matmul
        n_matmul += model.get_output_embeddings().weight.numel()
    return 6.0 * n_matmul + 12.0 * cfg.n_layers * cfg.d_model * seq_len


def gpu_peak_flops() -> float | None:
    """Dense bf16 peak of the current GPU, or None (CPU / unknown GPU: no MFU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in GPU_PEAK_FLOPS.items():
        if key in name:
            return peak
    return None
