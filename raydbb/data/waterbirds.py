"""Waterbirds in the WILDS layout.

Accepted layout (what ``wilds`` and the GroupDRO scripts unpack)::

    ROOT/
      metadata.csv          columns img_filename, y, place, split (others ignored)
      001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
      ...

``y``: 0 = landbird, 1 = waterbird; ``place``: 0 = land, 1 = water; ``split``: 0/1/2 = train/val/test.
Image paths are relative to ROOT. Groups: ``landbird/land, landbird/water, waterbird/land,
waterbird/water`` (group = 2*y + place).
"""

from __future__ import annotations

from pathlib import Path

from raydbb.data.records import (
    RecordSet,
    check_images_exist,
    ids_from_paths,
    make_frame,
    parse_codes,
    parse_splits,
    read_metadata_csv,
    require_columns,
    require_files,
)
from raydbb.errors import DataError

CLASS_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
METADATA = "metadata.csv"


def read_waterbirds(root: str | Path) -> RecordSet:
    """Read a WILDS-layout Waterbirds folder into a :class:`RecordSet`."""
    root = Path(root).expanduser().absolute()
    require_files(root, [METADATA], "waterbirds")
    source = f"waterbirds {root / METADATA}"
    meta = read_metadata_csv(root / METADATA, source)
    require_columns(meta, ["img_filename", "y", "place", "split"], source)
    if meta.empty:
        raise DataError(f"{source}: no rows; expected one row per image")
    label = parse_codes(meta["y"], CLASS_NAMES, "y", source)
    place = parse_codes(meta["place"], SPURIOUS_NAMES, "place", source)
    split = parse_splits(meta["split"], source, allow_names=False)
    paths = [str(root / rel) for rel in meta["img_filename"]]
    frame = make_frame(
        sample_id=ids_from_paths(list(meta["img_filename"])),
        path=paths,
        label=label,
        split=split,
        spurious=place,
        n_spurious=len(SPURIOUS_NAMES),
    )
    check_images_exist(frame["path"], source)
    return RecordSet("waterbirds", frame, list(CLASS_NAMES), list(SPURIOUS_NAMES))
