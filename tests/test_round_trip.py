"""Originals round-tripped through the inpainter's VAE inside their masks (retrain.round_trip_originals)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from raydbb.config import build_config
from raydbb.data.images import read_image, write_png_atomic
from raydbb.ddb.retrain.originals import round_trip_key, training_originals
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.ddb.stages.round_trip import RoundTripStage
from raydbb.engine.stage import object_column
from raydbb.errors import ConfigError
from raydbb.models.small_sd import build_small_inpaint_pipeline

H, W = 24, 40  # non-square, not the model's working size


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_small_inpaint_pipeline(tmp_path_factory.mktemp("sd"), seed=0, sample_size=8)


def _rows(folder, n=2):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[8:14, 10 + 5 * i:18 + 5 * i] = 255
        path = write_png_atomic(folder / f"{i}.png", image)
        rows.append({"sample_id": f"images/train {i}", "path": str(path),
                     "mask": str(write_png_atomic(folder / f"{i}_mask.png", mask)), "label": i % 2})
    return pd.DataFrame(rows)


def test_stage_repaints_only_the_dilated_mask_and_reuses_its_files(model_dir, tmp_path):
    rows = _rows(tmp_path)
    stage = RoundTripStage(str(model_dir), dilate=2, out_dir=tmp_path / "out")
    batch = {k: object_column(list(rows[k])) for k in ("sample_id", "path", "mask")}
    out = stage(batch)
    assert stage.resolution == 16  # the inpaint stage's working side: unet sample_size 8 x VAE factor 2
    for i, path in enumerate(out["round_trip_path"]):
        assert path.startswith(str((tmp_path / "out").resolve())) and "/" not in path.rsplit("out/", 1)[1]
        source, made = read_image(rows["path"][i]), read_image(path)
        region = dilate_mask(read_image(rows["mask"][i])[..., 0] != 0, 2).astype(bool)
        assert made.shape == source.shape
        assert (made[~region] == source[~region]).all()  # outside the dilated mask: the source's pixels
        assert (made[region] != source[region]).any()  # inside: the VAE's reconstruction
    first = [p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()]
    assert stage(batch)["round_trip_path"].tolist() == out["round_trip_path"].tolist()
    assert [p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()] == first  # reused, not rewritten


def test_stage_matches_noise_when_asked_and_only_inside_the_region(model_dir, tmp_path):
    rows = _rows(tmp_path)
    batch = {k: object_column(list(rows[k])) for k in ("sample_id", "path", "mask")}
    plain = RoundTripStage(str(model_dir), dilate=2, out_dir=tmp_path / "plain")(batch)["round_trip_path"]
    stage = RoundTripStage(str(model_dir), dilate=2, out_dir=tmp_path / "noisy", match_noise=True)
    noisy = stage(batch)["round_trip_path"]
    for i in range(len(rows)):
        source, a, b = read_image(rows["path"][i]), read_image(plain[i]), read_image(noisy[i])
        region = dilate_mask(read_image(rows["mask"][i])[..., 0] != 0, 2).astype(bool)
        assert (b[~region] == source[~region]).all()
        assert (a[region] != b[region]).any()  # uniform-noise sources: the patch gets noise back
    shutil.rmtree(tmp_path / "noisy")
    again = stage(batch)["round_trip_path"]  # seeded by the sample id: the same files again
    assert all((read_image(x) == read_image(y)).all() for x, y in zip(noisy, again, strict=True))


def _cfg(tmp_path, **retrain):
    return build_config({"out": str(tmp_path / "run"), "data": {"name": "synthetic", "root": str(tmp_path)},
                         "inpaint": {"model": str(tmp_path / "model")}, "retrain": retrain})


def test_originals_unchanged_unless_asked_and_one_line_without_masks(tmp_path):
    rows = _rows(tmp_path)
    assert training_originals(_cfg(tmp_path), rows) is rows
    with pytest.raises(ConfigError, match=r"1 of 2 training images have no object mask"):
        training_originals(_cfg(tmp_path, round_trip_originals=True),
                           rows.assign(mask=[rows["mask"][0], None]))


def test_round_trip_folder_follows_model_dilation_and_noise_matching(tmp_path):
    base = _cfg(tmp_path, round_trip_originals=True)
    other = base.model_copy(update={"mask": base.mask.model_copy(update={"dilate": base.mask.dilate + 1})})
    noisy = base.model_copy(update={"inpaint": base.inpaint.model_copy(update={"match_noise": True})})
    assert len({round_trip_key(base), round_trip_key(other), round_trip_key(noisy)}) == 3
    assert round_trip_key(base) == round_trip_key(_cfg(tmp_path, round_trip_originals=True))
