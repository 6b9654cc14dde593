"""The ten MogaNet ADE20K models of the MogaNet segmentation README (Semantic FPN and UperNet tables)."""

from __future__ import annotations

from segzoo.zoo.records import (
    IMAGENET_RGB,
    InferencePipeline,
    ModelInfo,
    Paper,
    ReportedMetric,
    UpstreamConfig,
    WeightSource,
)

PAPER = Paper("Efficient Multi-order Gated Aggregation Network", "2211.03295", "ICLR 2024")
CITATION = """@inproceedings{iclr2024MogaNet,
  title={Efficient Multi-order Gated Aggregation Network},
  author={Siyuan Li and Zedong Wang and Zicheng Liu and Cheng Tan and Haitao Lin and Di Wu and Zhiyuan Chen and Jiangbin Zheng and Stan Z. Li},
  booktitle={International Conference on Learning Representations},
  year={2024}
}"""  # noqa: E501 (the citation as the authors give it)
REPO = "Westlake-AI/MogaNet"
COMMIT = "386b548c5f0b0287b45c04397aa4ef46a28f7a26"
RELEASE = "https://github.com/Westlake-AI/MogaNet/releases/download/moganet-seg-weights/"
# The ADE20K test pipeline of the MogaNet configs: keep-ratio resize into 2048x512, then align to 32;
# their (commented-out) multi-scale test uses mmseg's default ratios with flip.
ADE20K_TEST = InferencePipeline(scale=(2048, 512), size_divisor=32, mode="whole")
# The ImageNet-1K classification releases the segmentation configs start from (init_cfg.checkpoint): the
# 224x224, 300-epoch models; each size's file is shared by its FPN and UperNet entries.
IN1K_RELEASE = "https://github.com/Westlake-AI/MogaNet/releases/download/moganet-in1k-weights/"
IMAGENET = {
    size: WeightSource(url=f"{IN1K_RELEASE}moganet_{stem}_ep300.pth.tar", format="pytorch")
    for size, stem in {
        "xt": "xtiny_sz224_8xbs128",
        "t": "tiny_sz224_8xbs128",
        "s": "small_sz224_8xbs128",
        "b": "base_sz224_8xbs128",
        "l": "large_sz224_8xbs64",
    }.items()
}
SIZE_NAMES = {"xt": ("xtiny", "XT"), "t": ("tiny", "T"), "s": ("small", "S"), "b": ("base", "B"), "l": ("large", "L")}
DROP_PATH = {"xt": 0.05, "t": 0.1, "s": 0.1, "b": 0.2, "l": 0.3}

# The README's `get_flops.py --shape 2048 512` counts a (1, 3, 2048, 512) tensor: mmseg 0.x's script reads the
# shape as (height, width) and mmcv's counter builds (1, C, H, W), so height 2048, width 512 (C, H, W below).
FLOPS_INPUT_SHAPE = (3, 2048, 512)

# size: (table params M, table FLOPs G, mIoU, mAcc, exact upstream parameter count)
FPN_TABLE = {
    "xt": (6.9, 101.4, 40.3, 52.4, 6_865_872),
    "t": (9.1, 107.8, 43.1, 55.4, 9_067_714),
    "s": (29.1, 189.7, 47.7, 59.8, 29_089_321),
    "b": (47.5, 293.6, 49.3, 61.6, 47_482_313),
    "l": (86.2, 418.7, 50.2, 63.0, 86_147_584),
}
UPERNET_TABLE = {
    "xt": (30.4, 855.7, 42.2, 55.1, 30_441_062),
    "t": (33.1, 862.4, 43.7, 57.1, 33_134_424),
    "s": (55.3, 946.4, 49.2, 61.6, 55_310_527),
    "b": (73.7, 1050.4, 50.1, 63.4, 73_711_711),
    "l": (113.2, 1176.1, 50.9, 63.5, 113_196_182),
}
NOTES = {
    ("fpn", "l"): (
        "The table's 86.2M params is 86,147,584 rounded twice (86.148 -> 86.15 -> 86.2); "
        "the model has exactly the upstream count.",
    ),
}


def _entry(head: str, size: str, row: tuple[float, float, float, float, int]) -> ModelInfo:
    params_m, flops_g, miou, macc, num_params = row
    long_name, short_name = SIZE_NAMES[size]
    if head == "fpn":
        stem, config_dir, head_name, iters, batch = (
            f"fpn_moganet_{long_name}_80k_ade20k",
            "sem_fpn",
            "Semantic FPN",
            80_000,
            32,
        )
    else:
        stem, config_dir, head_name, iters, batch = (
            f"upernet_moganet_{long_name}_512x512_160k_ade20k",
            "upernet",
            "UperNet",
            160_000,
            16,
        )
    return ModelInfo(
        name=f"moganet_{size}_{head}_ade20k",
        family="moganet",
        paper=PAPER,
        backbone=f"MogaNet-{short_name}",
        head=head_name,
        dataset="ADE20K",
        num_classes=150,
        crop_size=(512, 512),
        normalization=IMAGENET_RGB,
        test_pipeline=ADE20K_TEST,
        align_corners=False,
        reported_metrics=(ReportedMetric("mean_iou", "mIoU", miou), ReportedMetric("mean_accuracy", "mAcc", macc)),
        params_m=params_m,
        flops_g=flops_g,
        flops_input_shape=FLOPS_INPUT_SHAPE,
        num_params=num_params,
        train_iters=iters,
        train_batch_size=batch,
        weights=(WeightSource(url=f"{RELEASE}{stem}.pth", format="mmseg"),),
        license="Apache-2.0",
        citation=CITATION,
        upstream=UpstreamConfig(REPO, f"segmentation/configs/{config_dir}/moganet/{stem}.py", COMMIT),
        architecture=f"moganet_{head}",
        arch_args={"arch": size, "drop_path_rate": DROP_PATH[size]},
        notes=NOTES.get((head, size), ()),
        pretrained_backbone=IMAGENET[size],
    )


ENTRIES: tuple[ModelInfo, ...] = tuple(
    _entry(head, size, row)
    for head, table in (("fpn", FPN_TABLE), ("upernet", UPERNET_TABLE))
    for size, row in table.items()
)
