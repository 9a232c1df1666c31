"""The base of every configuration section, and the error that names a bad key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


class Section(BaseModel):
    """Frozen (and so hashable), no unknown keys, no type coercion but int to float."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
