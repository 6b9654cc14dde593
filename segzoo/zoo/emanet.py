"""The six EMANet models of the leftthomas/EMANet README (detectron2 port): COCO stuff-only and Cityscapes tables."""

from __future__ import annotations

from segzoo.zoo.records import (
    InferencePipeline,
    ModelInfo,
    Normalization,
    Paper,
    ReportedMetric,
    UpstreamConfig,
    WeightSource,
)

PAPER = Paper("Expectation-Maximization Attention Networks for Semantic Segmentation", "1907.13426", "ICCV 2019")
CITATION = """@inproceedings{li2019expectation,
  title={Expectation-Maximization Attention Networks for Semantic Segmentation},
  author={Li, Xia and Zhong, Zhisheng and Wu, Jianlong and Yang, Yibo and Lin, Zhouchen and Liu, Hong},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision},
  year={2019}
}"""
REPO = "leftthomas/EMANet"
COMMIT = "39755b293dc6879f48bbd0e88cd8282f36c30211"
# detectron2's MODEL.PIXEL_MEAN / PIXEL_STD (configs/base.yaml), BGR order on 0-255 pixels.
DETECTRON2_BGR = Normalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="BGR")
# configs/base.yaml: SOLVER.MAX_ITER, SOLVER.IMS_PER_BATCH
TRAIN_ITERS, TRAIN_BATCH = 30_000, 16

# The ImageNet ResNets of the README (Hang Zhang's encoding releases, deep stem): a zip holding one .pth each,
# unzipped into the folder MODEL.WEIGHTS points to; shared by the COCO and Cityscapes entries of a depth. The
# member is the file PyTorch-Encoding's model_store.get_model_file reads after unzipping: <name>-<hash>.pth.
IMAGENET = {
    depth: WeightSource(
        url=f"https://hangzh.s3.amazonaws.com/encoding/models/resnet{depth}-{digest}.zip",
        format="pytorch",
        kind="archive",
        member=f"resnet{depth}-{digest}.pth",
    )
    for depth, digest in {50: "25c4b509", 101: "2a57e44d", 152: "0d43d698"}.items()
}
# dataset: (segzoo dataset name, classes, output stride, INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST,
#           training shortest edges (INPUT.MIN_SIZE_TRAIN), INPUT.MAX_SIZE_TRAIN)
DATASETS = {
    "coco": ("COCO-Stuff54", 54, 8, 800, 1333, "640-800", 1333),
    "cityscapes": ("Cityscapes", 19, 16, 1024, 2048, "800-1024", 2048),
}
# (dataset, depth): (train time s/iter, inference time s/im, train mem GB, PA, mean PA, mean IoU, FW IoU,
#                    Baidu share link, extraction code, exact upstream parameter count)
TABLE = {
    ("coco", 50): (
        1.04,
        0.11,
        11.14,
        80.49,
        53.92,
        42.71,
        68.69,
        "https://pan.baidu.com/s/1jP7zWezVPBZWx_9LjJCgWg",
        "xxi8",
        34_789_878,
    ),
    ("coco", 101): (
        1.55,
        0.18,
        17.92,
        81.16,
        54.54,
        43.61,
        69.50,
        "https://pan.baidu.com/s/1BeGS7gckGAczd1euB55EFA",
        "1jhd",
        53_782_006,
    ),
    ("coco", 152): (
        0.65,
        0.16,
        28.81,
        94.29,
        76.08,
        67.57,
        89.69,
        "https://pan.baidu.com/s/1eqt2U2gIBeE_UMtluCKIcQ",
        "xnvs",
        69_425_654,
    ),
    ("cityscapes", 50): (
        0.81,
        0.11,
        11.22,
        95.13,
        80.01,
        72.28,
        91.09,
        "https://pan.baidu.com/s/1NPLplUoKDaTUHCM5Yd98Iw",
        "x2d5",
        34_780_883,
    ),
    ("cityscapes", 101): (
        1.11,
        0.14,
        14.69,
        95.35,
        81.77,
        74.02,
        91.47,
        "https://pan.baidu.com/s/1B4RVauK2X1EPd9h2WmALLA",
        "t2m1",
        53_773_011,
    ),
    ("cityscapes", 152): (
        1.35,
        0.16,
        18.87,
        94.80,
        78.21,
        70.06,
        90.52,
        "https://pan.baidu.com/s/1PsAnXAv3dTI4gKi87rZjMQ",
        "y82y",
        69_416_659,
    ),
}
COMMON_NOTES = (
    "The repository publishes no license file; the weights' terms are unknown.",
    "detectron2 test pipeline: shortest edge resized to the test size with PIL bilinear (longest edge capped), "
    "BGR input, logits upsampled to the resized input with align_corners=True inside the model, then to the "
    "original image with align_corners=False (sem_seg_postprocess).",
    "The EM bases (decode_head.emau.mu) are used as stored: they are refined by 3 EM iterations in eval mode "
    "too, and updated with momentum 0.9 only in training mode.",
)
NOTES = {
    ("coco", 152): (
        "The R152 COCO row looks inconsistent with the R50/R101 rows: PA 94.29 and mean IoU 67.57 are 13 and 24 "
        "points above R101 (81.16, 43.61), while its train time (0.65 s/iter) is the lowest of the table; the "
        "numbers are recorded as published.",
    ),
}


def _entry(dataset: str, depth: int) -> ModelInfo:
    train_s, infer_s, mem_gb, pa, mpa, miou, fwiou, link, code, num_params = TABLE[(dataset, depth)]
    name, classes, output_stride, test_min, test_max, train_edges, train_max = DATASETS[dataset]
    return ModelInfo(
        name=f"emanet_r{depth}_{dataset}",
        family="emanet",
        paper=PAPER,
        backbone=f"ResNet-{depth} (dilated, output stride {output_stride})",
        head="EMA",
        dataset=name,
        num_classes=classes,
        crop_size=(test_min, test_max),
        normalization=DETECTRON2_BGR,
        test_pipeline=InferencePipeline(
            scale=(test_min, test_max), mode="whole", resize="shortest_edge", rescale_align_corners=False
        ),
        align_corners=True,
        reported_metrics=(
            ReportedMetric("pixel_accuracy", "PA", pa),
            ReportedMetric("mean_accuracy", "mean PA", mpa),
            ReportedMetric("mean_iou", "mean IoU", miou),
            ReportedMetric("frequency_weighted_iou", "FW IoU", fwiou),
        ),
        params_m=None,
        flops_g=None,
        flops_input_shape=None,
        num_params=num_params,
        train_iters=TRAIN_ITERS,
        train_batch_size=TRAIN_BATCH,
        weights=(
            WeightSource(
                url=link,
                format="detectron2",
                kind="manual",
                access_code=code,
                filename=f"emanet_r{depth}_{dataset}.pth",
            ),
        ),
        license="unknown",
        citation=CITATION,
        upstream=UpstreamConfig(REPO, f"configs/r{depth}_{dataset}.yaml", COMMIT),
        architecture="emanet",
        arch_args={"depth": depth, "output_stride": output_stride},
        evaluator="detectron2_2019",
        reported_costs={"train time (s/iter)": train_s, "inference time (s/im)": infer_s, "train mem (GB)": mem_gb},
        notes=(
            f"No RandomCrop: training used whole images, shortest edge drawn from {train_edges} and longest at most "
            f"{train_max}; crop_size records the largest such input ({test_min}x{test_max}, also the test size), "
            "which slide mode would use as its default window.",
            *COMMON_NOTES,
            *NOTES.get((dataset, depth), ()),
        ),
        pretrained_backbone=IMAGENET[depth],
    )


ENTRIES: tuple[ModelInfo, ...] = tuple(_entry(dataset, depth) for dataset in DATASETS for depth in (50, 101, 152))
