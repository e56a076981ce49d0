"""Image and mask I/O shared by every stage: numpy arrays in, numpy arrays out (never PIL objects).

``read_image`` and ``read_mask`` raise :class:`~raydbb.errors.DataError` with one line on a missing
or unreadable file, so callers can turn it into a recorded skip. ``write_png_atomic`` never leaves a
half-written file under the final name (a crash or a resumed run sees either nothing or the whole PNG).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from raydbb.errors import DataError


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        img = Image.open(path)
        img.load()  # decode now so truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{what} {path} could not be decoded: {type(err).__name__}: {err}") from err
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a uint8 ``HxWx3`` RGB array (grey, palette and alpha images converted)."""
    img = _open(path, "image")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a bool ``HxW`` array; any nonzero pixel is foreground.

    Palette masks are read as their indices (0 = background), colour masks as "any channel
    nonzero"; an alpha channel is ignored.
    """
    img = _open(path, "mask")
    arr = np.asarray(img)
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        return np.asarray(colour != 0).any(axis=-1)
    return arr != 0


def write_png_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8 ``HxW``/``HxWx3``/``HxWx4``, or bool ``HxW``) as a PNG at ``path``.

    The PNG goes to a temporary file in the same folder first and is then moved into place with
    ``os.replace`` (atomic on one filesystem). Bool masks are stored as 0/255 so they are visible
    in an image viewer; ``read_mask`` reads them back unchanged. Parent folders are created.
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise DataError(f"cannot write {path}: array dtype {arr.dtype}; expected uint8 or bool")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise DataError(f"cannot write {path}: array shape {arr.shape}; expected HxW, HxWx3 or HxWx4")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(arr).save(handle, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are shared with other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
