"""Model files shipped inside the raydbb package.

``synthetic_inpainter/`` is a small Stable-Diffusion-2-shaped inpainting model (``AutoencoderKL``,
9-channel ``UNet2DConditionModel``, CLIP text encoder and tokenizer, DDIM scheduler) trained by
``raydbb train-inpainter --corpus pretrain`` on the synthetic world's unbiased pretraining corpus
(:func:`raydbb.data.synthetic.render_pretrain_sample`: both bird classes on six kinds of
background, no class-background correlation, no benchmark image) -- the stand-in for SD-2, which
was pretrained on data unrelated to the benchmark. It loads with
``diffusers.StableDiffusionInpaintPipeline.from_pretrained(synthetic_inpainter_path())``
and is the demo's default ``inpaint.model``; how it was trained is recorded in its
``raydbb_inpainter.json``.
"""

from __future__ import annotations

from pathlib import Path

from raydbb.errors import RaydbbError

SYNTHETIC_INPAINTER = "synthetic_inpainter"


def synthetic_inpainter_available() -> bool:
    """Whether this build ships the trained synthetic inpainter."""
    return (Path(__file__).resolve().parent / SYNTHETIC_INPAINTER / "model_index.json").is_file()


def synthetic_inpainter_path() -> Path:
    """Folder of the shipped synthetic-benchmark inpainting pipeline (a ``from_pretrained`` path)."""
    path = Path(__file__).resolve().parent / SYNTHETIC_INPAINTER
    if not (path / "model_index.json").is_file():
        raise RaydbbError(f"{path} holds no inpainting pipeline (model_index.json missing); reinstall "
                          "raydbb or rebuild it with `raydbb train-inpainter --out " + str(path) + "`")
    return path


PACKAGE_PREFIX = "package:"
QUALITY_GATE_RECORD = "raydbb_quality_gate.json"
"""The inpainter quality gate's results, written into the model folder they describe by
``python -m benchmarks.inpainter_quality --record``; the run report shows them."""


def resolve_packaged(name: str) -> str:
    """``package:<asset>[/<file>]`` -> that folder or file inside the installed package; any other
    name (a hub id, a local path) is returned unchanged.

    Configs name shipped models this way (``inpaint.model: package:synthetic_inpainter``) so that
    they run as shipped on any machine the package is installed on.
    """
    if not name.startswith(PACKAGE_PREFIX):
        return name
    asset = name[len(PACKAGE_PREFIX):]
    root = Path(__file__).resolve().parent
    path = (root / asset).resolve()
    if not asset or root not in path.parents or not path.exists():
        shipped = sorted(p.name for p in root.iterdir() if not p.name.startswith(("_", ".")))
        raise RaydbbError(f"{name!r}: no such packaged model; expected one of "
                          f"{[PACKAGE_PREFIX + s for s in shipped]}")
    return str(path)


def model_stamp(name: str) -> str:
    """What a config's model name stands for, for run fingerprints: ``<name>@<digest>`` of a local
    folder's files (a packaged model included), so a model replaced under the same name makes the
    steps that use it run again instead of mixing its output with the old model's; a hub id is
    returned as it is (its files are not there to read)."""
    from raydbb.storage import folder_digest

    path = Path(resolve_packaged(name)).expanduser()
    if not path.is_dir():
        return name
    # Named as configs are written (package:...), so moving the install does not change the stamp.
    # The gate's record describes the model; measuring it again does not change what it paints.
    return f"{packaged_name(name)}@{folder_digest(path, ignore=(QUALITY_GATE_RECORD,))}"


def packaged_name(path: str) -> str:
    """The inverse of :func:`resolve_packaged`: a path inside the installed package's assets ->
    ``package:<asset>[/<file>]``; anything else unchanged.

    Configs are written and compared in this form, so a run folder, a resume check or a compare
    fingerprint does not depend on where raydbb happens to be installed.
    """
    if path.startswith(PACKAGE_PREFIX) or not Path(path).is_absolute():
        return path
    root = Path(__file__).resolve().parent
    resolved = Path(path).resolve()
    if root not in resolved.parents:
        return path
    return PACKAGE_PREFIX + resolved.relative_to(root).as_posix()
