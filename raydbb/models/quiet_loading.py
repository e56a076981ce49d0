"""Loading diffusers pipelines without log lines that read like failures.

Every model actor loads its pipeline once; diffusers then warns that ``accelerate`` is missing (it
only speeds up loading) and diffusers and transformers draw loading progress bars, interleaved
across actors in the driver's log. Neither tells a user anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def quiet_pipeline_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that avoid the ``accelerate`` warning; also turns
    off the loading progress bars of diffusers and transformers in this process."""
    from diffusers.utils import is_accelerate_available
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # Without accelerate, diffusers falls back to a plain load (with a warning) anyway: ask for it.
    return {"low_cpu_mem_usage": is_accelerate_available()}


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
