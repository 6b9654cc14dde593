"""The two GloRe Cityscapes models of the facebookresearch/GloRe README (FCN + 1 GloRe unit)."""

from __future__ import annotations

from segzoo.zoo.emanet import IMAGENET as EMANET_IMAGENET
from segzoo.zoo.records import (
    IMAGENET_RGB,
    InferencePipeline,
    ModelInfo,
    Paper,
    ReportedMetric,
    UpstreamConfig,
    WeightSource,
)

PAPER = Paper("Graph-Based Global Reasoning Networks", "1811.12814", "CVPR 2019")
CITATION = """@inproceedings{chen2019graph,
  title={Graph-based global reasoning networks},
  author={Chen, Yunpeng and Rohrbach, Marcus and Yan, Zhicheng and Shuicheng, Yan and Feng, Jiashi and Kalantidis, Yannis},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
  pages={433--442},
  year={2019}
}"""  # noqa: E501 (the citation as the authors give it)
REPO = "facebookresearch/GloRe"
COMMIT = "9c6a7340ebb44a66a3bf1945094fc685fb7b730d"
ARCHIVES = "https://dl.fbaipublicfiles.com/glore/cityscapes/"
# Cityscapes images (1024x2048) go in whole and unresized: a keep-ratio fit into 2048x1024 leaves them as they are.
CITYSCAPES_WHOLE = InferencePipeline(scale=(2048, 1024), mode="whole")

# depth: (IoU class, iIoU class, IoU category, iIoU category) on the Cityscapes test server, exact parameter count
TABLE = {
    50: (79.5, 60.3, 91.3, 81.5, 39_639_507),
    101: (80.9, 62.2, 91.5, 82.1, 58_631_635),
}
ASSUMPTIONS = (
    "Checkpoint layout unverified: the segmentation code ships only inside the weight archives, which segzoo has "
    "not inspected; the architecture below is read from the paper and loading the archive may fail until a "
    "converter for its keys is written (segzoo inspect FILE lists them).",
    "Assumed: the GloRe unit sits on the res5 output (2048 channels) before the FCN head, with num_mid=512 "
    "(1024 states, 512 nodes, the repository's num_in/4 convention) and normalize=False (the constructor "
    "default).",
    "Assumed: backbone is a dilated ResNet with output stride 8 (res4 dilation 2, res5 dilation 4, first block "
    "of each at half the rate, no multi-grid) and the deep three-conv stem with 128 channels shared with EMANet.",
    "Assumed: FCN head = one 3x3 conv-BN-ReLU to 512 channels, dropout 0.1, 1x1 classifier; no auxiliary head; "
    "BatchNorm eps 1e-5 (the unit's own BatchNorm: eps 1e-4, as upstream).",
    "Assumed: RGB input normalized with the ImageNet mean/std, whole 1024x2048 images without resizing, and a "
    "bilinear upsampling of the logits with align_corners=False.",
    "Training schedule, batch size and crop are not published: train_iters (40000) and train_batch_size (8: 8 GPUs "
    "x 1 image) are the evident intent segzoo's training recipe assumes, crop_size the full 1024x2048 image.",
    "Assumed: training starts from the deep-stem ImageNet ResNets EMANet names (Hang Zhang's encoding "
    "releases), which fit the assumed backbone exactly; the README names no file for the FCN models. Its "
    "kinetics/pretrained/resnet{50,101}-lite.pth are the 2D weights the video models inflate, in MFNet's layout "
    "with a 32-channel single-conv stem, and its imagenet/*.tar releases are the MXNet classification models.",
    "Reported numbers are Cityscapes test-server results (fine annotations only); segzoo eval computes the same "
    "four metrics on the validation set with cityscapesScripts, so they are not directly comparable.",
)


def _entry(depth: int) -> ModelInfo:
    iou_class, iiou_class, iou_category, iiou_category, num_params = TABLE[depth]
    return ModelInfo(
        name=f"glore_r{depth}_fcn_cityscapes",
        family="glore",
        paper=PAPER,
        backbone=f"ResNet-{depth} (dilated, output stride 8)",
        head="FCN + 1 GloRe unit",
        dataset="Cityscapes",
        num_classes=19,
        crop_size=(1024, 2048),
        normalization=IMAGENET_RGB,
        test_pipeline=CITYSCAPES_WHOLE,
        align_corners=False,
        reported_metrics=(
            ReportedMetric("mean_iou", "IoU class", iou_class),
            ReportedMetric("mean_instance_iou", "iIoU class", iiou_class),
            ReportedMetric("category_mean_iou", "IoU category", iou_category),
            ReportedMetric("category_mean_instance_iou", "iIoU category", iiou_category),
        ),
        params_m=None,
        flops_g=None,
        flops_input_shape=None,
        num_params=num_params,
        train_iters=40_000,
        train_batch_size=8,
        # No member recorded: the README does not name the checkpoint inside the tar, which is read when it is the
        # only checkpoint file there (several are refused with their names listed).
        weights=(WeightSource(url=f"{ARCHIVES}resnet{depth}_w-glore.tar", format="pytorch", kind="archive"),),
        pretrained_backbone=EMANET_IMAGENET[depth],
        license="MIT",
        citation=CITATION,
        upstream=UpstreamConfig(REPO, "network/global_reasoning_unit.py", COMMIT),
        architecture="glore_fcn",
        arch_args={"depth": depth, "output_stride": 8, "channels": 512, "num_mid": 512, "normalize": False},
        evaluator="cityscapes",
        metrics_split="test",
        notes=ASSUMPTIONS,
    )


ENTRIES: tuple[ModelInfo, ...] = tuple(_entry(depth) for depth in TABLE)
