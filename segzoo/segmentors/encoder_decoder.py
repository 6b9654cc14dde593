"""The encoder-decoder segmentor and its model contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.base import DecodeHead

if TYPE_CHECKING:
    from segzoo.zoo.records import ModelInfo


class EncoderDecoder(nn.Module):
    """Backbone, optional neck, decode head and optional auxiliary head.

    The contract: ``model(images)`` with normalized ``(N, 3, H, W)`` images
    returns ``(N, num_classes, H, W)`` logits, resized bilinearly from the
    decode head's output as mmseg's ``encode_decode`` does. In training mode it
    returns ``{"out": logits, "aux": aux_logits}`` (``"aux"`` only when the
    model has an auxiliary head), both at input resolution.
    """

    info: ModelInfo | None = None

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        neck: nn.Module | None = None,
        auxiliary_head: DecodeHead | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.align_corners = align_corners

    def require_info(self) -> ModelInfo:
        """The zoo entry this model was built from; inference needs its pipeline."""
        if self.info is None:
            raise ValueError("the model carries no ModelInfo; build it with segzoo.create_model")
        return self.info

    @property
    def num_classes(self) -> int:
        return self.decode_head.conv_seg.out_channels

    def classifier_names(self) -> list[str]:
        """Names of the layers that depend on the number of classes."""
        return [name for name, module in self.named_modules() if name.endswith("conv_seg")]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(images)
        neck = getattr(self, "neck", None)
        return neck(features) if neck is not None else features

    def _to_input_size(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected normalized images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if min(images.shape[2:]) < 32:
            raise ValueError(f"images must be at least 32x32 pixels, got {tuple(images.shape[2:])}")
        features = self.extract_features(images)
        logits = self._to_input_size(self.decode_head(features), images)
        if not self.training:
            return logits
        outputs = {"out": logits}
        aux_head = getattr(self, "auxiliary_head", None)
        if aux_head is not None:
            outputs["aux"] = self._to_input_size(aux_head(features), images)
        return outputs
