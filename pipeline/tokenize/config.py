"""Spec section ``tokenize``: the tokenizer (trained or loaded) and the token shards.

Defaults:
- byte-level BPE as in GPT-2 (Radford et al. 2019): every byte is in the base
  alphabet, so any text round-trips and there is no ``<unk>``;
- ``<|endoftext|>`` is EOS (GPT-2's convention) and is appended to every document;
- a 5% held-out validation split chosen by a hash of the document id (stable across
  runs, seeds and worker counts);
- shards in the Megatron indexed-dataset format (RESEARCH.md "Token shard formats"),
  rolled at ``shard_max_bytes`` of token data (Megatron/NeMo/GPT-NeoX read them).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.specbase import Model


class ExtendConfig(Model):
    """Domain-adapted tokenizer (ChipNeMo): add to the loaded tokenizer the tokens a BPE
    trained on the domain corpus has and the base tokenizer splits worst."""

    max_new_tokens: int = Field(1000, ge=1, description="new vocabulary entries at most")
    domain_vocab_size: int = Field(8192, ge=300, description="size of the domain BPE trained "
                                                              "to find candidates")
    min_frequency: int = Field(2, ge=1)
    sources: list[str] = Field(default_factory=list,
                               description="the domain sources; empty = every source")


class TokenizerConfig(Model):
    """Train a byte-level BPE on the cleaned corpus, or load one from ``path``."""

    path: str | None = Field(
        None, description="load this Hugging Face tokenizer directory (needs tokenizer.json "
                          "and tokenizer_config.json) instead of training one")
    vocab_size: int = Field(8192, ge=300, le=1_000_000,
                            description="target vocabulary incl. the 256 byte tokens and specials")
    min_frequency: int = Field(2, ge=1, description="a merge must occur at least this often")
    special_tokens: list[str] = Field(
        default_factory=lambda: ["<|endoftext|>", "<|pad|>"],
        min_length=1,
        description="added first, in order; the first is EOS (and BOS), the second PAD")
    sample_docs: int = Field(100_000, ge=1,
                             description="train on at most about this many documents, "
                                         "chosen by a hash of their id")
    lowercase: bool = Field(False, description="lowercase before BPE (breaks exact round-trip)")
    extend: ExtendConfig | None = Field(
        None, description="extend the loaded tokenizer (path, or the train.init model's) with "
                          "domain tokens; the trainer grows the model's embeddings to match")

    @field_validator("special_tokens")
    @classmethod
    def _unique_specials(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not t for t in v):
            raise ValueError(f"special_tokens must be distinct non-empty strings, got {v}")
        return v


class TokenizeConfig(Model):
    """Token shards per source and split, from the deduplicated documents."""

    _resource_fields = frozenset({"batch_size", "encoders", "threads_per_encoder"})

    tokenizer: TokenizerConfig = TokenizerConfig()
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                description="share of documents held out, by xxhash64 of the id")
    shard_max_bytes: int = Field(256 * 2**20, ge=1024,
                                 description="roll to a new .bin/.idx pair past this many bytes "
                                             "of token data")
    max_doc_tokens: int | None = Field(
        None, ge=16, description="documents longer than this (EOS included) are stored as "
                                 "several sequences of at most this many tokens")
    upsample_column: str | None = Field(
        None, description="repeat each document this column's value times (dedup's "
                          "`sampling_weight`: FineWeb-2 rehydration by cluster size); 0 drops it")
    segment_chars: int = Field(
        1_000_000, ge=1000,
        description="texts longer than this are encoded in pieces cut at a newline or space, "
                    "so a huge document never passes through the tokenizer in one call")

    # resources (not part of the artifact identity)
    batch_size: int = Field(1024, ge=1, description="documents per encode_batch call")
    encoders: int | None = Field(
        None, ge=1, description="Ray actors that encode (default: one per 2 CPUs of the local Ray)")
    threads_per_encoder: int | None = Field(
        None, ge=1, description="Rust threads per encoder (default: CPUs / encoders)")
