"""Spec section ``evaluate``: held-out bits per byte per source, forgetting across
continual phases, and zero-shot multiple-choice tasks (lm-eval-harness style)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.specbase import Model


class TaskConfig(Model):
    """A multiple-choice task read from a local file (no dataset hub).

    ``arc_easy``: AI2 JSONL (``question.stem``, ``question.choices[{text,label}]``,
    ``answerKey``). ``piqa``: JSONL with ``goal``, ``sol1``, ``sol2`` plus a labels
    file with one 0/1 per line (``labels_path``)."""

    name: Literal["arc_easy", "piqa"]
    path: str
    labels_path: str | None = None
    limit: int | None = Field(None, ge=1, description="first N items only (speed)")

    @model_validator(mode="after")
    def _labels(self):
        if self.name == "piqa" and not self.labels_path:
            raise ValueError("piqa needs labels_path (the file with one 0/1 label per line)")
        return self


class EvaluateConfig(Model):
    _resource_fields = frozenset({"batch_size", "use_gpu"})

    bpb: bool = True
    max_tokens_per_source: int | None = Field(
        50_000, ge=1, description="whole validation documents up to about this many tokens per source")
    seq_len: int | None = Field(None, ge=2, description="window length; default the model's max positions")
    stride: int | None = Field(
        None, ge=1, description="new tokens scored per window; default seq_len (lm-eval's rolling "
                                "windows); smaller gives every token more context at more cost")
    tasks: list[TaskConfig] = Field(default_factory=list)
    batch_size: int = Field(8, ge=1)
    use_gpu: bool = False

    @model_validator(mode="after")
    def _stride(self):
        if self.stride and self.seq_len and self.stride > self.seq_len:
            raise ValueError(f"stride={self.stride} exceeds seq_len={self.seq_len}")
        return self
