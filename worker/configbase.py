"""The base every config model is built on, and the settings shared by stages and sinks.

Kept apart from :mod:`worker.config` so that a sink module can declare its own config model
(``worker/sinks/<name>.py``) and the sink registry can hand those models to the config, with no
import cycle: ``config → sinks.registry → sinks.<name> → configbase``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Strict(BaseModel):
    """``extra="forbid"``: a typo in YAML is an error that names the key and the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """``${VAR:-}`` gives ""; for an optional key that means "not set"."""
        if value == "" and info.field_name is not None:
            field = cls.model_fields[info.field_name]
            if not field.is_required() and field.default is None:
                return None
        return value


class RetryConfig(Strict):
    """Bounded retry with exponential backoff and full jitter: every sink call, and the
    delivery loops' back-off between failed passes."""

    max_attempts: int = Field(default=6, ge=1)
    max_elapsed_s: float = Field(default=60.0, gt=0)
    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=20.0, gt=0)
    #: A parked (misconfigured) sink is re-checked this often.
    park_recheck_s: float = Field(default=60.0, gt=0)
