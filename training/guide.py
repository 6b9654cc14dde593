"""How to reproduce an entry's table row: the commands for the paper's GPUs and for fewer, the time, the target."""
from __future__ import annotations

from segzoo.registry import model_info
from segzoo.training.recipes import get_recipe

FEWER_GPUS = 2


def reproduction_markdown(name: str, heading: str = "###") -> str:
    """A Markdown section for the model card and README: commands, expected wall time and the number to reach.

    ``heading`` is the Markdown heading level of its title.
    """
    info, recipe = model_info(name), get_recipe(name)
    per_gpu = recipe.images_per_gpu
    accumulation = recipe.batch_size // (FEWER_GPUS * per_gpu)
    data = f"--data-root /path/to/{info.dataset}"
    target = ", ".join(f"{metric} {value}" for metric, value in info.metrics.items())
    pipeline = recipe.pipeline
    if pipeline.style == "detectron2":
        sizes = pipeline.min_size_train
        images = (f"whole images with the shortest edge resized to {sizes[0]}-{sizes[-1]} "
                  f"(longest at most {pipeline.max_size_train})")
    else:
        images = f"a {recipe.crop_size[0]}x{recipe.crop_size[1]} crop"
    evaluate = f"`segzoo eval {info.name} --checkpoint WORK_DIR/iter_{recipe.iters:08d}.pth {data}`"
    if info.metrics_split == "test":
        measure = f"the {info.dataset} test split (the benchmark's evaluation server; {evaluate} measures val)"
    else:
        measure = f"the {info.dataset} {info.metrics_split} split (measure it with {evaluate})"
    assumed = " The paper publishes no schedule: the recipe's is assumed (see its notes)." if recipe.schedule_assumed \
        else ""
    lines = [
        f"{heading} Reproducing {info.name}",
        "",
        f"The paper's setting: {recipe.gpus} GPUs x {_images(per_gpu)} = {recipe.batch_size} images per iteration, "
        f"{recipe.iters} iterations on {images}{', SyncBN' if recipe.sync_bn else ''}.{assumed}",
        "",
        "```bash",
        'pip install "segzoo[train]"',
        f"torchrun --nproc_per_node {recipe.gpus} -m segzoo.training {info.name} {data}",
        "```",
        "",
    ]
    if accumulation >= 1 and recipe.gpus > FEWER_GPUS:
        lines += [
            f"On {FEWER_GPUS} GPUs the loop accumulates gradients over {accumulation} steps of {_images(per_gpu)}, "
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
        f"Expected wall time: {recipe.expected_wall_time}. Add `--amp bf16` for mixed precision; after an interruption, run the "
        f"same command with `--resume`.",
        "",
        f"It should reach {target} on {measure}, within run-to-run variation of the paper's number.",
    ]
    return "\n".join(lines) + "\n"


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"
