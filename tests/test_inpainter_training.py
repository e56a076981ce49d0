"""Training the small in-domain inpainter, and the one shipped in raydbb/assets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from safetensors.torch import load_file

from raydbb.assets import synthetic_inpainter_path
from raydbb.cli import main
from raydbb.config import DataConfig, InpaintConfig, StageResources
from raydbb.data.images import read_image, read_mask
from raydbb.data.registry import load_records
from raydbb.data.synthetic import write_synthetic
from raydbb.ddb.stages.inpaint import InpaintStage
from raydbb.ddb.stages.mask import dilate_mask
from raydbb.engine.stage import object_column
from raydbb.errors import ConfigError, DataError
from raydbb.tools.inpainter_training import (
    TRAINING_RECORD,
    InpainterSpec,
    sampling_weights,
    train_inpainter,
    training_mask,
)

# 16 px images, 8x8x4 latents: trains in a second or two.
TINY = {"sample_size": 8, "block_channels": (16, 32), "layers_per_block": 1, "attention_head_dim": 1,
        "norm_num_groups": 8, "vae_channels": (8, 16), "vae_layers_per_block": 1, "latent_channels": 4,
        "text_hidden": 16, "text_layers": 1, "text_heads": 1, "text_intermediate": 32}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("inp") / "data", seed=0, n_train=16, n_val=0, n_test=0,
                           size=32, progress=False)


@pytest.fixture(scope="module")
def records(data):
    return load_records(DataConfig(name="synthetic", root=str(data)))


def tiny_spec(**changes) -> InpainterSpec:
    base = {"vae_steps": 3, "unet_steps": 3, "vae_batch_size": 4, "batch_size": 4, "vae_crop": 16,
            "warmup_steps": 5, "sizes": dict(TINY), "corpus": "dataset"}
    return InpainterSpec(**{**base, **changes})


def state(folder, part):
    return load_file(str(next((folder / part).glob("*.safetensors"))))


def test_training_reduces_losses_and_saves_a_loadable_pipeline(records, tmp_path, capsys):
    out = train_inpainter(records, tmp_path / "m", tiny_spec(vae_steps=60, unet_steps=60, lr=3e-3),
                          progress=False)
    # Without progress bars the log still shows the run advancing, at every tenth of each phase.
    log = capsys.readouterr().err.splitlines()
    assert [line.split(" loss")[0] for line in log if " step " in line] == [
        f"{phase} step {k}/60" for phase in ("VAE", "UNet") for k in range(6, 61, 6)]
    assert all(float(line.split(" loss ")[1]) > 0 for line in log if " step " in line)
    record = json.loads((out / TRAINING_RECORD).read_text())
    (vae_start, vae_end), (unet_start, unet_end) = record["vae_loss_start_end"], record["unet_loss_start_end"]
    assert vae_end < 0.85 * vae_start  # the object-weighted reconstruction falls more slowly
    assert unet_end < 0.7 * unet_start
    # 16 train rows at correlation 0.95: 12 landbirds (11 on land), 4 waterbirds (all on water).
    assert record["data"]["group_counts"] == {"landbird/land": 11, "landbird/water": 1, "waterbird/water": 4}

    pipe = StableDiffusionInpaintPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 9 and pipe.vae_scale_factor == 2
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the training latents, not SD's
    assert not list(out.rglob("*.bin")) and list(out.glob("unet/*.safetensors"))
    assert not list(out.parent.glob(".m.*"))  # no partial folder left behind
    image = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    result = pipe("a photo of a waterbird", image=image, mask_image=mask, num_inference_steps=2,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert result.shape == (1, 16, 16, 3) and np.isfinite(result).all()


def test_pretraining_corpus_is_the_default_and_is_recorded(records, tmp_path, capsys):
    assert InpainterSpec().corpus == "pretrain"  # the shipped model never saw the benchmark
    spec = tiny_spec(corpus="pretrain", corpus_n=24, corpus_seed=3)
    out = train_inpainter(None, tmp_path / "p", spec, progress=False)
    # Without bars, drawing the corpus says how far it got (a tenth of 24 is 2.4 images).
    logged = capsys.readouterr().err
    assert "pretrain corpus: 3/24 images" in logged and "pretrain corpus: 24/24 images" in logged
    data = json.loads((out / TRAINING_RECORD).read_text())["data"]
    assert data["corpus"] == "pretrain" and data["seed"] == 3 and data["indices"] == [0, 24]
    assert data["benchmark_images_seen"] == 0 and data["train_rows"] == 24
    assert sum(data["group_counts"].values()) == 24
    assert {k.split("/")[1] for k in data["group_counts"]} > {"land", "water"}  # other places too
    assert StableDiffusionInpaintPipeline.from_pretrained(out).unet.config.in_channels == 9
    with pytest.raises(ConfigError, match="expected records for corpus 'dataset'"):
        train_inpainter(records, tmp_path / "q", spec, progress=False)
    with pytest.raises(ConfigError, match="expected records for corpus 'dataset'"):
        train_inpainter(None, tmp_path / "q", tiny_spec(), progress=False)


def test_same_seed_same_weights_other_seed_other_weights(records, tmp_path):
    a = train_inpainter(records, tmp_path / "a", tiny_spec(seed=0), progress=False)
    b = train_inpainter(records, tmp_path / "b", tiny_spec(seed=0), progress=False)
    c = train_inpainter(records, tmp_path / "c", tiny_spec(seed=1), progress=False)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb, sc = state(a, part), state(b, part), state(c, part)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), part


def test_init_trains_a_model_further_keeping_its_vae(records, tmp_path):
    first = train_inpainter(records, tmp_path / "first", tiny_spec(), progress=False)
    more = train_inpainter(records, tmp_path / "more", tiny_spec(unet_steps=4), progress=False, init=first)
    # The latent space stays: VAE weights and scaling factor are the first model's, bit for bit.
    assert all(torch.equal(v, state(more, "vae")[k]) for k, v in state(first, "vae").items())
    record, first_record = (json.loads((m / TRAINING_RECORD).read_text()) for m in (more, first))
    assert record["scaling_factor"] == first_record["scaling_factor"]
    assert record["vae_loss_start_end"] is None and record["spec"]["unet_steps"] == 4
    assert record["init"] == {"model": str(first), "record": first_record}
    unet_first, unet_more = state(first, "unet"), state(more, "unet")
    assert not all(torch.equal(unet_first[k], unet_more[k]) for k in unet_first)
    bigger = dict(TINY, block_channels=(16, 48))
    with pytest.raises(ConfigError, match=r"--init .*sizes differ from this spec's in block_channels$"):
        train_inpainter(records, tmp_path / "x", tiny_spec(sizes=bigger), progress=False, init=first)
    with pytest.raises(ConfigError, match="expected a folder written by train-inpainter"):
        train_inpainter(records, tmp_path / "y", tiny_spec(), progress=False, init=tmp_path / "nowhere")


def test_sampling_weights_balance_groups_or_classes():
    labels = np.array([0, 0, 0, 1])
    groups = np.array([0, 0, 1, 3])
    np.testing.assert_allclose(sampling_weights(labels, groups, "group"), [1 / 6, 1 / 6, 1 / 3, 1 / 3])
    np.testing.assert_allclose(sampling_weights(labels, groups, "class"), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(sampling_weights(labels, groups, "none"), [1 / 4] * 4)
    # No group labels on some row: balance falls back to classes.
    np.testing.assert_allclose(sampling_weights(labels, np.array([0, 0, -1, 3]), "group"),
                               [1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_training_masks_cover_the_object_its_pair_or_its_box():
    obj = np.zeros((32, 32), dtype=bool)
    obj[10:14, 8:20] = True  # bbox centre (11, 13)
    partner = np.zeros((32, 32), dtype=bool)
    partner[0:9, 0:3] = True  # bbox centre (4, 1): moves by (+7, +12) -> rows 7..15, cols 12..14
    rng = np.random.default_rng(0)
    only = {"object_mask_prob": 0.0, "pair_mask_prob": 0.0, "box_mask_prob": 0.0}
    own = tiny_spec(**{**only, "object_mask_prob": 1.0, "max_dilate": 4})  # stays clear of the partner
    for _ in range(5):
        m = training_mask(obj, True, rng, own, partner)
        assert m[obj].all() and m.sum() <= dilate_mask(obj, own.max_dilate).sum() and not m[0:9, 0:3].any()
    pair = tiny_spec(**{**only, "pair_mask_prob": 1.0, "max_dilate": 0})
    m = training_mask(obj, True, rng, pair, partner)
    moved = np.zeros_like(obj)
    moved[7:16, 12:15] = True
    np.testing.assert_array_equal(m, obj | moved)  # mirroring a centred 3-wide bar changes nothing
    box = training_mask(obj, True, rng, tiny_spec(**{**only, "box_mask_prob": 1.0, "max_dilate": 4}))
    assert box[10:14, 8:20].all() and box.sum() <= (4 + 2 * 4) * (12 + 2 * 4)  # bbox grown <= 4 px a side
    # Without an object mask, only random shapes (never the all-False object mask).
    assert training_mask(np.zeros_like(obj), False, rng, own).any()


def test_bad_spec_and_outputs_fail_in_one_line(records, tmp_path):
    with pytest.raises(ConfigError, match="batch_size=0"):
        tiny_spec(batch_size=0)
    with pytest.raises(ConfigError, match="object_mask_prob \\+ pair_mask_prob \\+ box_mask_prob = 1.3"):
        tiny_spec(object_mask_prob=0.8, box_mask_prob=0.5, pair_mask_prob=0.0)
    with pytest.raises(ConfigError, match="unknown field.*bogus"):
        tiny_spec(sizes={"bogus": 1})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        train_inpainter(records, tmp_path / "busy", tiny_spec(), progress=False)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_empty_train_split_is_a_data_error(tmp_path):
    data = write_synthetic(tmp_path / "d", seed=0, n_train=0, n_val=4, n_test=0, size=32, progress=False)
    records = load_records(DataConfig(name="synthetic", root=str(data)))
    with pytest.raises(DataError, match="train split is empty"):
        train_inpainter(records, tmp_path / "m", tiny_spec())


def test_cli_trains_the_default_model_shape(data, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train-inpainter", "--corpus", "dataset", "--data", str(data), "--out", str(out), "--steps", "1",
            "--vae-steps", "1", "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = StableDiffusionInpaintPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["train-inpainter", "--corpus", "dataset", "--out", str(out), "--no-progress"]) == 2
    assert "--data is needed by --corpus dataset" in capsys.readouterr().err


def test_cli_trains_on_the_pretraining_corpus_by_default(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["train-inpainter", "--n", "8", "--out", str(out), "--steps", "1", "--vae-steps", "1",
                 "--batch-size", "2", "--no-progress"]) == 0
    data = json.loads((out / TRAINING_RECORD).read_text())["data"]
    assert data["corpus"] == "pretrain" and data["train_rows"] == 8


def test_shipped_inpainter_repaints_only_inside_the_mask(tmp_path):
    path = synthetic_inpainter_path()
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    assert size_mb < 20 and not list(path.rglob("*.bin"))
    meta = json.loads((path / TRAINING_RECORD).read_text())
    assert meta["data"]["class_names"] == ["landbird", "waterbird"]
    # The stand-in for SD-2 was pretrained on the unbiased corpus, never on the benchmark: in every
    # training round (a model trained further with --init nests the record of the one it started from).
    rounds = [meta]
    while "init" in rounds[-1]:
        rounds.append(rounds[-1]["init"]["record"])
    assert all(r["data"]["corpus"] == "pretrain" and r["data"]["benchmark_images_seen"] == 0 for r in rounds)

    data = write_synthetic(tmp_path / "d", seed=3, n_train=0, n_val=0, n_test=4, size=64, progress=False)
    rows = load_records(DataConfig(name="synthetic", root=str(data))).split("test")
    images = [read_image(p) for p in rows["path"]]
    masks = [dilate_mask(read_mask(p), 2) for p in rows["mask"]]
    cfg = InpaintConfig(model=str(path), steps=2, guidance_scale=3.0,
                        resources=StageResources(batch_size=4, model_batch_size=4))
    out = InpaintStage(cfg, ["landbird", "waterbird"])({
        "source_image": object_column(images), "mask": object_column(masks),
        "target_label": 1 - rows["label"].to_numpy(), "seed": np.arange(4, dtype=np.int64),
        "prune_reason": np.full(4, "", dtype=object)})
    for src, mask, new in zip(images, masks, out["image"], strict=True):
        assert new.shape == (64, 64, 3) and new.dtype == np.uint8
        assert (new[mask == 0] == src[mask == 0]).all()  # paste-back: outside the mask untouched
        assert (new[mask != 0] != src[mask != 0]).any()  # the bird region was repainted


def test_decoder_phase_changes_only_the_decoder(records, tmp_path):
    first = train_inpainter(records, tmp_path / "first", tiny_spec(), progress=False)
    sharper = train_inpainter(records, tmp_path / "dec", tiny_spec(decoder_steps=4, unet_steps=0),
                              progress=False, init=first)
    # Encoder, UNet and text encoder are the first model's bit for bit (the latent space a trained
    # UNet works in must not move); the decoder trained.
    vae_first, vae_dec = state(first, "vae"), state(sharper, "vae")
    decoder = [k for k in vae_first if k.startswith(("decoder.", "post_quant"))]
    assert all(torch.equal(vae_first[k], vae_dec[k]) for k in vae_first if k not in decoder)
    assert not all(torch.equal(vae_first[k], vae_dec[k]) for k in vae_first if k.startswith("decoder."))
    for part in ("unet", "text_encoder"):
        assert all(torch.equal(v, state(sharper, part)[k]) for k, v in state(first, part).items()), part
    record = json.loads((sharper / TRAINING_RECORD).read_text())
    assert record["unet_loss_start_end"] is None and len(record["decoder_loss_start_end"]) == 2
    with pytest.raises(ConfigError, match="unet_steps=0 without init"):
        train_inpainter(records, tmp_path / "z", tiny_spec(unet_steps=0), progress=False)
    with pytest.raises(ConfigError, match=r"decoder_steps=-1: expected an integer >= 0"):
        tiny_spec(decoder_steps=-1)
