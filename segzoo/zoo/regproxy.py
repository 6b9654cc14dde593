"""The ten RegionProxy models of the RegionProxy README (ADE20K and Cityscapes tables)."""

from __future__ import annotations

from typing import Any

from segzoo.zoo.records import (
    IMAGENET_RGB,
    InferencePipeline,
    ModelInfo,
    Paper,
    ReportedMetric,
    UpstreamConfig,
    WeightSource,
)

PAPER = Paper("Semantic Segmentation by Early Region Proxy", "2203.14043", "CVPR 2022")
CITATION = """@article{zhang2022semantic,
  title={Semantic Segmentation by Early Region Proxy},
  author={Zhang, Yifan and Pang, Bo and Lu, Cewu},
  journal={arXiv preprint arXiv:2203.14043},
  year={2022}
}"""
REPO = "YiF-Zhang/RegionProxy"
COMMIT = "76fea9b732af22f73aca129f1a2284d6e0fc2953"
DRIVE = "https://drive.google.com/file/d/{}/view?usp=sharing"
TRAIN_BATCH = 16  # 2 images per GPU on 8 GPUs

BACKBONE_NAMES = {
    "ti16": "ViT-Ti/16",
    "s16": "ViT-S/16",
    "b16": "ViT-B/16",
    "l16": "ViT-L/16",
    "r26_s32": "R26+ViT-S/32",
    "r50_l32": "R50+ViT-L/32",
}
ENTRY_PREFIX = {
    "ti16": "regproxy_vit_ti16",
    "s16": "regproxy_vit_s16",
    "b16": "regproxy_vit_b16",
    "l16": "regproxy_vit_l16",
    "r26_s32": "regproxy_r26_vit_s32",
    "r50_l32": "regproxy_r50_vit_l32",
}
# The ImageNet files training starts from (the README's Training section): AugReg (ImageNet-21k, fine-tuned
# on ImageNet-1k at 384) through the timm names the README gives, read from timm's own Hugging Face copies of
# them (the weights timm.create_model(name, pretrained=True) loads, already in timm's layout); DeiT-B/16
# distilled at 384 for the Base models, from its release URL.
TIMM_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
IMAGENET = {
    arch: WeightSource(url=TIMM_HF.format(timm_name), format="safetensors", filename=f"{timm_name}.safetensors")
    for arch, timm_name in {
        "ti16": "vit_tiny_patch16_384.augreg_in21k_ft_in1k",
        "s16": "vit_small_patch16_384.augreg_in21k_ft_in1k",
        "l16": "vit_large_patch16_384.augreg_in21k_ft_in1k",
        "r26_s32": "vit_small_r26_s32_384.augreg_in21k_ft_in1k",
        "r50_l32": "vit_large_r50_s32_384.augreg_in21k_ft_in1k",
    }.items()
} | {
    "b16": WeightSource(
        url="https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth", format="pytorch"
    )
}
IMAGENET_NOTE = (
    "ImageNet backbone: the 384x384 classification weights; their position embedding is resized to the "
    "training crop's token grid when loaded (bicubic, align_corners=False), as upstream's init_weights does."
)
CONFIG_ARCH = {"ti16": "t16", "s16": "s16", "b16": "b16", "l16": "l16", "r26_s32": "r26-s32", "r50_l32": "r50-l32"}

# arch: (crop, backbone out_indices (affinity branch, classifier; -1: the embedded tokens), schedule,
#        table FLOPs G, table params M, mIoU, mIoU ms+flip, FPS, Drive file id, exact upstream parameter count,
#        segzoo's full GMACs at the crop)
ADE20K_TABLE: dict[str, tuple[Any, ...]] = {
    "ti16": (512, (4, 11), "poly", 3.9, 5.8, 42.1, 43.1, 38.9, "1sq3g3JcQ2NSJch-MvlvvnHFFeN-MU_DE", 5_779_494, 10.55),
    "s16": (512, (4, 11), "poly", 15, 22, 47.6, 48.5, 32.1, "1pJD4-xRiVj36SplzNhonIuNHd82A05GX", 22_249_254, 32.04),
    "r26_s32": (
        512,
        (-1, 11),
        "poly",
        16,
        36,
        47.8,
        49.1,
        28.5,
        "1n51emyE6EWAuoBq_P8cViFtNmf9dDxzV",
        36_392_038,
        18.57,
    ),
    "b16": (512, (4, 11), "cr", 59, 87, 49.8, 50.5, 20.1, "1PMVQv8cvaZmV16ARdbuQSv6-3DDeLXPy", 87_261_990, 108.01),
    "r50_l32": (
        640,
        (-1, 23),
        "cr",
        82,
        323,
        51.0,
        51.7,
        12.7,
        "1Kk0ABYbMOwvomrU4FaDl4Ban2XBhcxjU",
        329_692_518,
        163.76,
    ),
    "l16": (640, (9, 23), "cr", 326, 306, 52.9, 53.4, 6.6, "1t6Un6m-1xdoir33TG7IAiilaLamgioFZ", 306_102_566, 612.94),
}
# arch: (backbone out_indices, schedule, table FLOPs G or None, table params M, mIoU, mIoU ms+flip, Drive file id,
#        exact upstream parameter count, segzoo's full GMACs per 768x768 window)
CITYSCAPES_TABLE: dict[str, tuple[Any, ...]] = {
    "ti16": ((2, 11), "poly", 69, 6, 76.5, 77.7, "1N4Ef8kfMeAGhcI3JLoPGd_XfBBArdF8Y", 5_999_971, 37.23),
    "s16": ((2, 11), "poly", 270, 23, 79.8, 81.5, "11GBWhCVAXEAO_iS_MFEecndK_IF2ik4Y", 22_690_339, 99.09),
    "b16": ((2, 11), "cr", 1064, 88, 81.0, 82.2, "10yTMd5j6xoPYcVSMzhkL5S_Hh9JQ4b64", 88_144_291, 296.90),
    "l16": ((5, 23), "cr", None, 307, 81.4, 82.7, "1EBfO9M8ZYB_Eye4WpHqMs9v2WrRzbORI", 306_689_187, 961.87),
}
CITYSCAPES_WINDOWS = 8  # 768x768 windows every 512 pixels over a 1024x2048 image: 2 rows x 4 columns
DEIT_NOTE = "Initialized from DeiT-B/16 distilled: the backbone has DeiT's distillation token."

MMCV_FLOPS_NOTE = (
    "The FLOPs column is mmseg's get_flops (mmcv 1.3.13 get_model_complexity_info): multiply-adds of "
    "modules of registered types only, so the attention (nn.MultiheadAttention: in/out projections and "
    "both attention matmuls) is not counted."
)
EXTRA_NOTES: dict[str, tuple[str, ...]] = {
    "regproxy_r26_vit_s32_ade20k": (
        "The table's 16G counts the stem as mmseg's ResNet-26 (the config's use_origin=False switch, "
        "16.25 GMACs); the released model's timm StdConv2dSame stem is invisible to mmcv's counter (3.94).",
    ),
    "regproxy_r50_vit_l32_ade20k": (
        "The table's 323M params differs from the model the released config builds, 329,692,518 "
        "parameters (329.69M); segzoo builds the released model.",
        "The table's Resolution column says 512x512, but the released config trains and tests with "
        "640x640 crops (img_scale 2048x640), and its 82G is mmcv's count at 640x640 (82.24 GMACs), "
        "which skips the timm StdConv2dSame stem as well as the attention.",
    ),
    "regproxy_vit_l16_cityscapes": ("The table gives no FLOPs for this model.",),
}


def _config_path(arch: str, out_indices: tuple[int, int], crop: int, schedule: str, iters: str, dataset: str) -> str:
    mid_name = "n1" if out_indices[0] == -1 else str(out_indices[0])
    stem = f"regproxy-{CONFIG_ARCH[arch]}-sub4+implicit-mid-{mid_name}+{crop}x{crop}+{iters}+adamw-{schedule}+{dataset}"
    return f"configs/regproxy_{dataset}/{stem}.py"


def _entry(
    arch: str,
    dataset: str,
    crop: int,
    out_indices: tuple[int, int],
    schedule: str,
    flops_g: float | None,
    params_m: float,
    metrics: tuple[float, float],
    drive_id: str,
    num_params: int,
    notes: tuple[str, ...],
    reported_costs: dict[str, float],
    pipeline: InferencePipeline,
    flops_input_shape: tuple[int, int, int],
) -> ModelInfo:
    name = f"{ENTRY_PREFIX[arch]}_{dataset}"
    iters = 160_000 if dataset == "ade20k" else 80_000
    config = _config_path(arch, out_indices, crop, schedule, f"{iters // 1000}k", dataset)
    num_classes = 150 if dataset == "ade20k" else 19
    arch_args: dict[str, Any] = {"arch": arch, "img_size": (crop, crop), "out_indices": out_indices}
    if arch == "b16":
        arch_args["distilled"] = True
        notes += (DEIT_NOTE,)
    return ModelInfo(
        name=name,
        family="regproxy",
        paper=PAPER,
        backbone=BACKBONE_NAMES[arch],
        head="RegProxy",
        dataset="ADE20K" if dataset == "ade20k" else "Cityscapes",
        num_classes=num_classes,
        crop_size=(crop, crop),
        normalization=IMAGENET_RGB,
        test_pipeline=pipeline,
        align_corners=False,
        reported_metrics=(
            ReportedMetric("mean_iou", "mIoU", metrics[0]),
            ReportedMetric("mean_iou", "mIoU (ms+flip)", metrics[1], "multi_scale_flip"),
        ),
        params_m=params_m,
        flops_g=flops_g,
        flops_input_shape=flops_input_shape,
        num_params=num_params,
        train_iters=iters,
        train_batch_size=TRAIN_BATCH,
        weights=(
            WeightSource(
                url=DRIVE.format(drive_id),
                format="mmseg",
                kind="google-drive",
                filename=config.rsplit("/", 1)[-1].replace(".py", ".pth"),
            ),
        ),
        license="MIT",
        citation=CITATION,
        upstream=UpstreamConfig(REPO, config, COMMIT),
        architecture="regproxy",
        arch_args=arch_args,
        reported_costs=reported_costs,
        notes=notes + EXTRA_NOTES.get(name, ()) + (IMAGENET_NOTE,),
        pretrained_backbone=IMAGENET[arch],
    )


def _ade20k(arch: str, row: tuple[Any, ...]) -> ModelInfo:
    crop, out_indices, schedule, flops_g, params_m, miou, miou_ms, fps, drive_id, num_params, full_macs = row
    count = f"segzoo's full count (torch FlopCounterMode, attention included) is {full_macs} GMACs at {crop}x{crop}."
    return _entry(
        arch,
        "ade20k",
        crop,
        out_indices,
        schedule,
        flops_g,
        params_m,
        (miou, miou_ms),
        drive_id,
        num_params,
        notes=(f"{MMCV_FLOPS_NOTE} {count}",),
        reported_costs={"FPS": fps},
        pipeline=InferencePipeline(
            scale=(2048, crop), mode="slide", crop_size=(crop, crop), stride=(crop, crop), slide_windows="pad"
        ),
        flops_input_shape=(3, crop, crop),
    )


def _cityscapes(arch: str, row: tuple[Any, ...]) -> ModelInfo:
    out_indices, schedule, flops_g, params_m, miou, miou_ms, drive_id, num_params, window_macs = row
    count = (
        f"The Cityscapes FLOPs are about {CITYSCAPES_WINDOWS} times mmcv's count for one 768x768 window: a whole "
        f"1024x2048 image by slide inference ({CITYSCAPES_WINDOWS} windows). segzoo's full count (torch "
        f"FlopCounterMode, attention included) is {window_macs} GMACs per window, "
        f"{round(window_macs * CITYSCAPES_WINDOWS)} GMACs per image."
    )
    return _entry(
        arch,
        "cityscapes",
        768,
        out_indices,
        schedule,
        flops_g,
        params_m,
        (miou, miou_ms),
        drive_id,
        num_params,
        notes=(f"{MMCV_FLOPS_NOTE} {count}",),
        reported_costs={},
        pipeline=InferencePipeline(
            scale=(2048, 1024), mode="slide", crop_size=(768, 768), stride=(512, 512), slide_windows="pad"
        ),
        flops_input_shape=(3, 1024, 2048),
    )


ENTRIES: tuple[ModelInfo, ...] = tuple(_ade20k(arch, row) for arch, row in ADE20K_TABLE.items()) + tuple(
    _cityscapes(arch, row) for arch, row in CITYSCAPES_TABLE.items()
)
