"""Canonical JSON text: the same value always gives the same bytes."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

__all__ = ["canonical_json", "jsonl_line", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Turn pydantic models (recursively) into plain JSON values."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite float {obj!r} cannot be written as JSON")
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, 2-space indent, ASCII, no NaN, trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n"


def jsonl_line(obj: Any) -> str:
    """One compact canonical JSON line (sorted keys) with a trailing newline."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
