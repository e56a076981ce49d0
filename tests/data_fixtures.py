"""Dataset folders in the real formats (Waterbirds, CelebA, MetaShift), built from scratch with tiny images.

Each builder has hand-chosen per-(split, group) counts; the ``*_EXPECTED`` dicts are those counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_image(path: Path, value: int = 100, size: int = 6, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size + 2, 3), value, dtype=np.uint8)).save(path, format=fmt)


# (y, place, split) -> number of rows; hand-chosen so every count is different.
WB_ROWS = {
    (0, 0, 0): 4, (0, 1, 0): 1, (1, 0, 0): 2, (1, 1, 0): 3,
    (0, 0, 1): 1, (0, 1, 1): 2, (1, 0, 1): 1, (1, 1, 1): 1,
    (0, 0, 2): 2, (0, 1, 2): 1, (1, 0, 2): 1, (1, 1, 2): 2,
}
WB_EXPECTED = {
    "train": {"landbird/land": 4, "landbird/water": 1, "waterbird/land": 2, "waterbird/water": 3},
    "val": {"landbird/land": 1, "landbird/water": 2, "waterbird/land": 1, "waterbird/water": 1},
    "test": {"landbird/land": 2, "landbird/water": 1, "waterbird/land": 1, "waterbird/water": 2},
}


def make_waterbirds(root: Path) -> pd.DataFrame:
    rows = []
    for (y, place, split), n in WB_ROWS.items():
        for i in range(n):
            species = "001.Black_footed_Albatross" if y == 1 else "045.Northern_Fulmar"
            rel = f"{species}/Bird_{y}{place}{split}_{i:04d}.jpg"
            write_image(root / rel, value=40 * y + 10 * place, fmt="JPEG")
            rows.append({"img_id": len(rows), "img_filename": rel, "y": y, "split": split,
                         "place": place, "place_filename": "/o/ocean/00001.jpg"})
    meta = pd.DataFrame(rows)
    meta.to_csv(root / "metadata.csv", index=False)
    return meta


# (blond, male, partition) -> rows
CELEBA_ROWS = {
    (0, 0, 0): 3, (0, 1, 0): 4, (1, 0, 0): 2, (1, 1, 0): 0,
    (0, 0, 1): 1, (0, 1, 1): 1, (1, 0, 1): 1, (1, 1, 1): 1,
    (0, 0, 2): 2, (0, 1, 2): 1, (1, 0, 2): 1, (1, 1, 2): 1,
}
CELEBA_EXPECTED = {
    "train": {"not_blond/female": 3, "not_blond/male": 4, "blond/female": 2, "blond/male": 0},
    "val": {"not_blond/female": 1, "not_blond/male": 1, "blond/female": 1, "blond/male": 1},
    "test": {"not_blond/female": 2, "not_blond/male": 1, "blond/female": 1, "blond/male": 1},
}
ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]


def _celeba_rows(root: Path) -> list[tuple[str, int, int, int]]:
    rows = []
    for (blond, male, part), n in CELEBA_ROWS.items():
        for _ in range(n):
            image_id = f"{len(rows) + 1:06d}.jpg"
            write_image(root / "img_align_celeba" / image_id, fmt="JPEG")
            rows.append((image_id, blond, male, part))
    return rows


def make_celeba_official(root: Path) -> None:
    rows = _celeba_rows(root)
    def pm(v: int) -> str:
        return " 1" if v else "-1"

    lines = [str(len(rows)), " ".join(ATTRS) + " "]
    lines += [f"{i} {pm(0)} {pm(b)} {pm(m)} {pm(1)}" for i, b, m, _ in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{i} {p}\n" for i, _, _, p in rows))


def make_celeba_csv(root: Path) -> None:
    rows = _celeba_rows(root)
    split_names = ["train", "val", "test"]
    pd.DataFrame(
        [{"image_id": i, "Blond_Hair": b, "Male": 2 * m - 1, "split": split_names[p]} for i, b, m, p in rows]
    ).to_csv(root / "metadata.csv", index=False)


META_FOLDERS = {
    "train/cat/cat(sofa)": 3, "train/cat/cat(bed)": 2, "train/dog/dog(bench)": 2, "train/dog/dog(bike)": 3,
    "test/cat/cat(shelf)": 20, "test/dog/dog(shelf)": 40, "train/dog/dog(cabinet)": 2,  # last: not DISC
}


def make_metashift(root: Path) -> None:
    for folder, n in META_FOLDERS.items():
        for i in range(n):
            write_image(root / folder / f"{1000 + i}.jpg", fmt="JPEG")
    (root / "train/cat/cat(sofa)/.DS_Store").write_text("not an image")
