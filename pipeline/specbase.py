"""Base class for every spec model: unknown fields are errors (``extra="forbid"``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Every section of the YAML spec derives from this.

    ``extra="forbid"`` turns a typo into a validation error naming the field path.
    Fields that do not change a stage's output (paths to write to, worker counts,
    batch sizes) are listed in ``_resource_fields`` so they stay out of the
    artifact identity (see ``pipeline.store.identity``).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # names of fields that are resources, not semantics (excluded from identity)
    _resource_fields: frozenset[str] = frozenset()

    def identity_dict(self) -> dict:
        """The fields that change this stage's output, recursively, as plain data."""
        out = {}
        for name in type(self).model_fields:
            if name in self._resource_fields:
                continue
            value = getattr(self, name)
            out[name] = _identity_value(value)
        return out


def _identity_value(value):
    if isinstance(value, Model):
        return value.identity_dict()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_identity_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _identity_value(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    return value
