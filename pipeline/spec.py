"""The spec: one YAML file describes a whole run.

Every section is a pydantic v2 model with ``extra="forbid"``. The stage families own
their section's model (``pipeline/<stage>/config.py``); this module composes them,
loads YAML, applies dotted command-line overrides (``train.steps=200``) and turns
validation errors into messages that name the field path, the bad value and what is
allowed.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
from pipeline.dedup.config import DedupConfig
from pipeline.evaluate.config import EvaluateConfig
from pipeline.experiments.config import SweepConfig
from pipeline.filters.config import FiltersConfig
from pipeline.ingest.config import ExtractConfig
from pipeline.secrets import has_credentials, redact
from pipeline.specbase import Model
from pipeline.tokenize.config import TokenizeConfig
from pipeline.train.config import ContinualConfig, TrainConfig


class SpecError(ValueError):
    """An invalid spec: the message names the file, the field path, the value and what is allowed.

    The message is redacted (no credential a user typed is ever echoed back)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class RunConfig(Model):
    """Run-wide settings. Only ``seed`` changes outputs; the rest are resources."""

    _resource_fields = frozenset({"name", "workdir", "num_cpus", "ray_address",
                                  "experiment", "tracking_uri", "show_progress", "mlflow_ui_url",
                                  "lock_timeout_s", "in_process_max_docs"})

    name: str = Field("forgeflow", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 1234
    workdir: str = "work"
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the local Ray (default: all)")
    ray_address: str | None = Field(None, description="Ray cluster address; RAY_ADDRESS wins")
    in_process_max_docs: int = Field(
        2000, ge=0, description="document stages (filter, dedup, tokenize) with at most this "
                                "many input documents run in this process without starting "
                                "Ray (same outputs); 0 = always on Ray")
    experiment: str | None = Field(None, description="MLflow experiment (default: run.name)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; "
                          "default sqlite:///<workdir>/mlflow.db. No credentials here.")
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    show_progress: bool = True
    lock_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="how long to wait for a stage another run is writing "
                                      "in the same workdir before giving up")

    @field_validator("tracking_uri")
    @classmethod
    def _no_secrets(cls, v: str | None) -> str | None:
        if has_credentials(v):
            raise ValueError("credentials in tracking_uri (userinfo or a token parameter): put them "
                             "in the environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                             "or MLFLOW_TRACKING_TOKEN), never in the YAML")
        return v


SourceType = Literal["crawl", "warc", "jsonl", "parquet", "text"]

# ``snapshot`` templates, resolved in UTC when the plan is built (i.e. when a run starts)
SNAPSHOT_FIELDS = {
    "date": lambda t: t.strftime("%Y-%m-%d"),
    "week": lambda t: "{0}-W{1:02d}".format(*t.isocalendar()[:2]),
    "month": lambda t: t.strftime("%Y-%m"),
    "year": lambda t: t.strftime("%Y"),
}
_SNAPSHOT_FIELD = re.compile(r"\{([^{}]*)\}")


def resolve_snapshot(template: str | None, now=None) -> str | None:
    """``"{week}"`` -> ``"2026-W49"`` (UTC ``now``, default the current time); a value
    without braces is returned as it is."""
    if template is None:
        return None
    from datetime import datetime, timezone
    now = now or datetime.now(timezone.utc)
    return _SNAPSHOT_FIELD.sub(lambda m: SNAPSHOT_FIELDS[m.group(1)](now), template)


class SourceConfig(Model):
    """One corpus source. ``type: crawl`` fetches from seed URLs into WARC first."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: SourceType
    paths: list[str] = Field(default_factory=list,
                             description="files or globs, relative to the spec file")
    crawl: CrawlConfig | None = None
    local_site: LocalSiteConfig | None = Field(
        None, description="generate and serve the built-in local web during the crawl "
                          "(seeds may use {local_site})")
    text_field: str = "text"
    id_field: str = "id"
    url_field: str = "url"
    text_unit: Literal["file", "paragraph", "line"] = "file"
    snapshot: str | None = Field(
        None, description="part of the source's identity: a new value re-reads (re-crawls) the "
                          "source and reruns everything downstream. A template resolved in UTC "
                          "when the run starts ({date}, {week}, {month}, {year}) or a fixed value")

    @field_validator("snapshot", mode="before")
    @classmethod
    def _unquoted_template(cls, v):
        # YAML reads an unquoted `snapshot: {week}` (or the override `...snapshot={week}`)
        # as the mapping {"week": None}: take it for the template it was meant to be
        if isinstance(v, dict) and len(v) == 1 and next(iter(v.values())) is None:
            return "{%s}" % next(iter(v))
        return v

    @field_validator("snapshot")
    @classmethod
    def _snapshot_fields(cls, v: str | None) -> str | None:
        unknown = [f for f in _SNAPSHOT_FIELD.findall(v or "") if f not in SNAPSHOT_FIELDS]
        if unknown:
            raise ValueError(f"unknown snapshot field(s) {unknown}; allowed: "
                             + ", ".join("{%s}" % k for k in SNAPSHOT_FIELDS))
        return v

    @model_validator(mode="after")
    def _check_kind(self):
        if self.type == "crawl":
            if self.crawl is None:
                raise ValueError("type 'crawl' needs a 'crawl' section (seeds, scope, politeness)")
            if self.paths:
                raise ValueError("type 'crawl' takes no 'paths'")
        else:
            if not self.paths:
                raise ValueError(f"type '{self.type}' needs 'paths' (files or globs)")
            if self.crawl is not None or self.local_site is not None:
                raise ValueError(f"'crawl'/'local_site' only apply to type 'crawl', not '{self.type}'")
        return self


class PipelineSpec(Model):
    run: RunConfig = RunConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    extract: ExtractConfig = ExtractConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    # Optional: a spec without `train` is a data-only pipeline that stops after tokenize;
    # `continual` and `evaluate` run only when present (both need `train`).
    train: TrainConfig | None = Field(None, description="pretraining; omit for a data-only pipeline")
    continual: ContinualConfig | None = Field(None, description="continual phases after pretrain")
    evaluate: EvaluateConfig | None = Field(None, description="evaluation of the trained models")
    sweep: SweepConfig | None = Field(None, description="forgeflow sweep: trials over spec paths "
                                                        "and mixtures (ignored by forgeflow run)")

    # where the YAML lives: relative paths in the spec resolve against it
    _base_dir: str = PrivateAttr(".")

    @model_validator(mode="after")
    def _check_names(self):
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {dup}")
        known = set(names)
        if self.train is None:
            needs = [repr(k) for k in ("continual", "evaluate") if getattr(self, k) is not None]
            if needs:
                verb = "needs" if len(needs) == 1 else "need"
                raise ValueError(f"{' and '.join(needs)} {verb} a 'train' section (they continue "
                                 "from or score the pretrained model); add 'train' or remove them")
            return self
        mixes = [("train.mixture", self.train.mixture)]
        mixes += [(f"continual.phases.{i}.mixture", p.mixture)
                  for i, p in enumerate(self.continual.phases if self.continual else [])]
        for where, mix in mixes:
            unknown = sorted(set(mix) - known)
            if unknown:
                raise ValueError(f"{where} names unknown sources {unknown}; sources are {sorted(known)}")
        return self

    # ---- helpers ---------------------------------------------------------------------
    def trained_sources(self) -> set[str]:
        """Sources that some training phase draws from (all of them when a mixture is
        empty, i.e. weighted by tokens); empty for a data-only spec."""
        if self.train is None:
            return set()
        mixes = [self.train.mixture] + [p.mixture for p in
                                        (self.continual.phases if self.continual else [])]
        every = {s.name for s in self.sources}
        return set().union(*({k for k, w in m.items() if w > 0} if m else every for m in mixes))

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(path)))
        return p if p.is_absolute() else (Path(self._base_dir) / p)

    def source_files(self, source: SourceConfig) -> list[Path]:
        """The concrete files of a file source; a missing file is an error naming it."""
        files: list[Path] = []
        for pattern in source.paths:
            full = self.resolve(pattern)
            if any(ch in pattern for ch in "*?["):
                matched = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
                if not matched:
                    raise SpecError(f"sources[{source.name}].paths: pattern {pattern!r} "
                                    f"matches no file (looked in {full.parent})")
                files.extend(matched)
            else:
                if not full.exists():
                    raise SpecError(f"sources[{source.name}].paths: file not found: {full}")
                files.extend(sorted(p for p in full.rglob("*") if p.is_file()) if full.is_dir() else [full])
        return files


# ---- loading --------------------------------------------------------------------------

def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to the raw spec dict."""
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected dotted.path=value, e.g. train.steps=200")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(k.strip() for k in keys):
            raise SpecError(f"override {item!r}: empty key in {path.strip()!r}; "
                            "expected dotted.path=value, e.g. train.steps=200")
        parsed = _override_value(item, value)
        node: Any = raw
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise SpecError(f"override {item!r}: {'.'.join(keys[:i]) or 'spec'} is a list "
                                    f"of {len(node)}; {key!r} is not an index in it")
                key = int(key)
                if last:
                    node[key] = parsed
                else:
                    node = node[key]
            elif isinstance(node, dict):
                if last:
                    node[key] = parsed
                else:
                    node = node.setdefault(key, {})
            if not last and not isinstance(node, (dict, list)):
                raise SpecError(f"override {item!r}: {'.'.join(keys[:i + 1])} is a value "
                                f"({json.dumps(node, default=str)[:40]}), not a section")
    return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file not found: {path}")
    raw = _read_yaml(path)
    raw = _extend(raw, path, seen=[path.resolve()])
    raw = apply_overrides(raw, overrides or [])
    return validate_spec(raw, source=str(path), base_dir=path.resolve().parent)


def _read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML spec file; every failure is a SpecError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of sections, "
                        f"not {type(raw).__name__}")
    return raw


def _override_value(item: str, value: str):
    try:
        return yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"override {item!r}: the value is not valid YAML ({first}); "
                        "quote it, e.g. key='[text'") from None


def _extend(raw: dict, path: Path, seen: list[Path]) -> dict:
    """``extends: base.yaml`` (relative to this file): the base spec, deep-merged with this
    one (mappings merge key by key, lists, values and mixtures replace). Chains are allowed."""
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = (path.parent / str(base_name)).resolve()
    if base_path in seen:
        raise SpecError(f"{path}: 'extends' loops back to {base_path}")
    if not base_path.exists():
        raise SpecError(f"{path}: extends: file not found: {base_path}")
    base = _read_yaml(base_path)
    base = _extend(base, base_path, seen + [base_path])
    return _deep_merge(base, raw)


# Mappings that are one value, not a section: a mixture is a distribution over sources, so
# an extending spec's mixture replaces its base's (merged key by key, a base's `code: 0.35`
# stayed in a `mixture: {docs: 0.9, web: 0.1}` that meant "no code"), as a command-line
# override of it does.
_WHOLE_VALUES = frozenset({"mixture"})


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if (isinstance(value, dict) and isinstance(out.get(key), dict)
                and key not in _WHOLE_VALUES):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_spec(raw: dict, source: str = "<spec>", base_dir: Path | None = None) -> PipelineSpec:
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, raw, source)) from None
    spec._base_dir = str(base_dir or Path.cwd())
    _resolve_paths(spec, spec)
    return spec


# Fields holding file paths: resolved against the spec's folder at load time, and replaced
# by their content digest in artifact identities (so moving a file changes nothing).
PATH_KEY = re.compile(r"^(path|paths|.*_path|.*_paths|.*_file|.*_files|.*_dir)$")


def _resolve_paths(model: Model, spec: "PipelineSpec") -> None:
    from pydantic import BaseModel

    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _resolve_paths(value, spec)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for v in value:
                _resolve_paths(v, spec)
        elif PATH_KEY.match(name) and not isinstance(model, SourceConfig):
            if isinstance(value, str) and value:
                setattr(model, name, str(spec.resolve(value)))
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                setattr(model, name, [str(spec.resolve(v)) for v in value])


def digest_paths(data: Any) -> Any:
    """Replace path-valued entries of an identity dict by the content digest of the file(s)."""
    from pipeline.store import file_digest

    def one(v):
        p = Path(v)
        if p.is_file():
            return {"sha256": file_digest(p)}
        if p.is_dir():
            return {"dir": {str(f.relative_to(p)): file_digest(f)
                            for f in sorted(p.rglob("*")) if f.is_file()}}
        return {"missing": p.name}

    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if PATH_KEY.match(str(k)) and isinstance(v, str) and v:
                out[k] = one(v)
            elif PATH_KEY.match(str(k)) and isinstance(v, list) and all(isinstance(x, str) for x in v):
                out[k] = [one(x) for x in v]
            else:
                out[k] = digest_paths(v)
        return out
    if isinstance(data, list):
        return [digest_paths(v) for v in data]
    return data


def _model_at(loc: tuple) -> type[Model] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    from typing import get_args, get_origin

    from pydantic import BaseModel

    model: Any = PipelineSpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            # discriminated-union tag in the loc (e.g. 'gopher_quality'): find the member
            return model if part not in ("",) else None
        ann = field.annotation
        candidates = [ann]
        seen = []
        while candidates:
            t = candidates.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                seen.append(t)
            else:
                candidates.extend(get_args(t))
        model = seen[0] if len(seen) == 1 else _union_member(seen, loc)
        if get_origin(ann) is None and model is None:
            return None
    return model if isinstance(model, type) else None


def _union_member(models: list, loc: tuple):
    names = {str(p) for p in loc}
    for m in models:
        tag = getattr(m, "model_fields", {}).get("type")
        if tag is not None and tag.default in names:
            return m
    return models[0] if models else None


def format_errors(exc: ValidationError, raw: dict, source: str) -> str:
    lines = [f"invalid spec {source}: {exc.error_count()} error(s)"]
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            allowed = sorted(owner.model_fields) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown field {loc[-1]!r}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}"
            lines.append(f"  - {path}: {msg}")
            continue
        if loc and loc[-1] == "tracking_uri":      # may hold credentials: never echoed
            lines.append(f"  - {path}: {msg}")
            continue
        shown = json.dumps(value, default=str)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        lines.append(f"  - {path}: {msg} (got {shown})")
    return "\n".join(lines)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists into dotted keys (MLflow params)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            key = v.get("name") or v.get("type") or str(i)
            out.update(flatten(v, f"{prefix}{i}.{key}." if key != str(i) else f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = data
    return out


def json_schema() -> dict:
    return PipelineSpec.model_json_schema()
