"""Textual inversion (DDB step 3) on a tiny SD-2-shaped inpainting pipeline saved to disk."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from raydbb.config import load_config
from raydbb.ddb.inversion.model import InpaintModel, load_inpaint_model
from raydbb.ddb.inversion.pool import PoolImage, prepare_pools
from raydbb.ddb.inversion.run import invert_class, plan_jobs, run_inversion
from raydbb.ddb.inversion.trainer import TokenTrainer
from raydbb.ddb.tokens import load_learned_token, placeholder_token
from raydbb.errors import ConfigError, DataError, RaydbbError

CLASSES = ["landbird", "waterbird"]
INIT = "{landbird: bird, waterbird: bird}"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raydbb.models.small_sd import build_small_inpaint_pipeline

    return build_small_inpaint_pipeline(tmp_path_factory.mktemp("sd") / "model", seed=0)


@pytest.fixture(scope="module")
def base_model(model_dir: Path) -> InpaintModel:
    """Loaded once through StableDiffusionInpaintPipeline.from_pretrained; tests train deep copies."""
    return load_inpaint_model(str(model_dir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from raydbb.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", seed=0, n_train=16, n_val=4, n_test=4,
                           progress=False)


@pytest.fixture(scope="module")
def pools(data_dir: Path) -> dict[str, list[PoolImage]]:
    """Four training images per class with their dataset masks."""
    meta = pd.read_csv(data_dir / "metadata.csv")
    train = meta[meta["split"] == "train"]
    return {c: [PoolImage(str(data_dir / p), str(data_dir / m))
                for p, m in zip(g["path"], g["mask"], strict=True)][:4]
            for c, g in train.groupby("label")}


def make_cfg(out: Path, model: Path, *extra: str):
    return load_config(None, [f"out={out}", f"inpaint.model={model}", f"invert.initializer={INIT}",
                              "invert.resolution=32", "invert.batch_size=2", "invert.grad_accum=1",
                              "invert.steps=3", *extra])


def trainer_for(model: InpaintModel, cfg, pool: list[PoolImage]) -> TokenTrainer:
    trainer = TokenTrainer(copy.deepcopy(model), "<landbird-causal>", "bird", "landbird", cfg.invert)
    trainer.encode_images(pool, cfg.invert.mask_mode)
    return trainer


def test_placeholder_token_names() -> None:
    assert placeholder_token("waterbird") == "<waterbird-causal>"
    assert placeholder_token("Blond Hair") == "<blond-hair-causal>"


def test_loss_falls_and_only_the_new_row_changes(tmp_path: Path, model_dir: Path, base_model, pools) -> None:
    cfg = make_cfg(tmp_path, model_dir, "invert.lr=0.05", "invert.weight_decay=0")
    trainer = trainer_for(base_model, cfg, pools["landbird"])
    te = trainer.model.text_encoder
    frozen_before = {k: v.clone() for k, v in {**trainer.model.unet.state_dict(), **te.state_dict()}.items()}
    original = load_file(str(model_dir / "text_encoder" / "model.safetensors"))
    table_key = next(k for k in original if k.endswith("token_embedding.weight"))
    init_row = te.get_input_embeddings().weight[trainer.token_id].clone()

    batch = trainer.micro_batch(0)  # fixed images, prompts, noise and timesteps
    losses = [trainer.step([batch]) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:], strict=False)) >= 6  # falls (almost) every step

    # Only the placeholder's embedding moved; the embedding table and every other weight did not.
    assert not torch.equal(trainer.learned_embedding()[0], init_row)
    table = te.get_input_embeddings().weight
    assert table.shape[0] == original[table_key].shape[0] + 1
    assert torch.equal(table[:-1], original[table_key])  # every pre-existing row, bit for bit
    for key, value in {**trainer.model.unet.state_dict(), **te.state_dict()}.items():
        assert torch.equal(value, frozen_before[key]), key
    assert [p for p in (*trainer.model.unet.parameters(), *te.parameters()) if p.requires_grad] == []


def test_micro_batches_are_a_function_of_their_index(tmp_path: Path, model_dir: Path, base_model,
                                                     pools) -> None:
    cfg = make_cfg(tmp_path, model_dir, "invert.batch_size=3")
    trainer = trainer_for(base_model, cfg, pools["landbird"])
    a, b = trainer.micro_batch(5), trainer.micro_batch(5)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    # Epoch-wise permutations: the first 4 picks (one epoch of 4 images) cover every image once.
    picks = torch.cat([trainer.micro_batch(i).index for i in range(4)]).tolist()
    assert sorted(picks[:4]) == [0, 1, 2, 3] and sorted(picks[4:8]) == [0, 1, 2, 3]


def test_saved_token_loads_in_diffusers_and_inpaints(tmp_path: Path, model_dir: Path, base_model,
                                                     pools) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    cfg = make_cfg(tmp_path, model_dir, "invert.classes=[landbird]")
    [job] = plan_jobs(cfg, CLASSES, {"landbird": pools["landbird"]})
    summary = invert_class(job)
    assert summary["status"] == "trained"
    folder = tmp_path / "tokens" / "landbird"
    meta = json.loads((folder / "token.json").read_text())
    assert meta["token"] == "<landbird-causal>" and meta["initializer"] == "bird" and meta["finished"]
    assert len(meta["loss"]) == 3 and len(meta["images"]) == 4 and meta["skipped"] == []
    saved = load_file(str(folder / "learned_embeds.safetensors"))
    assert list(saved) == ["<landbird-causal>"] and saved["<landbird-causal>"].shape == (1, 32)
    assert load_learned_token(tmp_path / "tokens", "landbird") == ("<landbird-causal>",
                                                                   folder / "learned_embeds.safetensors")

    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(model_dir), safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.load_textual_inversion(str(folder))  # the folder form reads learned_embeds.safetensors
    token_id = pipe.tokenizer.convert_tokens_to_ids("<landbird-causal>")
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.equal(row, saved["<landbird-causal>"][0])
    # The trainer's spliced encoding is what the pipeline computes with the loaded token.
    prompt = "a photo of a <landbird-causal> landbird"
    trainer = trainer_for(base_model, cfg, pools["landbird"])
    with torch.no_grad():
        trainer.embedding.copy_(saved["<landbird-causal>"][0])
        with trainer.spliced():
            ours = trainer.model.text_encoder(trainer.prompt_ids[:1])[0]
        theirs = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    assert cfg.invert.templates[0].format(token="<landbird-causal>", class_name="landbird") == prompt
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    pipe.set_progress_bar_config(disable=True)
    image = np.full((64, 64, 3), 127, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255

    def paint(prompt: str) -> np.ndarray:
        return pipe(prompt=prompt, image=image, mask_image=mask, num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    with_token = paint("a photo of a <landbird-causal> landbird")
    assert with_token.shape == (64, 64, 3) and np.isfinite(with_token).all()
    assert not np.array_equal(with_token, paint("a photo of a bird landbird"))  # the token conditions


def test_two_classes_run_as_ray_tasks_with_distinct_tokens(tmp_path: Path, model_dir: Path, pools,
                                                           ray_local) -> None:
    cfg = make_cfg(tmp_path, model_dir, "invert.steps=2", "invert.num_cpus=1")
    results = run_inversion(cfg, CLASSES, pools, engine="ray", progress=False)
    assert [(r["class_name"], r["status"]) for r in results] == [("landbird", "trained"),
                                                                 ("waterbird", "trained")]
    rows = {c: load_file(str(tmp_path / "tokens" / c / "learned_embeds.safetensors")) for c in CLASSES}
    assert [next(iter(r)) for r in rows.values()] == ["<landbird-causal>", "<waterbird-causal>"]
    land, water = (next(iter(r.values())) for r in rows.values())
    assert not torch.equal(land, water)  # same initializer, different pools -> different embeddings


@pytest.mark.parametrize(("overrides", "pool_change", "error", "match"), [
    (["invert.classes=[owl]"], None, ConfigError, r"invert.classes: unknown class 'owl'"),
    (["invert.initializer={owl: bird}"], None, ConfigError, r"invert.initializer: unknown class 'owl'"),
    ([], {"owl": []}, ConfigError, r"token pools: unknown class 'owl'"),
    ([], {"waterbird": []}, DataError, r"token pool of class 'waterbird' is empty"),
    (["invert.tokens={waterbird: bird}"], None, ConfigError, r"token 'bird' of class 'waterbird' is already"),
    (["invert.initializer={landbird: bird, waterbird: 'water bird'}"], None, ConfigError,
     r"initializer.waterbird='water bird': no single-token initializer"),
    (["invert.tokens={waterbird: <landbird-causal>}"], None, ConfigError, r"map to the same token"),
    (["invert.mixed_precision=bf16"], None, ConfigError, r"needs device=cuda"),
    (["device=cuda", "invert.num_gpus=0"], None, ConfigError, r"the class tasks would get no GPU"),
    ([], {"waterbird": "nomask"}, ConfigError, r"mask_mode=object but 4 of 4 .* 'waterbird' have no mask"),
])
def test_bad_config_fails_before_training(tmp_path: Path, model_dir: Path, pools, overrides, pool_change,
                                          error, match) -> None:
    cfg = make_cfg(tmp_path, model_dir, *overrides)
    given = dict(pools)
    for name, change in (pool_change or {}).items():
        given[name] = [PoolImage(p.path) for p in pools["waterbird"]] if change == "nomask" else change
    with pytest.raises(error, match=match):
        run_inversion(cfg, CLASSES, given, engine="loop", progress=False)
    assert not (tmp_path / "tokens").exists()


def test_token_already_added_to_the_model_tokenizer(tmp_path: Path, model_dir: Path, pools) -> None:
    import shutil

    from transformers import AutoTokenizer

    copy = shutil.copytree(model_dir, tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(copy, subfolder="tokenizer")
    tok.add_tokens(["<waterbird-causal>"])
    tok.save_pretrained(copy / "tokenizer")
    with pytest.raises(ConfigError, match=r"'<waterbird-causal>' of class 'waterbird' is already in"):
        run_inversion(make_cfg(tmp_path / "out", copy), CLASSES, pools, engine="loop", progress=False)


def test_a_text_to_image_model_is_refused_before_training(tmp_path: Path, model_dir: Path, pools) -> None:
    import shutil

    copy_dir = shutil.copytree(model_dir, tmp_path / "model")
    unet_cfg = json.loads((copy_dir / "unet" / "config.json").read_text())
    (copy_dir / "unet" / "config.json").write_text(json.dumps({**unet_cfg, "in_channels": 4}))
    with pytest.raises(ConfigError, match=r"UNet has 4 input channels; expected 9 \(an inpainting UNet"):
        run_inversion(make_cfg(tmp_path / "out", copy_dir), CLASSES, pools, engine="loop", progress=False)


def test_bad_templates_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"must contain \{token\} and \{class_name\}"):
        load_config(None, ["invert.templates=['a photo of a {token} animal']"])


def test_resume_continues_bit_identically_and_skips_finished(tmp_path: Path, model_dir: Path, pools) -> None:
    ckpt = ["invert.steps=4", "invert.checkpoint_every=2"]
    one = {"landbird": pools["landbird"]}
    straight = make_cfg(tmp_path / "a", model_dir, "invert.classes=[landbird]", *ckpt)
    [done] = run_inversion(straight, CLASSES, one, engine="loop", progress=False)
    assert done["status"] == "trained"
    reference = json.loads((tmp_path / "a/tokens/landbird/token.json").read_text())

    # An interrupted run: only the step-2 checkpoint is left.
    cfg = make_cfg(tmp_path / "b", model_dir, "invert.classes=[landbird]", *ckpt)
    run_inversion(cfg, CLASSES, one, engine="loop", progress=False)
    folder = tmp_path / "b/tokens/landbird"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-2"]
    (folder / "token.json").unlink()
    (folder / "learned_embeds.safetensors").unlink()
    [job] = plan_jobs(cfg, CLASSES, one)
    assert (job.status, job.resume_step) == ("resume", 2)
    said: list[str] = []
    assert invert_class(job, report=said.append)["status"] == "trained"
    assert any("resuming at step 2/4" in line for line in said)
    resumed = json.loads((folder / "token.json").read_text())
    assert resumed["loss"] == reference["loss"]
    reference_row = load_file(str(tmp_path / "a/tokens/landbird/learned_embeds.safetensors"))
    assert torch.equal(load_file(str(folder / "learned_embeds.safetensors"))["<landbird-causal>"],
                       reference_row["<landbird-causal>"])

    # A finished class is skipped; the same folder with other settings is refused, not overwritten.
    stamp = (folder / "learned_embeds.safetensors").stat().st_mtime_ns
    [again] = run_inversion(cfg, CLASSES, one, engine="loop", progress=False)
    assert again["status"] == "skipped"
    assert (folder / "learned_embeds.safetensors").stat().st_mtime_ns == stamp
    other = make_cfg(tmp_path / "b", model_dir, "invert.classes=[landbird]", "invert.lr=0.01", *ckpt)
    with pytest.raises(ConfigError, match=r"trained with other settings \(lr: 0.0005 -> 0.01\)"):
        run_inversion(other, CLASSES, one, engine="loop", progress=False)


def test_pools_from_select_csv_get_the_mask_stage_masks(tmp_path: Path, model_dir: Path, base_model,
                                                        data_dir: Path) -> None:
    """The select step's CSVs go through the generation mask stage; a blank mask is a recorded skip."""
    from raydbb.data.images import read_mask, write_png_atomic
    from raydbb.data.registry import load_records

    cfg = make_cfg(tmp_path, model_dir, f"data.root={data_dir}", "mask.source=dataset")
    records = load_records(cfg.data)
    train = records.split("train")
    blank = tmp_path / "blank.png"
    write_png_atomic(blank, np.zeros((64, 64), dtype=bool))
    for y, name in enumerate(records.class_names):
        rows = train[train["label"] == y].head(3).copy()
        if name == "waterbird":
            rows.iloc[0, rows.columns.get_loc("mask")] = str(blank)
        (tmp_path / "token_pool").mkdir(exist_ok=True)
        pool_csv = tmp_path / "token_pool" / f"{name}.csv"
        rows[["sample_id", "path", "label", "mask"]].to_csv(pool_csv, index=False)

    got = prepare_pools(cfg, records, engine="loop", progress=False)
    assert [len(got[c]) for c in CLASSES] == [3, 3]
    skipped = [p for p in got["waterbird"] if p.skip]
    assert len(skipped) == 1 and skipped[0].skip.startswith("no_mask")
    for p in got["landbird"]:
        source = train.loc[train["path"] == p.path, "mask"].item()
        assert np.array_equal(read_mask(p.mask), read_mask(source))  # dataset masks, no dilation

    jobs = plan_jobs(cfg, CLASSES, got)
    trainer = trainer_for(base_model, cfg, jobs[1].images)
    assert trainer.images is not None and len(trainer.images.used) == 2
    assert trainer.images.skipped[0]["reason"].startswith("no_mask")


def test_cli_end_to_end_on_synthetic(tmp_path: Path, model_dir: Path, data_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from raydbb.cli import main

    pool_dir = tmp_path / "token_pool"
    pool_dir.mkdir()
    meta = pd.read_csv(data_dir / "metadata.csv")
    for name, g in meta[meta["split"] == "train"].groupby("label"):
        g.head(2).assign(path=[str(data_dir / p) for p in g.head(2)["path"]],
                         mask=[str(data_dir / m) for m in g.head(2)["mask"]]).to_csv(pool_dir / f"{name}.csv")
    args = ["invert", "--engine", "loop", "--no-progress", f"out={tmp_path}", f"data.root={data_dir}",
            f"inpaint.model={model_dir}", f"invert.initializer={INIT}", "invert.steps=1",
            "invert.resolution=32", "invert.batch_size=1", "invert.grad_accum=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "<waterbird-causal>" in out and f"inpaint.tokens_dir={tmp_path / 'tokens'}" in out
    for c in CLASSES:
        assert load_learned_token(tmp_path / "tokens", c)[0] == f"<{c}-causal>"
    assert main([*args, "invert.classes=[owl]"]) == 2
    assert "invert.classes: unknown class 'owl'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_gpu(tmp_path: Path, model_dir: Path, pools, precision: str) -> None:
    cfg = make_cfg(tmp_path, model_dir, "device=cuda", f"invert.mixed_precision={precision}",
                   "invert.lr=0.05")
    trainer = TokenTrainer(load_inpaint_model(str(model_dir), "cuda", precision), "<landbird-causal>", "bird",
                           "landbird", cfg.invert, "cuda")
    trainer.encode_images(pools["landbird"], "object")
    assert trainer.model.unet.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    batch = trainer.micro_batch(0)
    losses = [trainer.step([batch]) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert trainer.embedding.dtype == torch.float32


def test_unusable_pool_is_an_error_not_a_crash(tmp_path: Path, model_dir: Path, base_model) -> None:
    cfg = make_cfg(tmp_path, model_dir, "invert.mask_mode=full")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(RaydbbError, match=r"none of the 1 token-pool images is usable \(first: image_read"):
        trainer_for(base_model, cfg, [PoolImage(str(bad))])
