"""Filesystem-safe ids and output paths that cannot escape their root folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from raydbb.errors import RaydbbError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_LEN = 120


def sanitize_id(raw: str) -> str:
    """Map any string to a stable id made of ``[A-Za-z0-9._-]`` only.

    Lossy replacement could make two ids collide (``a/b`` and ``a_b``), so whenever the text
    had to change, a short hash of the original is appended.
    """
    text = str(raw)
    cleaned = _UNSAFE.sub("_", text).strip("._-") or "id"
    if cleaned == text and len(cleaned) <= _MAX_LEN:
        return cleaned
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[:_MAX_LEN]}-{digest}"


def safe_join(root: str | Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that resolves outside ``root``."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise RaydbbError(f"output path {target} escapes the output folder {base}")
    return target
