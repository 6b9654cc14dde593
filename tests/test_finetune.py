"""Fine-tuning without recipe surgery: the run's length stretches the whole schedule, --epochs, --lr,
--warmup-iters, --init-from, --crop where the pipeline has one, the custom-data default length, and what
--print-recipe shows."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.training import build_optimizer, get_recipe
from segzoo.training.config import TrainConfig, resolve_recipe
from segzoo.training.recipe import FINE_TUNE_ITERS, ScheduleSpec
from segzoo.training.schedules import learning_rate, rescaled
from segzoo.weights import CheckpointMismatchError
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict
from tests.test_training_loop import coloured_sample

ENTRY = "moganet_xt_fpn_ade20k"  # the smallest model of the registry


def make_custom(root: Path, train_images: int, val_images: int = 0) -> Path:
    """A ``custom:`` folder of 64x64 images whose three classes can be told by their colour."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_images), ("val", val_images)):
        for i in range(count):
            image, classes = coloured_sample(rng)
            for kind, array in (("images", image), ("labels", classes.astype(np.uint8))):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / kind / split / f"{i}.png")
    return root


def _rate_range(schedule: ScheduleSpec, iters: int) -> tuple[float, float]:
    """(highest rate, rate at the last iteration) of a group with base rate 1 over a run of ``iters``."""
    rates = [learning_rate(schedule, iters, 1.0, i) for i in range(iters)]
    return max(rates), rates[-1]


# ---- the run's length stretches the whole schedule ----


@pytest.mark.parametrize("iters", [300, 200_000])
@pytest.mark.parametrize("name", segzoo.list_models())
def test_any_length_warms_up_and_decays(name: str, iters: int) -> None:
    recipe = resolve_recipe(TrainConfig(entry=name, iters=iters))
    highest, last = _rate_range(recipe.schedule, iters)
    assert highest >= 0.5 and last <= 0.1, (highest, last, recipe.schedule)


@pytest.mark.parametrize("name", segzoo.list_models())
def test_no_override_keeps_the_recipe(name: str) -> None:
    recipe = get_recipe(name)
    assert resolve_recipe(TrainConfig(entry=name)) == recipe
    assert resolve_recipe(TrainConfig(entry=name, iters=recipe.iters)) == recipe


def test_rescaled_scales_warmup_periods_and_steps_in_proportion() -> None:
    restart = ScheduleSpec(
        policy="cosine_restart", periods=(20_000, 40_000, 100_000), warmup="linear", warmup_iters=1500
    )
    short = rescaled(restart, 160_000, 300)
    assert (short.warmup_iters, sum(short.periods), short.periods) == (3, 300, (38, 74, 188))
    assert sum(rescaled(restart, 160_000, 200_000).periods) == 200_000
    step = ScheduleSpec(policy="step", style="detectron2", steps=(60_000, 80_000), warmup="linear", warmup_iters=1000)
    assert rescaled(step, 90_000, 900) == dataclasses.replace(step, steps=(600, 800), warmup_iters=10)
    assert rescaled(step, 90_000, 90_000) is step


def test_intervals_keep_their_share_of_the_run() -> None:
    recipe = resolve_recipe(TrainConfig(entry="moganet_xt_upernet_ade20k", iters=300))  # 16000 of 160000
    assert (recipe.eval_interval, recipe.checkpoint_interval) == (30, 30)
    explicit = resolve_recipe(TrainConfig(entry="moganet_xt_upernet_ade20k", iters=300, eval_interval=0))
    assert explicit.eval_interval == 0


# ---- --epochs, --lr, --warmup-iters, --crop, the custom-data default ----


def test_epochs_count_the_train_split(tmp_path: Path) -> None:
    data = f"custom:{make_custom(tmp_path / 'data', train_images=10)}"
    recipe_batch = get_recipe(ENTRY).batch_size  # 32
    config = TrainConfig(entry=ENTRY, data=data, num_classes=3, epochs=5)
    assert resolve_recipe(config).iters == math.ceil(5 * 10 / recipe_batch)
    smaller = dataclasses.replace(config, batch_size=1, accumulation=2)  # 2 images per iteration
    assert resolve_recipe(smaller).iters == 25
    with pytest.raises(ValueError, match="--iters and --epochs"):
        resolve_recipe(dataclasses.replace(config, iters=10))
    with pytest.raises(SystemExit):
        main(["train", ENTRY, "--iters", "10", "--epochs", "1", "--print-recipe"])


def test_custom_data_defaults_to_a_fine_tuning_length(tmp_path: Path) -> None:
    data = f"custom:{make_custom(tmp_path / 'data', train_images=1)}"
    recipe = resolve_recipe(TrainConfig(entry="moganet_xt_upernet_ade20k", data=data, num_classes=3))
    assert recipe.iters == FINE_TUNE_ITERS
    assert recipe.schedule.warmup_iters == round(1500 * FINE_TUNE_ITERS / 160_000)


def test_lr_replaces_the_base_and_keeps_the_multipliers() -> None:
    from tests.test_recipes import _lr_and_decay, _meta_model

    recipe = resolve_recipe(TrainConfig(entry="emanet_r50_coco", lr=1e-3))
    lrs = _lr_and_decay(build_optimizer(_meta_model("emanet_r50_coco"), recipe))
    assert lrs["decode_head.reduced_conv.weight"] == (1e-3, 1e-4)
    assert lrs["decode_head.conv_seg.bias"] == (2e-3, 0.0)  # detectron2's bias rule: lr x 2


def test_warmup_iters_override() -> None:
    assert resolve_recipe(TrainConfig(entry="emanet_r50_coco", warmup_iters=0)).schedule.warmup is None
    added = resolve_recipe(TrainConfig(entry=ENTRY, iters=100, warmup_iters=10)).schedule  # FPN: no warm-up
    assert (added.warmup, added.warmup_iters) == ("linear", 10)
    stretched = resolve_recipe(TrainConfig(entry="emanet_r50_coco", iters=300, warmup_iters=50)).schedule
    assert stretched.warmup_iters == 50  # the override wins over the stretched 10
    with pytest.raises(ValueError, match="would never end"):
        resolve_recipe(TrainConfig(entry=ENTRY, iters=100, warmup_iters=100))


def test_crop_is_refused_where_the_pipeline_has_none(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "emanet_r50_coco", "--crop", "512", "512", "--print-recipe"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error: --crop:") and "no RandomCrop" in err and err.count("\n") == 1, err
    assert main(["train", ENTRY, "--crop", "256", "256", "--print-recipe"]) == 0
    assert json.loads(capsys.readouterr().out)["crop_size"] == [256, 256]


def test_print_recipe_shows_the_effective_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "start.safetensors"
    weights.write_bytes(b"")
    argv = ["train", "regproxy_vit_b16_ade20k", "--iters", "300", "--lr", "1e-4", "--warmup-iters", "5"]
    assert main([*argv, "--init-from", str(weights), "--print-recipe"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["iters"], printed["optimizer"]["lr"], printed["start_from"]) == (300, 1e-4, str(weights))
    assert (printed["schedule"]["warmup_iters"], sum(printed["schedule"]["periods"])) == (5, 300)
    assert (printed["eval_interval"], printed["checkpoint_interval"]) == (8, 8)  # 4000 of 160000
    assert main(["train", ENTRY, "--print-recipe"]) == 0
    assert json.loads(capsys.readouterr().out)["start_from"] == "ImageNet backbone"


# ---- --init-from ----


@pytest.mark.parametrize(
    "options, message",
    [
        (["--init-from", "no/such.pth"], "--init-from no/such.pth: no such file"),
        (["--init-from", __file__, "--resume"], "--init-from starts a new run"),
        (["--init-from", __file__, "--pretrained"], "leave out --pretrained"),
    ],
)
def test_init_from_user_errors_are_one_line(options: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", ENTRY, *options, "--print-recipe"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error:") and message in err and err.count("\n") == 1, err


def _starting_parameters(config: TrainConfig) -> dict[str, torch.Tensor]:
    from segzoo.training.build import build_model

    return build_model(config, resolve_recipe(config), fresh=True).state_dict()


def test_init_from_reads_every_layout(tmp_path: Path) -> None:
    """The upstream mmseg file, the segzoo .safetensors and a segzoo train checkpoint give the same weights."""
    from segzoo.training.checkpoint import save_checkpoint

    upstream = save_mmseg_checkpoint(tmp_path / "up.pth", synthetic_state_dict(ENTRY))
    expected = segzoo.create_model(ENTRY, checkpoint_path=upstream).state_dict()
    safetensors.torch.save_file(expected, tmp_path / "native.safetensors")
    save_checkpoint({"model": expected, "iteration": 3}, tmp_path / "iter_00000003.pth")
    for name in ("up.pth", "native.safetensors", "iter_00000003.pth"):
        loaded = _starting_parameters(TrainConfig(entry=ENTRY, init_from=str(tmp_path / name)))
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), name
    with pytest.warns(UserWarning, match="re-initialized decode_head.conv_seg"):
        other = _starting_parameters(
            TrainConfig(entry=ENTRY, init_from=str(tmp_path / "native.safetensors"), num_classes=3)
        )
    assert other["decode_head.conv_seg.weight"].shape[0] == 3
    kept = [k for k in expected if not k.startswith("decode_head.conv_seg.")]
    assert all(torch.equal(other[k], expected[k]) for k in kept)


def test_init_from_another_models_file_says_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"--init-from {path}: {ENTRY} cannot start from this file"):
        _starting_parameters(TrainConfig(entry=ENTRY, init_from=str(path)))


@pytest.fixture
def one_thread():
    """One thread: several on a shared machine slow a tiny model down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fine_tune_from_a_local_file_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    """``segzoo train --data custom: --init-from FILE --iters 3``: starts from the file (a rate of 1e-12 moves
    no parameter measurably), offline: nothing published or ImageNet is fetched."""
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    data = make_custom(tmp_path / "data", train_images=2, val_images=1)
    start = segzoo.create_model(ENTRY, num_classes=3).state_dict()
    safetensors.torch.save_file(start, tmp_path / "start.safetensors")
    start_file = str(tmp_path / "start.safetensors")
    argv = ["train", ENTRY, "--data", f"custom:{data}", "--num-classes", "3", "--init-from", start_file]
    options = ["--iters", "3", "--lr", "1e-12", "--crop", "64", "64", "--batch-size", "1", "--accumulation", "2"]
    run = ["--work-dir", str(tmp_path / "work"), "--eval-interval", "3", "--workers", "0", "--device", "cpu", "--quiet"]
    assert main([*argv, *options, *run]) == 0
    trained = torch.load(tmp_path / "work" / "iter_00000003.pth", map_location="cpu", weights_only=True)
    assert trained["recipe"]["iters"] == 3 and trained["config"]["init_from"] == start_file
    names = {name for name, _ in segzoo.create_model(ENTRY, num_classes=3).named_parameters()}
    for name in names:
        torch.testing.assert_close(trained["model"][name], start[name], rtol=0, atol=1e-9)
    records = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in records)
