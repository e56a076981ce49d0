"""Loading an inpainting pipeline, the one way the inpaint stage and textual inversion both use.

Every model actor loads its pipeline once; left alone, diffusers and transformers draw loading
progress bars, interleaved across actors in the driver's log, and diffusers warns when it cannot
load with low memory use. Neither tells a user anything, so both are turned off here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from raydbb.errors import ConfigError


def load_inpaint_pipeline(model: str, dtype: torch.dtype = torch.float32) -> Any:
    """``StableDiffusionInpaintPipeline.from_pretrained(model)`` (hub id or local folder), safetensors
    only, without safety checker, loading bars or the ``accelerate`` warning; a model that cannot be
    loaded is one :class:`ConfigError` line naming ``inpaint.model``."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import is_accelerate_available
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        return StableDiffusionInpaintPipeline.from_pretrained(
            model, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            use_safetensors=True, local_files_only=Path(model).is_dir(),
            # Without accelerate diffusers falls back to a plain load (with a warning): ask for that.
            low_cpu_mem_usage=is_accelerate_available())
    except (OSError, ValueError) as err:
        raise ConfigError(f"inpaint.model={model!r}: cannot load it as a diffusers inpainting pipeline "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from err


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Within the block transformers logs errors only. diffusers' ``load_textual_inversion`` grows
    the embedding table with transformers' default initialisation, which logs an advice about it;
    the new rows are overwritten with the learned vectors straight after, so it never applies."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)
