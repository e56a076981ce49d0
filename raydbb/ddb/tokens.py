"""Learned class tokens on disk: their names, their folder layout, and loading one for inference.

Per class, ``<tokens root>/<class id>/`` holds ``learned_embeds.safetensors`` (``{token: (1, D)}``,
the layout diffusers' ``load_textual_inversion`` reads) and ``token.json`` (token, initializer,
images used, loss curve, settings, ``finished``). The inpaint stage reads tokens through this
module; the trainer (:mod:`raydbb.ddb.inversion`) writes them. Neither imports the other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from raydbb.errors import ConfigError, DataError
from raydbb.ids import safe_join, sanitize_id

EMBEDS_FILE = "learned_embeds.safetensors"
TOKEN_FILE = "token.json"


def placeholder_token(class_name: str) -> str:
    """The default placeholder token of a class: ``"Blond Hair"`` -> ``"<blond-hair-causal>"``.

    Lower case because CLIP's tokenizer lower-cases prompts; only ``[a-z0-9-]`` inside the brackets.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", class_name.lower()).strip("-")
    if not stem:
        raise ConfigError(f"class name {class_name!r} has no letters or digits to name a token; "
                          "set invert.tokens.<class>=<token>")
    return f"<{stem}-causal>"


def token_dir(tokens_root: str | Path, class_name: str) -> Path:
    """Folder of one class's learned token: ``tokens_root/<sanitize_id(class_name)>``."""
    return safe_join(tokens_root, sanitize_id(class_name))


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_learned_token(tokens_root: str | Path, class_name: str) -> tuple[str, Path]:
    """``(token, embeds file)`` of a finished class, for pipelines that load it with
    ``load_textual_inversion(str(path), token=token)``; a one-line error when it is not finished."""
    folder = token_dir(tokens_root, class_name)
    meta = read_json(folder / TOKEN_FILE)
    if not meta or not meta.get("finished") or not (folder / EMBEDS_FILE).is_file():
        raise DataError(f"no learned token for class {class_name!r} in {folder}; run `raydbb invert` first")
    return str(meta["token"]), folder / EMBEDS_FILE
