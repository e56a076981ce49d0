"""Image and mask I/O shared by every stage: numpy arrays in, numpy arrays out (never PIL objects).

``read_image`` and ``read_mask`` raise :class:`~raydbb.errors.DataError` with one line on a missing
or unreadable file, so callers can turn it into a recorded skip. ``write_png_atomic`` never leaves a
half-written file under the final name (a crash or a resumed run sees either nothing or the whole PNG).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from raydbb import storage
from raydbb.errors import DataError

MAX_PIXELS = 40_000_000
"""Largest image (width × height) decoded. A 12000×12000 PNG of a few hundred KB decodes to 430 MB
and takes seconds (a decompression bomb in miniature); real datasets stay far below (CelebA 178×218,
Waterbirds ≈ 500×500)."""


class ImageTooLarge(DataError):
    """An image whose header announces more than :data:`MAX_PIXELS` pixels; it is never decoded."""


def _open(path: str | Path, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the size is checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)  # reads the header only
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{what} {path} is {width}x{height} ({width * height / 1e6:.0f} Mpx), over "
                                f"the limit of {max_pixels / 1e6:.0f} Mpx; downscale it")
        img.load()  # decode now so truncated files fail here, not later
    except Image.DecompressionBombError as err:  # PIL refuses > 2 × its own limit before we see the size
        raise ImageTooLarge(f"{what} {path}: {err}; the limit here is {max_pixels / 1e6:.0f} Mpx") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{what} {path} could not be decoded: {type(err).__name__}: {err}") from err
    return img


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey: PIL's convert("RGB") clips every value above 255 to white.
        grey = np.asarray(img).astype(np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as a uint8 ``HxWx3`` RGB array (grey, 16-bit grey, palette and alpha images
    converted); images over ``max_pixels`` are refused from their header (:class:`ImageTooLarge`)."""
    return _to_uint8_rgb(_open(path, "image", max_pixels))


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
    with storage.build_file(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
