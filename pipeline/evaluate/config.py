"""Spec section ``evaluate``: held-out bits per byte per source, forgetting and
adaptation across continual phases, loss curves across phases, and k-shot
multiple-choice tasks (lm-eval-harness semantics)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.specbase import Model


LAYOUT_NAMES = ("arc_easy", "arc_challenge", "openbookqa", "piqa", "siqa", "hellaswag", "jsonl")


class TaskConfig(Model):
    """A multiple-choice task read from a local file (no dataset hub); layouts and prompts
    in ``pipeline/evaluate/tasks.py``. ``name`` labels the metrics; ``layout`` defaults to
    the name when the name is a layout."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    layout: Literal["arc_easy", "arc_challenge", "openbookqa", "piqa", "siqa", "hellaswag",
                    "jsonl"] | None = None
    path: str
    labels_path: str | None = Field(None, description="one label per record (piqa 0/1, siqa 1-3)")
    limit: int | None = Field(None, ge=1, description="first N items only (speed)")
    num_fewshot: int = Field(0, ge=0)
    fewshot_path: str | None = Field(None, description="the split few-shot examples come from; "
                                                       "default the evaluated file minus the item")
    fewshot_labels_path: str | None = None
    fewshot_seed: int = 1234            # lm-eval's default few-shot seed
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    # layout: jsonl
    prompt: str | None = Field(None, description="jsonl: query template, {field} / {a.b} placeholders")
    choices: str | list[str] | None = Field(None, description="jsonl: a list field, or a list of fields")
    label: str | None = Field(None, description="jsonl: the answer field (index, letter or choice label)")
    label_offset: int = Field(0, description="jsonl: subtract from integer labels (1 = 1-based)")
    choice_labels: str | None = Field(None, description="jsonl: field holding the labels `label` names")

    @model_validator(mode="after")
    def _layout(self):
        if self.layout is None:
            if self.name not in LAYOUT_NAMES or self.name == "jsonl":
                raise ValueError(f"task {self.name!r}: give layout (one of {list(LAYOUT_NAMES)})")
            self.layout = self.name
        if self.layout == "piqa" and not self.labels_path:
            raise ValueError(f"task {self.name!r}: piqa needs labels_path (one 0/1 label per line)")
        if self.layout == "jsonl" and not (self.prompt and self.choices and self.label):
            raise ValueError(f"task {self.name!r}: layout jsonl needs prompt, choices and label")
        if self.fewshot_labels_path and not self.fewshot_path:
            raise ValueError(f"task {self.name!r}: fewshot_labels_path without fewshot_path")
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
    context_prefix: Literal["eos", "none"] = Field(
        "eos", description="tasks: EOS before each context (how training documents start), "
                           "or none (lm-eval's HF model)")
    lm_eval: bool = Field(False, description="also run lm-evaluation-harness (lm-eval 0.4.13) on "
                                             "every model and task, offline (pipeline/evaluate/lmeval.py)")
    curves: bool = Field(True, description="loss per source over the global step across phases "
                                           "(from each stage's in-training validation)")
    batch_size: int = Field(8, ge=1)
    use_gpu: bool = False

    @model_validator(mode="after")
    def _stride(self):
        if self.stride and self.seq_len and self.stride > self.seq_len:
            raise ValueError(f"stride={self.stride} exceeds seq_len={self.seq_len}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluate.tasks names must be unique, got {names}")
        return self
