"""How to reproduce an entry's table row: the commands for the paper's GPUs and for fewer, the time, the target."""
from __future__ import annotations

from segzoo.registry import model_info
from segzoo.training.recipes import get_recipe

FEWER_GPUS = 2


def reproduction_markdown(name: str) -> str:
    """A Markdown section for the model card and README: commands, expected wall time and the number to reach."""
    info, recipe = model_info(name), get_recipe(name)
    per_gpu = recipe.images_per_gpu
    accumulation = recipe.batch_size // (FEWER_GPUS * per_gpu)
    data = f"--data-root /path/to/{info.dataset}"
    wall_time = getattr(recipe, "expected_wall_time", "") or "not estimated yet"
    target = ", ".join(f"{metric} {value}" for metric, value in info.metrics.items())
    lines = [
        f"### Reproducing {info.name}",
        "",
        f"The paper's setting: {recipe.gpus} GPUs x {per_gpu} images = {recipe.batch_size} images per iteration, "
        f"{recipe.iters} iterations at a {recipe.crop_size[0]}x{recipe.crop_size[1]} crop"
        f"{', SyncBN' if recipe.sync_bn else ''}.",
        "",
        "```bash",
        'pip install "segzoo[train]"',
        f"torchrun --nproc_per_node {recipe.gpus} -m segzoo.training {info.name} {data}",
        "```",
        "",
    ]
    if accumulation >= 1 and recipe.gpus > FEWER_GPUS:
        lines += [
            f"On {FEWER_GPUS} GPUs the loop accumulates gradients over {accumulation} steps of {per_gpu} images, "
            f"so each iteration still sees {recipe.batch_size} images (SyncBN then normalizes over "
            f"{FEWER_GPUS * per_gpu} images at a time instead of {recipe.batch_size}):",
            "",
            "```bash",
            f"torchrun --nproc_per_node {FEWER_GPUS} -m segzoo.training {info.name} {data}  "
            f"# --accumulation {accumulation} is the default",
            "```",
            "",
        ]
    lines += [
        f"Expected wall time: {wall_time}. Add `--amp bf16` for mixed precision; after an interruption, run the "
        f"same command with `--resume`.",
        "",
        f"It should reach {target} on the {info.dataset} {info.metrics_split} split (measure it with "
        f"`segzoo eval {info.name} --checkpoint WORK_DIR/iter_{recipe.iters:08d}.pth {data}`), within run-to-run "
        f"variation of the paper's number.",
    ]
    return "\n".join(lines) + "\n"
