"""The three EurNet ADE20K UperNet models of the EurNet segmentation README."""

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

PAPER = Paper(
    "EurNet: Efficient Multi-Range Relational Modeling of Spatial Multi-Relational Data", "2211.12941", "arXiv 2022"
)
CITATION = """@article{xu2022eurnet,
  title={EurNet: Efficient Multi-Range Relational Modeling of Spatial Multi-Relational Data},
  author={Xu, Minghao and Guo, Yuanfan and Xu, Yi and Tang, Jian and Chen, Xinlei and Tian, Yuandong},
  journal={arXiv preprint arXiv:},
  year={2022}
}"""
REPO = "hirl-team/EurNet-Image"
COMMIT = "35b30f0e105ec6edfa7036e7af3e4bbfc2016b28"  # branch seg
CHECKPOINTS = "https://eurnet.s3.us-east-2.amazonaws.com/checkpoints/"
# The ADE20K test pipeline of the EurNet configs: keep-ratio resize into 2048x512, no padding, whole image;
# their (commented-out) multi-scale test uses mmseg's default ratios.
ADE20K_TEST = InferencePipeline(scale=(2048, 512), mode="whole")
# The ImageNet-1K pre-trained EurNet-T/S/B files of the README (TorchDrug implementation, 224x224).
IMAGENET = {
    size: WeightSource(url=f"{CHECKPOINTS}td_eurnet_{long_name}_1k_pretrain.pth", format="pytorch")
    for size, long_name in {"t": "tiny", "s": "small", "b": "base"}.items()
}
SIZE_NAMES = {"t": ("tiny", "T"), "s": ("small", "S"), "b": ("base", "B")}

# size: (table params M, table FLOPs G, mIoU, mIoU (MS), exact upstream parameter count)
UPERNET_TABLE = {
    "t": (62, 948, 47.2, 48.4, 61_925_334),
    "s": (85, 1042, 49.8, 50.8, 84_997_698),
    "b": (126, 1190, 50.7, 51.8, 126_263_554),
}


def _entry(size: str, row: tuple[float, float, float, float, int]) -> ModelInfo:
    params_m, flops_g, miou, miou_ms, num_params = row
    long_name, short_name = SIZE_NAMES[size]
    return ModelInfo(
        name=f"eurnet_{size}_upernet_ade20k",
        family="eurnet",
        paper=PAPER,
        backbone=f"EurNet-{short_name}",
        head="UperNet",
        dataset="ADE20K",
        num_classes=150,
        crop_size=(512, 512),
        normalization=IMAGENET_RGB,
        test_pipeline=ADE20K_TEST,
        align_corners=False,
        reported_metrics=(
            ReportedMetric("mean_iou", "mIoU", miou),
            ReportedMetric("mean_iou", "mIoU (MS)", miou_ms, "multi_scale_flip"),
        ),
        params_m=params_m,
        flops_g=flops_g,
        flops_input_shape=(3, 2048, 512),
        num_params=num_params,
        train_iters=160_000,
        train_batch_size=16,
        weights=(
            WeightSource(url=f"{CHECKPOINTS}eurnet_{long_name}_upernet_ade20k_160k_last_epoch.pth", format="mmseg"),
        ),
        license="MIT",
        citation=CITATION,
        upstream=UpstreamConfig(
            REPO, f"segmentation/configs/eurnet/upernet_eurnet_{long_name}_512x512_160k_ade20k.py", COMMIT
        ),
        architecture="eurnet_upernet",
        arch_args={"arch": size},
        notes=(
            "FLOPs as reported; they include the kNN distance products. Assumed: counted as the mmsegmentation "
            "0.x UperNet models it is compared with are, by get_flops.py --shape 2048 512, which counts a "
            "(1, 3, 2048, 512) tensor (height 2048, width 512; the script reads the shape as height, width); "
            "the repository ships no FLOPs script of its own.",
            "Where a patch has fewer than 11 kNN candidates in its window and dilation class (square inputs of "
            "224x224 or less, narrow ones, or a side over 1152 pixels), upstream fills its 12 neighbours from "
            "tied distances in torch.topk's order; segzoo ranks the same distance row with torch.topk, so results "
            "on other topk implementations (e.g. CUDA) can differ for those patches.",
        ),
        pretrained_backbone=IMAGENET[size],
    )


ENTRIES: tuple[ModelInfo, ...] = tuple(_entry(size, row) for size, row in UPERNET_TABLE.items())
