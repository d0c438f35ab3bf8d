"""The base of every configuration model: immutable, unknown keys rejected (each component declares its own)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenConfig(BaseModel):
    """Base for every params section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")
