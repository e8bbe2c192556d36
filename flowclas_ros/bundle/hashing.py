"""Content hashes of a bundle's files and of a training config (what a manifest records)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_MEMO_MIN_BYTES = 64 << 20  # big files are hashed once per process unless they change on disk
_hash_memo: dict[tuple, str] = {}


def sha256_file(path: str | Path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if st.st_size >= _MEMO_MIN_BYTES and key in _hash_memo:
        return _hash_memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size >= _MEMO_MIN_BYTES:
        _hash_memo[key] = digest
    return digest


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces); non-JSON values become strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_sha256(config: Any) -> str:
    """Return the sha256 of the canonical JSON of a config dict.

    This is what the manifest's ``train_config_sha256`` is.
    """
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


__all__ = ["canonical_json", "config_sha256", "sha256_file"]
