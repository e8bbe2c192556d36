"""Strict JSON for every file the package writes (manifests, reports, summaries).

Python's ``json`` writes NaN and infinity as bare ``NaN`` / ``Infinity`` tokens, which are not
JSON: other readers (jq, JavaScript, Foxglove) refuse the file. Here a non-finite float becomes
``null``, numpy scalars and arrays become Python numbers and lists, paths and other objects their
``str``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def to_json(value: Any) -> Any:
    """Convert ``value`` to plain JSON data.

    NaN/inf -> None, numpy -> Python, tuples -> lists, anything else that JSON cannot hold ->
    its ``str``.
    """
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return to_json(value.tolist())  # numpy scalars and arrays
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def dumps(value: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``value`` (see :func:`to_json`)."""
    return json.dumps(to_json(value), indent=indent, allow_nan=False)


def write(path: str | Path, value: Any, indent: int | None = 1) -> None:
    """Write ``value`` to ``path`` as strict JSON with a final newline."""
    Path(path).write_text(dumps(value, indent) + "\n")


__all__ = ["dumps", "to_json", "write"]
