"""The training loop on CPU (gloo), on a tiny synthetic ADE20K folder: learning, process/accumulation
equivalence, exact resume after SIGKILL, conversion of the result, and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")

import segzoo
from segzoo.cli import main
from segzoo.training import drops, get_recipe
from segzoo.training.build import uses_sync_bn
from segzoo.training.checkpoint import latest_checkpoint, remove_interrupted_writes
from segzoo.training.distributed import Processes, seed_everything
from segzoo.training.loop import LOG_NAME, TrainConfig, train
from segzoo.training.recipe import ScheduleSpec
from segzoo.training.run_log import TENSORBOARD_DIR, JsonLog, TensorBoardLog
from tests.conftest import REPO

ENTRY = "moganet_xt_fpn_ade20k"  # the smallest model of the registry
CROP = (64, 64)  # small, yet 2x2 at stride 32: batch norm needs more than one value per channel
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])  # class c's pixels are near COLOURS[c]


def coloured_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 RGB image of 16x16 blocks of three classes told by their colour, and its class map (0..2)."""
    classes = rng.integers(0, 3, (4, 4)).repeat(16, 0).repeat(16, 1)
    image = np.clip(COLOURS[classes] + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    return image, classes


def make_ade20k(root: Path, train_images: int, val_images: int = 2) -> Path:
    """ADEChallengeData2016 layout: 64x64 images whose three classes (1..3 on disk) can be told by their colour."""
    rng = np.random.default_rng(0)
    for folder, count in (("training", train_images), ("validation", val_images)):
        for i in range(count):
            image, classes = coloured_sample(rng)
            label = (classes + 1).astype(np.uint8)
            for kind, array, suffix in (("images", image, "jpg"), ("annotations", label, "png")):
                path = root / kind / folder / f"ADE_{folder}_{i:08d}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as in the subprocesses: faster on a shared machine, and the same float reductions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ade_root(module_tmp: Callable[[str], Path]) -> Path:
    return make_ade20k(module_tmp("ade"), train_images=8)


def small_config(data: Path, work_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        entry=ENTRY,
        data=str(data),
        work_dir=str(work_dir),
        iters=4,
        batch_size=1,
        accumulation=2,
        workers=0,
        crop=CROP,
        eval_interval=0,
        log_interval=1,
        imagenet=False,
        quiet=True,
        device="cpu",
    )
    return dataclasses.replace(base, **changes)


def constant_rate(lr: float, sync_bn: bool = True):
    """The entry's recipe at a small crop with a constant learning rate ``lr`` (no warm-up, no decay)."""
    recipe = get_recipe(ENTRY)
    return dataclasses.replace(
        recipe,
        crop_size=CROP,
        iters=4,
        sync_bn=sync_bn,
        eval_interval=0,
        optimizer=dataclasses.replace(recipe.optimizer, lr=lr),
        schedule=ScheduleSpec(policy="poly", power=0.0),
    )


def model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


def parameter_names() -> set[str]:
    return {name for name, _ in segzoo.create_model(ENTRY).named_parameters()}


def initial_state() -> dict[str, torch.Tensor]:
    """The weights a run with seed 0 starts from (random initialization, no ImageNet backbone)."""
    seed_everything(0)
    return segzoo.create_model(ENTRY).state_dict()


def moved(trained: dict[str, torch.Tensor]) -> bool:
    """Whether training changed most parameters from where it started."""
    start, names = initial_state(), parameter_names()
    return sum(not torch.equal(trained[n], start[n]) for n in names) > len(names) // 2


def subprocess_env() -> dict[str, str]:
    """The repository importable, one thread per process (the same float reductions in every run)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_loss_goes_down_overfitting_two_images(tmp_path: Path) -> None:
    data = make_ade20k(tmp_path / "ade", train_images=2, val_images=0)
    iters = 20
    recipe = dataclasses.replace(constant_rate(1e-3), iters=iters)
    config = small_config(
        data, tmp_path / "work", iters=iters, batch_size=2, accumulation=1, drop_path=0.0, checkpoint_interval=iters
    )
    final = train(config, recipe)
    assert final.name == f"iter_{iters:08d}.pth" and final.is_file()
    records = [json.loads(line) for line in (tmp_path / "work" / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert [r["iter"] for r in records] == list(range(1, iters + 1))
    assert {"loss_decode", "lr", "images_per_s", "eta_s", "memory_mb"} <= records[0].keys()
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


_WORKER = """
import dataclasses, sys
from segzoo.training.loop import train
from tests.test_training_loop import SPLIT_DROP_PATH, constant_rate, small_config
data, work = sys.argv[1:3]
# the recipe asks for SyncBN, which on the CPU becomes plain BatchNorm
train(small_config(data, work, iters=3, drop_path=SPLIT_DROP_PATH, accumulation=1),
      dataclasses.replace(constant_rate(1e-3), iters=3))
"""
SPLIT_DROP_PATH = 0.2  # with the decode head's Dropout2d(0.1): both kinds of draws are on


@pytest.fixture(scope="module")
def two_processes(ade_root: Path, module_tmp: Callable[[str], Path]) -> dict[str, torch.Tensor]:
    """The final state of 3 steps on 2 processes x 1 image (plain BatchNorm, dropout and drop-path on)."""
    work = module_tmp("two")
    script = work / "worker.py"
    script.write_text(_WORKER)
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(ade_root),
        str(work / "run"),
    ]
    done = subprocess.run(launch, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return model_tensors(work / "run" / "iter_00000003.pth")


def one_process_accumulating_two(data: Path, work_dir: Path) -> dict[str, torch.Tensor]:
    """The final state of the same 3 steps on 1 process x 2 micro-steps x 1 image."""
    recipe = dataclasses.replace(constant_rate(1e-3, sync_bn=False), iters=3)
    config = small_config(data, work_dir, iters=3, drop_path=SPLIT_DROP_PATH, accumulation=2)
    return model_tensors(train(config, recipe))


def test_two_processes_equal_one_accumulating_two(
    two_processes: dict[str, torch.Tensor], ade_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bitwise equal parameters: dropout and drop-path masks are keyed by stream position, so a second process draws
    what a second micro-step draws, and both splits add the same two gradients, halved. Masks keyed by another
    seed change every parameter."""
    import segzoo.training.loop as loop

    one = one_process_accumulating_two(ade_root, tmp_path / "one")
    names = sorted(parameter_names())
    assert moved(one)
    assert [n for n in names if not torch.equal(two_processes[n], one[n])] == []
    monkeypatch.setattr(loop, "seed_drops", lambda model, seed: drops.seed_drops(model, seed + 1))
    other_masks = one_process_accumulating_two(ade_root, tmp_path / "other")
    assert [n for n in names if torch.equal(two_processes[n], other_masks[n])] == []


def test_batch_norm_statistics_follow_rank_0s_micro_batches(
    two_processes: dict[str, torch.Tensor], ade_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With plain BatchNorm, DDP broadcasts rank 0's buffers before each step's first forward, so the running
    statistics follow rank 0's micro-batches only: the accumulating run whose second micro-steps leave them alone
    (momentum 0) ends with the same statistics, bitwise; only the count of batches tracked differs."""
    import segzoo.training.loop as loop

    compute_losses, forwards = loop.compute_losses, iter(range(10**6))

    def second_micro_step_keeps_statistics(model, images, labels, recipe):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert all(norm.momentum is not None for norm in norms)  # an exponential average, not a cumulative one
        momenta = [norm.momentum for norm in norms]
        if next(forwards) % 2 == 1:
            for norm in norms:
                norm.momentum = 0.0
        try:
            return compute_losses(model, images, labels, recipe)
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum

    monkeypatch.setattr(loop, "compute_losses", second_micro_step_keeps_statistics)
    one = one_process_accumulating_two(ade_root, tmp_path / "one")
    counters = [n for n in one if n.endswith("num_batches_tracked")]
    assert counters and all(one[n] == 6 and two_processes[n] == 3 for n in counters)
    assert [n for n in one if n not in counters and not torch.equal(two_processes[n], one[n])] == []


def _train_command(data: Path, work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segzoo.training",
        ENTRY,
        "--data-root",
        str(data),
        "--work-dir",
        str(work),
        "--iters",
        "10",
        "--checkpoint-interval",
        "3",
        "--batch-size",
        "1",
        "--accumulation",
        "2",
        "--crop",
        *map(str, CROP),
        "--eval-interval",
        "0",
        "--workers",
        "0",
        "--no-imagenet",
        "--quiet",
        "--device",
        "cpu",
        "--log-interval",
        "1",
    ]


@pytest.fixture(scope="module")
def resumed_and_uninterrupted(ade_root: Path, module_tmp: Callable[[str], Path]) -> tuple[Path, Path]:
    """The final checkpoints of a run killed with SIGKILL after a checkpoint then resumed, and of the same run
    uninterrupted (both with the entry's drop-path, so every process's random state must come back too)."""
    root = module_tmp("resume")
    env = subprocess_env()
    reference = subprocess.Popen(_train_command(ade_root, root / "whole"), env=env, stderr=subprocess.PIPE)
    killed = subprocess.Popen(_train_command(ade_root, root / "killed"), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while latest_checkpoint(root / "killed") is None and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()[-3000:]
    assert latest_checkpoint(root / "killed").name != "iter_00000010.pth", "the run ended before it was killed"
    resumed = subprocess.run(
        [*_train_command(ade_root, root / "killed"), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-3000:]
    records = [json.loads(line) for line in (root / "killed" / LOG_NAME).read_text().splitlines()]
    logged = [record["iter"] for record in records if "lr" in record]
    assert logged.count(1) == 1 and logged[-1] == 10, logged  # went on from a checkpoint, not from the start
    assert logged == sorted(set(logged)), logged  # each iteration once: the resumed run dropped what it did again
    return root / "killed" / "iter_00000010.pth", root / "whole" / "iter_00000010.pth"


def test_two_cpu_processes_train_checkpoint_and_resume(ade_root: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m segzoo.training ... --device cpu`` with the recipe's SyncBN (plain
    BatchNorm on the CPU) trains and checkpoints; resumed from its middle checkpoint it ends bitwise equal."""
    command = _train_command(ade_root, tmp_path / "run")
    command[command.index("--iters") + 1] = "4"
    command[command.index("--checkpoint-interval") + 1] = "2"
    command[command.index("--accumulation") + 1] = "1"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command[1:]]
    done = subprocess.run(launch, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = tmp_path / "run" / "iter_00000004.pth"
    assert (tmp_path / "run" / "iter_00000002.pth").is_file()
    uninterrupted = model_tensors(final)
    final.unlink()
    again = subprocess.run([*launch, "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = model_tensors(final)
    assert [k for k in uninterrupted if not torch.equal(uninterrupted[k], resumed[k])] == []
    assert moved(resumed)


def test_sigkill_and_resume_gives_bitwise_identical_weights(resumed_and_uninterrupted) -> None:
    resumed, uninterrupted = map(model_tensors, resumed_and_uninterrupted)
    assert resumed.keys() == uninterrupted.keys()
    different = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
    assert not different, different[:10]
    assert moved(resumed)


def test_checkpoint_holds_only_tensors_and_plain_data(resumed_and_uninterrupted) -> None:
    state = torch.load(resumed_and_uninterrupted[0], map_location="cpu", weights_only=True)
    assert state["iteration"] == 10 and len(state["rng"]) == 1
    assert state["recipe"]["name"] == ENTRY and state["config"]["crop"] == list(CROP)
    assert {"optimizer", "scheduler", "scaler", "sampler"} <= state.keys()


def test_final_checkpoint_converts_and_loads(
    resumed_and_uninterrupted, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    final = resumed_and_uninterrupted[1]
    trained = model_tensors(final)
    assert main(["convert", ENTRY, "-c", str(final), "--out", str(tmp_path / "native"), "--quiet"]) == 0
    for source in (final, tmp_path / "native" / "model.safetensors"):
        model = segzoo.create_model(ENTRY, checkpoint_path=source, num_classes=150)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], trained[k]) for k in trained)


@pytest.mark.parametrize("name", segzoo.list_models())
def test_print_recipe_for_every_entry(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", name, "--print-recipe"]) == 0
    printed = json.loads(capsys.readouterr().out)
    info = segzoo.model_info(name)
    assert (printed["name"], printed["iters"], printed["batch_size"]) == (name, info.train_iters, info.train_batch_size)


@pytest.mark.parametrize(
    "options, message",
    [
        ([], "pass --data-root DIR"),
        (["--data-root", "no/such/folder"], "no/such/folder"),
        (["--data", "no/such/folder"], "expected custom:DIR"),
        (["--data", "custom:no/such/folder", "--num-classes", "3"], "is not a folder"),
        (["--data", "custom:."], "--num-classes K"),
    ],
)
def test_user_errors_are_one_line(options: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", ENTRY, *options]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error:") and message in err and err.count("\n") == 1, err


def test_missing_train_extra_says_how_to_install(
    ade_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else find_spec(name, *a)
    )
    assert main(["train", ENTRY, "--data-root", str(ade_root)]) == 1
    assert 'pip install "segzoo[train]"' in capsys.readouterr().err


def test_total_batch_must_split_evenly(ade_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe_batch = get_recipe(ENTRY).batch_size
    assert (
        main(
            [
                "train",
                ENTRY,
                "--data-root",
                str(ade_root),
                "--batch-size",
                str(recipe_batch - 1),
                "--work-dir",
                str(tmp_path),
                "--no-imagenet",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "cannot split evenly" in capsys.readouterr().err


def test_reproduction_guide_gives_both_commands_and_the_target() -> None:
    from segzoo.training.guide import reproduction_markdown

    text = reproduction_markdown("moganet_s_fpn_ade20k")  # 8 GPUs x 4 images in the paper
    assert "torchrun --nproc_per_node 8 -m segzoo.training moganet_s_fpn_ade20k --data-root" in text
    assert "torchrun --nproc_per_node 2 -m segzoo.training moganet_s_fpn_ade20k" in text
    assert "--accumulation 4" in text and "Expected wall time:" in text
    assert "mIoU 47.7" in text


def test_fine_tuning_on_custom_data_starts_from_the_published_weights(
    tmp_path: Path, file_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

    published = synthetic_state_dict(ENTRY)
    save_mmseg_checkpoint(file_server.root / segzoo.model_info(ENTRY).weights[0].filename, published)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for i in range(2):
            classes = rng.integers(0, 3, (4, 4)).repeat(16, 0).repeat(16, 1)
            for kind, array in (("images", COLOURS[classes].astype(np.uint8)), ("labels", classes.astype(np.uint8))):
                (tmp_path / "data" / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / "data" / kind / split / f"{i}.png")
    recipe = dataclasses.replace(constant_rate(0.0), iters=2, eval_interval=2)  # lr 0: weights stay as loaded
    config = small_config(f"custom:{tmp_path / 'data'}", tmp_path / "work", iters=2, num_classes=3, eval_interval=2)
    trained = model_tensors(train(config, recipe))
    classifier = ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias")
    assert trained[classifier[0]].shape[0] == 3
    assert all(torch.equal(trained[n], published[n]) for n in parameter_names() if n not in classifier)
    records = [json.loads(line) for line in (tmp_path / "work" / LOG_NAME).read_text().splitlines()]
    assert any("mIoU" in json.dumps(r) for r in records), records[-1]

    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                ENTRY,
                "--checkpoint",
                str(tmp_path / "work" / "iter_00000002.pth"),
                "--num-classes",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    loaded = segzoo.create_model(ENTRY, checkpoint_path=out / "model.safetensors", num_classes=3)
    assert torch.equal(loaded.state_dict()[classifier[0]], trained[classifier[0]])


@pytest.mark.parametrize(
    "device, world_size, requested, expected",
    [
        ("cpu", 2, None, False),  # the recipe's SyncBN needs CUDA: plain BatchNorm
        ("cuda", 2, None, True),
        ("cuda", 1, None, False),  # one process: nothing to synchronize
        ("cuda", 2, False, False),  # --no-sync-bn
        ("cpu", 2, False, False),
    ],
)
def test_sync_bn_only_where_it_works(device, world_size, requested, expected):
    processes = Processes(rank=0, world_size=world_size, device=torch.device(device))
    assert uses_sync_bn(get_recipe("moganet_xt_fpn_ade20k"), processes, requested) is expected


def test_sync_bn_asked_for_on_the_cpu_is_refused():
    processes = Processes(rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"--sync-bn: SyncBatchNorm works only with CUDA devices"):
        uses_sync_bn(get_recipe("moganet_xt_fpn_ade20k"), processes, requested=True)


def test_no_sync_bn_shows_in_the_printed_recipe(capsys):
    assert main(["train", "moganet_xt_fpn_ade20k", "--no-sync-bn", "--print-recipe"]) == 0
    assert json.loads(capsys.readouterr().out)["sync_bn"] is False


def test_log_keeps_each_iteration_once_after_a_resume(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_text("".join(json.dumps({"iter": i, "lr": 0.1}) + "\n" for i in range(1, 8)) + '{"iter": 8, "l')
    JsonLog(path).keep_until(4)
    assert [json.loads(line)["iter"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_interrupted_checkpoint_writes_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = tmp_path / f".iter_00000010.pth.{dead.pid}.tmp"
    live = tmp_path / f".iter_00000020.pth.{os.getpid()}.tmp"
    for path in (stray, live):
        path.write_bytes(b"half a checkpoint")
    assert remove_interrupted_writes(tmp_path) == [stray]
    assert not stray.exists() and live.exists()


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The (step, value) pairs of every scalar tag of the event files in ``folder``, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_runs_log_as_scalars(ade_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    train(
        small_config(ade_root, tmp_path, iters=2, tensorboard=True), dataclasses.replace(constant_rate(1e-3), iters=2)
    )
    scalars = tensorboard_scalars(tmp_path / TENSORBOARD_DIR)
    records = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert {"train/loss", "train/loss_decode", "train/lr", "train/images_per_s", "train/memory_mb"} <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records])


def test_tensorboard_after_a_resume_shows_each_iteration_once(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    first = TensorBoardLog(tmp_path)
    for i in range(1, 5):
        first.write({"iter": i, "loss": float(i), "lr": 0.1, "eta_s": 10})
    first.write({"iter": 4, "eval": {"mIoU": 40.0, "mAcc": 50.0}})
    first.close()
    assert tensorboard_scalars(tmp_path)["val/mIoU"] == [(4, 40.0)]
    resumed = TensorBoardLog(tmp_path)
    resumed.keep_until(2)
    resumed.write({"iter": 3, "loss": 30.0, "lr": 0.1, "eta_s": 5})
    resumed.close()
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert "train/eta_s" not in scalars and not scalars["val/mIoU"]  # the evaluation at iteration 4 is hidden
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_tensorboard_without_the_package_says_which_extra(
    ade_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    argv = ["train", ENTRY, "--data-root", str(ade_root), "--work-dir", str(tmp_path), "--tensorboard"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert 'pip install "segzoo[tensorboard]"' in err and err.count("\n") == 1, err
    assert not tmp_path.joinpath(LOG_NAME).exists()


def make_custom(root: Path) -> Path:
    """A ``custom:`` folder of two 64x64 training pairs."""
    for i in range(2):
        for kind, array in (("images", np.zeros((64, 64, 3), np.uint8)), ("labels", np.zeros((64, 64), np.uint8))):
            path = root / kind / "train" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return root


@pytest.mark.parametrize(
    ("start", "missing", "hint"),
    [
        ([], "fpn_moganet_xtiny_80k_ade20k.pth", "--init-from"),
        (["--from-scratch"], "moganet_xtiny_sz224", "--no-imagenet"),
    ],
)
def test_offline_train_names_its_own_options(
    start: list[str], missing: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    data = make_custom(tmp_path / "data")
    argv = ["train", ENTRY, "--data", f"custom:{data}", "--num-classes", "3", "--work-dir", str(tmp_path / "w")]
    assert main([*argv, "--device", "cpu", "--workers", "0", "--quiet", *start]) == 1
    err = capsys.readouterr().err
    assert missing in err and f"segzoo train: {hint} " in err and "--checkpoint" not in err, err
