"""Train a byte-level BPE, or load and validate an existing Hugging Face tokenizer.

The artifact is a Hugging Face tokenizer directory (``tokenizer.json`` +
``tokenizer_config.json``) that ``transformers.AutoTokenizer.from_pretrained`` loads
as a fast tokenizer with bos/eos/pad set, and that the shard writer loads with the
Rust ``tokenizers`` library directly.

Byte-level BPE (GPT-2, Radford et al. 2019): text is mapped to bytes, the 256 bytes
are the base alphabet, merges are learned on top. Every string (emoji, CJK, control
characters, invalid surrogates aside) therefore encodes and decodes back exactly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import xxhash

from pipeline.tokenize.config import TokenizerConfig

REQUIRED_FILES = ("tokenizer.json", "tokenizer_config.json")
# What save_pretrained writes for a tokenizer (a model directory holds weights beside them)
TOKENIZER_FILES = REQUIRED_FILES + ("special_tokens_map.json", "added_tokens.json", "vocab.json",
                                    "merges.txt", "tokenizer.model", "chat_template.jinja",
                                    "chat_template.json", "extension.json")


# ---- training --------------------------------------------------------------------------

def train_bpe(texts: Iterable[str], cfg: TokenizerConfig):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (streamed)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if cfg.lowercase:
        tok.normalizer = normalizers.Lowercase()
    # add_prefix_space=False: the first word of a document is not given a space, so
    # decode(encode(text)) == text exactly; use_regex=True: GPT-2's pre-token regex.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_hf(tok, out_dir: Path, cfg: TokenizerConfig) -> Path:
    """Save as a Hugging Face directory: EOS = BOS = the first special token (GPT-2's
    convention), PAD = the second (or EOS when there is only one)."""
    from transformers import PreTrainedTokenizerFast

    eos = cfg.special_tokens[0]
    pad = cfg.special_tokens[1] if len(cfg.special_tokens) > 1 else eos
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos,
                                 pad_token=pad, clean_up_tokenization_spaces=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    return out_dir


# ---- loading ---------------------------------------------------------------------------

def check_tokenizer_dir(path: Path) -> None:
    """A clear error naming what is missing when ``path`` is not a usable tokenizer dir."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"tokenizer directory {path} is missing {', '.join(missing)} "
            f"(has: {', '.join(present) or 'nothing'}); a Hugging Face fast tokenizer "
            "saved with save_pretrained() has both")
    try:
        json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path / 'tokenizer_config.json'} is not valid JSON: {exc}") from None


def tokenizer_files(path: Path) -> list[Path]:
    """The tokenizer's files in a tokenizer or model directory (never the weights)."""
    path = Path(path)
    return [path / f for f in TOKENIZER_FILES if (path / f).is_file()]


def has_tokenizer(path: Path) -> bool:
    return all((Path(path) / f).is_file() for f in REQUIRED_FILES)


def resolve_tokenizer_dir(path: Path) -> Path:
    """Accept either the tokenizer directory or an artifact that holds ``tokenizer/``."""
    path = Path(path)
    if not (path / "tokenizer.json").exists() and (path / "tokenizer" / "tokenizer.json").exists():
        return path / "tokenizer"
    return path


def load_tokenizer(path: Path):
    """``(tokenizers.Tokenizer, eos_id, vocab_size)`` from a validated HF directory.

    EOS comes from ``tokenizer_config.json``'s ``eos_token``; without one the
    tokenizer cannot mark document ends and is refused."""
    from tokenizers import Tokenizer

    path = resolve_tokenizer_dir(path)
    check_tokenizer_dir(path)
    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:
        raise ValueError(f"{path / 'tokenizer.json'} cannot be loaded by tokenizers: {exc}") from None
    conf = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = conf.get("eos_token")
    if isinstance(eos, dict):          # older transformers save AddedToken dicts
        eos = eos.get("content")
    if not eos:
        raise ValueError(f"{path / 'tokenizer_config.json'} sets no eos_token; documents "
                         "need an end-of-sequence token between them")
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise ValueError(f"eos_token {eos!r} of {path} is not in its vocabulary")
    return tok, eos_id, tok.get_vocab_size(with_added_tokens=True)


def copy_tokenizer(src: Path, dst: Path) -> Path:
    """Copy the tokenizer files of ``src`` (a tokenizer or a whole model directory)."""
    src = resolve_tokenizer_dir(src)
    check_tokenizer_dir(src)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in tokenizer_files(src):
        shutil.copy2(f, dst / f.name)
    return dst


# ---- sampling and fertility ------------------------------------------------------------

def hash_unit(key: str, seed: int = 0) -> float:
    """A stable number in [0, 1) from a string (xxhash64): for splits and samples."""
    return xxhash.xxh64_intdigest(key.encode("utf-8", "surrogatepass"), seed=seed) / 2.0**64


def words(text: str) -> int:
    """Whitespace-separated words, the denominator of fertility (tokens per word)."""
    return len(text.split())


class Fertility:
    """Tokens per word and bytes per token, accumulated per source."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}   # source -> [docs, words, tokens, bytes]

    def add(self, source: str, text: str, n_tokens: int) -> None:
        c = self.counts.setdefault(source, [0, 0, 0, 0])
        c[0] += 1
        c[1] += words(text)
        c[2] += n_tokens
        c[3] += len(text.encode("utf-8", "surrogatepass"))

    def metrics(self) -> dict[str, float]:
        out = {}
        for src, (_, n_words, n_tokens, n_bytes) in sorted(self.counts.items()):
            out[f"fertility_tokens_per_word.{src}"] = n_tokens / max(n_words, 1)
            out[f"bytes_per_token.{src}"] = n_bytes / max(n_tokens, 1)
        return out

    def rows(self) -> list[dict]:
        return [{"source": s, "docs": d, "words": w, "tokens": t, "bytes": b,
                 "tokens_per_word": round(t / max(w, 1), 4),
                 "bytes_per_token": round(b / max(t, 1), 4)}
                for s, (d, w, t, b) in sorted(self.counts.items())]


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- domain-adapted tokenizer (ChipNeMo) -------------------------------------------------

EXTENSION_FILE = "extension.json"


def extend_bpe(base_dir: Path, texts: list[str], domain_vocab_size: int, max_new_tokens: int,
               min_frequency: int = 2) -> tuple[object, list[dict]]:
    """Add to the base BPE tokenizer the domain tokens it splits worst (ChipNeMo).

    1. Train a BPE of ``domain_vocab_size`` on ``texts`` with the base tokenizer's own
       normaliser and pre-tokenizer (a copy of the base, retrained).
    2. Candidates: domain tokens not in the base vocabulary; each one's base
       decomposition is what the base BPE model makes of it. Gain = how often the domain
       tokenizer emits it on ``texts`` x (base pieces - 1), i.e. the tokens it saves.
    3. Take candidates by gain while ``max_new_tokens`` allows, and make the BPE produce
       each: a chain of merges appended after the base merges (lowest priority, so base
       merges finish first and a word the base tokenizer keeps whole is unchanged), each
       intermediate a new token too (counted against ``max_new_tokens``).
    Old ids are untouched; new ids follow the base's. Returns the extended
    ``tokenizers.Tokenizer`` and, per new token, ``{"id", "token", "text", "base_ids",
    "gain"}`` (``base_ids``: the base decomposition, for the embedding initialisation)."""
    from collections import Counter

    from tokenizers import Tokenizer, pre_tokenizers, trainers

    base_dir = resolve_tokenizer_dir(base_dir)
    base = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    spec = json.loads(base.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"{base_dir / 'tokenizer.json'}: the domain extension needs a BPE "
                         f"tokenizer (GPT-2, Llama-3, Qwen, Mistral style); this one is "
                         f"{spec['model']['type']}")
    specials = [t["content"] for t in spec.get("added_tokens", [])]
    domain = Tokenizer.from_str(base.to_str())
    trainer = trainers.BpeTrainer(vocab_size=domain_vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    domain.train_from_iterator(texts, trainer=trainer)
    dvocab = domain.get_vocab()
    inv = {i: t for t, i in dvocab.items()}
    freq = Counter()
    for enc in domain.encode_batch_fast(texts, add_special_tokens=False):
        freq.update(enc.ids)

    bvocab = dict(spec["model"]["vocab"])
    special_set = set(specials)

    def pieces(token: str) -> list[tuple[str, int]]:
        return [(t.value, t.id) for t in base.model.tokenize(token)]

    cands = []
    for i, n in freq.items():
        tok = inv[i]
        if tok in bvocab or tok in special_set:
            continue
        p = pieces(tok)
        if len(p) >= 2:
            cands.append((n * (len(p) - 1), tok, p))
    cands.sort(key=lambda c: (-c[0], c[1]))

    merges = spec["model"]["merges"]
    as_pairs = bool(merges) and isinstance(merges[0], list)
    have_merges = {tuple(m) if as_pairs else tuple(m.split(" ", 1)) for m in merges}
    next_id = max([*bvocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    added: list[dict] = []
    new_vocab: dict[str, int] = {}
    for gain, tok, p in cands:
        chain, cur = [], p[0][0]
        for value, _ in p[1:]:
            chain.append((cur, value))
            cur = cur + value
        fresh = [a + b for a, b in chain if a + b not in bvocab and a + b not in new_vocab]
        if len(added) + len(fresh) > max_new_tokens:
            continue
        for a, b in chain:
            new = a + b
            if new not in bvocab and new not in new_vocab:
                new_vocab[new] = next_id
                base_ids = [i for _, i in pieces(new)]
                added.append({"id": next_id, "token": new, "base_ids": base_ids,
                              "gain": gain if new == tok else 0})
                next_id += 1
            if (a, b) not in have_merges:
                merges.append([a, b] if as_pairs else f"{a} {b}")
                have_merges.add((a, b))
        if len(added) >= max_new_tokens:
            break
    spec["model"]["vocab"] = {**bvocab, **new_vocab}
    spec["model"]["merges"] = merges
    ext = Tokenizer.from_str(json.dumps(spec))
    for a in added:
        a["text"] = ext.decode([a["id"]])
    return ext, added


def save_extended(tok, added: list[dict], out_dir: Path, base_vocab: int) -> Path:
    """Overwrite ``out_dir/tokenizer.json`` (a copy of the base tokenizer directory) with
    the extended tokenizer and write ``extension.json``: what the trainer needs to grow
    the model's embeddings."""
    tok.save(str(Path(out_dir) / "tokenizer.json"))
    (Path(out_dir) / EXTENSION_FILE).write_text(json.dumps(
        {"base_vocab_size": base_vocab, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
         "new_tokens": added}, indent=1, ensure_ascii=False), encoding="utf-8")
    return Path(out_dir)


def read_extension(tokenizer_dir: Path) -> dict | None:
    p = resolve_tokenizer_dir(Path(tokenizer_dir)) / EXTENSION_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
